"""`invoke bench-programs`: the programs under test measured natively, side by side in one run.

What is measured:
  - ephttpd's CPU microseconds per reply (user + system from /proc/PID/stat over the httperf run, divided by
    httperf's replies), for poll and epoll, at 0 dead connections and at the most the host allows;
  - deadconn's opening rate (connections per second, as it reports) while opening those dead connections
    pinned to the client CPUs, and once more unpinned, opening the most the host allows.
The model: the 2002 active load (httperf, 100 keep-alive connections), the server pinned to the first CPU
and the clients to the others, as in the UP variant.
Not measured: anything inside containers (that is `invoke reproduce`); reply rates are printed but say
more about httperf than about the server on a 2-core machine. Numbers are ratios taken in one run; they are
never asserted by tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import host, httperf, native
from .errors import UserError
from .plan import max_dead

BACKENDS = ("poll", "epoll")
ACTIVE = 100
DURATION_S = 6.0
DEADCONN_TIMEOUT_S = 120
RESULTS = native.ROOT / "benchmarks" / "results"


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _pin(pid: int, cpus: set[int]) -> None:
    os.sched_setaffinity(pid, cpus)


def _httperf(port: int, calls: int, client_cpus: set[int]) -> dict:
    load = httperf.ActiveLoad(port=port, connections=ACTIVE, num_calls=calls)
    proc = subprocess.run(httperf.command(load), capture_output=True, text=True, timeout=DURATION_S * 10 + 60,
                          preexec_fn=lambda: os.sched_setaffinity(0, client_cpus))
    return httperf.parse(proc.stdout)


def _measure(backend: str, dead: int, server_cpus: set[int], client_cpus: set[int]) -> dict:
    with native.Ephttpd(backend=backend) as server:
        _pin(server.pid, server_cpus)
        deadconn = subprocess.Popen(native.deadconn_command("--port", str(server.port), "-n", str(dead),
                                                            "--timeout", str(DEADCONN_TIMEOUT_S)),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: os.sched_setaffinity(0, client_cpus))
        try:
            ready = json.loads(deadconn.stdout.readline() or "{}")
            if ready.get("event") != "ready":
                raise UserError(f"deadconn could not open {dead} connections: {ready or deadconn.stderr.read()}")
            probe = _httperf(server.port, 200, client_cpus)
            calls = httperf.calls_for_duration(probe["reply_rate"]["overall"], DURATION_S, ACTIVE)
            before = _cpu_ticks(server.pid)
            parsed = _httperf(server.port, calls, client_cpus)
            cpu_s = (_cpu_ticks(server.pid) - before) / os.sysconf("SC_CLK_TCK")
        finally:
            deadconn.terminate()
            deadconn.wait(timeout=30)
        server.stop()
    replies = parsed["total"]["replies"]
    return {"backend": backend, "dead": dead, "replies": replies, "errors": parsed["errors"]["total"],
            "reply_rate": parsed["reply_rate"]["overall"], "server_cpu_s": cpu_s,
            "server_cpu_us_per_reply": cpu_s * 1e6 / replies if replies else None,
            "deadconn_rate_per_s": ready.get("rate_per_s"), "deadconn_workers": ready.get("workers")}


def _deadconn_rate(count: int) -> dict:
    """deadconn opening count connections to an epoll ephttpd, neither pinned: its rate as it reports it."""
    with native.Ephttpd(backend="epoll") as server:
        proc = subprocess.Popen(native.deadconn_command("--port", str(server.port), "-n", str(count),
                                                        "--timeout", str(DEADCONN_TIMEOUT_S)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = json.loads(proc.stdout.readline() or "{}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        server.stop()
    if ready.get("event") != "ready":
        raise UserError(f"deadconn could not open {count} connections: {ready or proc.stderr.read()}")
    return {"connections": ready["held"], "seconds": ready["seconds"], "rate_per_s": ready["rate_per_s"],
            "workers": ready["workers"], "conntrack_drops": ready.get("conntrack_drops")}


def main(json_out: str | None = None) -> dict:
    native.build()
    cpus = host.cpus()
    server_cpus, client_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    fd_limit = host.fd_hard_limit()
    rows = []
    for backend in BACKENDS:
        for dead in (0, max_dead(fd_limit, backend, ACTIVE)):
            rows.append(_measure(backend, dead, server_cpus, client_cpus))
    result = {"schema_version": 1, "benchmark": "programs", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime()),
              "kernel": os.uname().release, "cpu_model": host.cpu_model(), "cpus": len(cpus),
              "fd_limit": fd_limit, "server_cpus": sorted(server_cpus), "client_cpus": sorted(client_cpus),
              "rows": rows}
    by = {(r["backend"], r["dead"]): r for r in rows}
    for backend in BACKENDS:
        zero, most = (by[k] for k in sorted(k for k in by if k[0] == backend))
        if zero["server_cpu_us_per_reply"] and most["server_cpu_us_per_reply"]:
            result[f"{backend}_cpu_growth"] = most["server_cpu_us_per_reply"] / zero["server_cpu_us_per_reply"]
    result["deadconn_open"] = _deadconn_rate(max_dead(fd_limit, "epoll", ACTIVE))
    _print(result)
    path = Path(json_out) if json_out else RESULTS / f"programs-{time.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise UserError(f"{path} exists: results are never overwritten; choose another --json-out")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")
    return result


def _print(result: dict) -> None:
    table = Table(title=f"ephttpd and deadconn, {result['cpu_model']}, kernel {result['kernel']}")
    for column in ("backend", "dead", "replies/s", "server CPU µs/reply", "deadconn conn/s"):
        table.add_column(column, justify="right")
    for r in result["rows"]:
        us = r["server_cpu_us_per_reply"]
        rate = r["deadconn_rate_per_s"]
        table.add_row(r["backend"], f"{r['dead']:,}", f"{r['reply_rate']:,.0f}", f"{us:.2f}" if us else "-",
                      f"{rate:,.0f}" if rate and r["dead"] else "-")
    Console().print(table)
    opened = result["deadconn_open"]
    print(f"deadconn, unpinned: {opened['connections']:,} connections in {opened['seconds']:.2f} s = "
          f"{opened['rate_per_s']:,.0f}/s with {opened['workers']} worker(s)")
    for backend in BACKENDS:
        if f"{backend}_cpu_growth" in result:
            print(f"{backend}: CPU per reply at the most dead connections = "
                  f"{result[f'{backend}_cpu_growth']:.2f} x its 0-dead cost")
