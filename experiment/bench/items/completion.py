"""Item 7: completion vs readiness: CPU per reply and system calls per reply of io_uring-recv (also with
direct descriptors), io_uring (readiness) and epoll under wrk, at 0 and at the most dead connections, over
ROUNDS rounds: medians with a distribution-free 95% interval (stats.median_interval). System calls come
from a second wrk load with `perf stat -e raw_syscalls:sys_enter` attached, so that the tracepoint's cost
stays out of the CPU figures."""

from __future__ import annotations

from ... import catalog
from ...run.plan import max_dead
from .. import launch, stats
from ..launch import Cpus
from ..registry import Context

ROUNDS = 6
# (label, backend, environment): io_uring-recv with direct descriptors is uring_loop.c's other mode.
SERIES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("epoll", "epoll", {}), ("io_uring", "io_uring", {}), (catalog.URING_RECV, catalog.URING_RECV, {}),
    (f"{catalog.URING_RECV}/fixed", catalog.URING_RECV, {"EPHTTPD_URING_FIXED_FILES": "1"}))
# Compared with epoll, and each with itself from 0 to the most dead connections.
COMPARED = (catalog.URING_RECV, f"{catalog.URING_RECV}/fixed", "io_uring")
GOALS = {"cpu_vs_epoll_at_zero": 0.9, "most_over_zero": 1.05, "syscalls_per_reply": 0.5}


def run(context: Context) -> dict:
    return completion_model(context.cpus, context.fd_limit)


def completion_model(cpus: Cpus, fd_limit: int, rounds: int = ROUNDS) -> dict:
    """Each round takes every series at 0 and at the most dead connections."""
    rows = [_row(cpus, label, backend, env, dead, n) for n in range(1, rounds + 1) for label, backend, env in SERIES
            for dead in (0, max_dead(fd_limit, backend, launch.ACTIVE))]
    summary = stats.summarize(rows, ("series", "dead"), {"cpu_us_per_reply": stats.positive,
                                                         "syscalls_per_reply": stats.measured,
                                                         "rate": stats.measured})
    return {"rows": rows, "summary": summary, "ratios": ratios(rows, rounds), "goals": GOALS}


def _row(cpus: Cpus, label: str, backend: str, env: dict[str, str], dead: int, n: int) -> dict:
    with launch.environment(env), launch.ephttpd(cpus, backend) as (port, pids), \
            launch.dead_connections(cpus, port, dead):
        measured = launch.under_load(cpus, port, pids, "wrk")
        calls = launch.syscalls_per_reply(cpus, port, pids)
    return {"series": label, "backend": backend, "dead": dead, "round": n, **measured, "syscalls_per_reply": calls}


def ratios(rows: list[dict], rounds: int) -> dict:
    """Ratios of CPU per reply per round (same round, minutes apart at most), then their median and interval:
    each of COMPARED over epoll at 0 and at the most dead, and over itself from 0 to the most."""
    def cost(series: str, n: int, most: bool) -> float | None:
        same = sorted((r for r in rows if r["series"] == series and r["round"] == n), key=lambda r: r["dead"])
        return same[-1 if most else 0]["cpu_us_per_reply"]

    found = {}
    for label in COMPARED:
        for most in (False, True):
            per_round = [a / b for n in range(1, rounds + 1)
                         if (a := cost(label, n, most)) and (b := cost("epoll", n, most))]
            found[f"{label}/epoll@{'most' if most else 'zero'}"] = stats.median_interval(per_round)
        kept = [b / a for n in range(1, rounds + 1) if (a := cost(label, n, False)) and (b := cost(label, n, True))]
        found[f"{label} most/zero"] = stats.median_interval(kept)
    return found
