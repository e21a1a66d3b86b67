"""Item 2: ephttpd's capacity on one CPU under wrk (replies/s and the server's CPU share, and replies per
server CPU-second: on a 2-CPU host wrk's one thread cannot keep the server fully busy), for every backend
at 0 and at the most dead connections; from it, how far each backend's capacity falls with dead
connections, and poll's cost per extra dead connection per reply (ns). stats.ROUNDS rounds, medians."""

from __future__ import annotations

from ... import catalog
from ...run.plan import max_dead
from .. import launch, stats
from ..launch import Cpus
from ..registry import Context


def run(context: Context) -> dict:
    return capacity(context.cpus, context.fd_limit)


def capacity(cpus: Cpus, fd_limit: int, rounds: int = stats.ROUNDS) -> dict:
    """Every backend at 0 and at the most dead connections, round after round. On a host where the one wrk
    thread needs a CPU as much as the server does, wrk cannot keep the server fully busy: replies per server
    CPU-second is its capacity then, and what "kept" compares."""
    rows = [{**launch.point(cpus, "ephttpd", backend, dead, "wrk"), "round": n}
            for n in range(1, rounds + 1) for backend in catalog.EPHTTPD_BACKENDS
            for dead in (0, max_dead(fd_limit, backend, launch.ACTIVE))]
    summary = stats.cpu_summary(rows, ("backend", "dead"))
    kept, rate_kept, poll_ns = {}, {}, None
    for backend in catalog.EPHTTPD_BACKENDS:
        zero, most = (line for line in summary if line["backend"] == backend)
        kept[backend] = most["replies_per_cpu_s"] / zero["replies_per_cpu_s"]
        rate_kept[backend] = most["rate"] / zero["rate"]
        if backend == "poll" and most["dead"]:
            poll_ns = (most["cpu_us_per_reply"] - zero["cpu_us_per_reply"]) * 1e3 / most["dead"]
    return {"rows": rows, "summary": summary, "capacity_kept": kept, "rate_kept": rate_kept,
            "poll_ns_per_dead_per_reply": poll_ns}
