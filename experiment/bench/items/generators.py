"""Item 6: the load generators on one client CPU against ephttpd (epoll, 0 dead): wrk's and httperf's rate
and their own CPU per request, and openload's highest sustained rate (the highest of OPEN_RATES it offered
and achieved within 1 %, not overloaded) with its CPU per request there (getrusage of each child).
stats.ROUNDS rounds, medians."""

from __future__ import annotations

import resource
import subprocess

from ...run import loads
from .. import launch, native, stats
from ..launch import Cpus
from ..registry import Context

# The offered rates openload climbs, in requests/s, until it is overloaded.
OPEN_RATES = (40_000, 60_000, 80_000, 90_000, 100_000, 110_000, 120_000, 140_000)


def run(context: Context) -> dict:
    return generators(context.cpus)


def generators(cpus: Cpus, rounds: int = stats.ROUNDS) -> dict:
    """Each round, one ephttpd epoll on the server CPU, and on the client CPUs wrk, httperf, then openload up
    OPEN_RATES until an offered rate is not achieved (overloaded)."""
    rows = [row for n in range(1, rounds + 1) for row in _round(cpus, n)]
    return {"rows": rows, "summary": summary(rows, rounds)}


def _round(cpus: Cpus, n: int) -> list[dict]:
    with launch.ephttpd(cpus, "epoll") as (port, _pids):
        rows = [{**generator(cpus, port, "wrk"), "round": n}, {**generator(cpus, port, "httperf"), "round": n}]
        for rate in OPEN_RATES:
            rows.append({**generator(cpus, port, "openload", rate), "round": n})
            if rows[-1]["overloaded"]:
                break
    return rows


def summary(rows: list[dict], rounds: int) -> dict:
    """wrk's and httperf's median rate and CPU per request; openload's median highest sustained offered rate
    and the CPU per request there."""
    lines = stats.summarize([r for r in rows if r["generator"] in ("wrk", "httperf")], ("generator",),
                            {"rate": stats.measured, "cpu_us_per_request": stats.positive})
    found = {line["generator"]: {"rate": stats.middle(line["rate"]),
                                 "cpu_us_per_request": stats.middle(line["cpu_us_per_request"])} for line in lines}
    sustained = [best for n in range(1, rounds + 1) if (best := _sustained(rows, n))]
    found["openload"] = {"max_sustained_rate": stats.median([r["offered"] for r in sustained]),
                         "cpu_us_per_request": stats.median([r["cpu_us_per_request"] for r in sustained
                                                             if r["cpu_us_per_request"]])}
    return found


def _sustained(rows: list[dict], n: int) -> dict | None:
    """Round n's openload row at the highest offered rate it achieved, or None."""
    return max((r for r in rows if r["generator"] == "openload" and r["round"] == n and not r["overloaded"]),
               key=lambda r: r["offered"], default=None)


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def generator(cpus: Cpus, port: int, name: str, rate: float | None = None) -> dict:
    """One load generator's run on the client CPUs: its rate and its own CPU per request (the children's
    rusage over the run; each run's process is reaped before the next starts)."""
    before = _child_cpu_s()
    found = {"wrk": _wrk, "httperf": _httperf}.get(name, _openload)(cpus, port, rate)
    cpu_s = _child_cpu_s() - before
    replies = found.pop("requests")
    return {"generator": name, "rate": found.pop("rate"), "requests": replies,
            "cpu_us_per_request": cpu_s * 1e6 / replies if replies else None, **found}


def _wrk(cpus: Cpus, port: int, _rate: float | None) -> dict:
    result = launch.wrk(cpus, port)
    return {"requests": result["replies"], "rate": result["rate"]}


def _httperf(cpus: Cpus, port: int, _rate: float | None) -> dict:
    load = loads.ActiveLoad(port=port, connections=launch.ACTIVE, rate=loads.PROBE_CONNECTION_RATE,
                            num_calls=loads.calls_for_duration(150_000, launch.LOAD_SECONDS, launch.ACTIVE))
    parsed = loads.parse(launch.run_httperf(cpus, load, launch.LOAD_SECONDS))
    return {"requests": parsed["total"]["replies"], "rate": parsed["reply_rate"]["overall"]}


def _openload(cpus: Cpus, port: int, rate: float | None) -> dict:
    load = loads.OpenLoad(port=port, rate=float(rate or 0), connections=launch.ACTIVE,
                          duration_s=launch.LOAD_SECONDS, timeout_s=2)
    proc = subprocess.run([str(native.BUILD / loads.OPENLOAD), *loads.open_command(load)[1:]],
                          capture_output=True, text=True, timeout=load.bound_s + 60, preexec_fn=cpus.pin_clients)
    parsed = loads.parse_openload(proc.stdout)
    return {"requests": parsed["replies"], "rate": parsed["achieved_rate"], "offered": rate,
            "overloaded": parsed["overloaded"], "lagged": parsed["lagged"], "p99_ms": parsed["latency_ms"]["p99"]}
