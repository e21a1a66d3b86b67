"""Item 10: where pipetest's time goes as its pipe count grows, with each token walk.

What is measured: natively, pipetest (BACKENDS, each walk of catalog.WALKS, at PIPES and the most pipes the host
allows) pinned to the server CPU, under `perf record -e cpu-clock` started DELAY_MS after it (so that creating
and registering the pipes stays out) for RUN_S seconds of passing, ROUNDS interleaved rounds. Per run: passes
per second, so nanoseconds per pass, and each function's share of the samples (its self time, kernel `[k]`
or user `[.]`), so its nanoseconds per pass: share x 1e9 / passes per second. That product holds because
pipetest is one thread that never blocks (some token is always ready), so its CPU time is its wall time.
Per walk, the medians over the rounds at each pipe count, and the functions whose nanoseconds per pass grew
most from the fewest pipes to the most: where the growth goes.

Not measured: hardware cache and TLB misses (this VM exposes no hardware counters: perf reports cycles as
<not supported>), so a function that grew is known to take longer per pass, not why; what happens in other
contexts than pipetest's (nothing does for pipes); the closing of the pipes after the loop, which falls
in the profile (briefly, against RUN_S). No test asserts these numbers.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from ... import anatomy, catalog
from ...run.plan import max_pipes
from .. import native
from ..registry import Context

BACKENDS = ("epoll", "poll")
PIPES = (10, 1000)  # and the most the host allows
RUN_S = 3
DELAY_MS = 300
ROUNDS = 3
TOP = 8  # functions listed per walk: the largest growths
GENERATIONS = 1_000_000_000  # never reached: RUN_S bounds the run
# A `perf report -t ';' --sort dso,sym` line: " 16.31% ;libc.so.6   ;[.] __strcmp_evex"
_REPORT_LINE = re.compile(r"^\s*([\d.]+)%\s*;([^;]*);\[(.)\]\s+(.+?)\s*$")


def run(context: Context) -> dict:
    return measure(context.fd_limit, min(context.cpus.server))


def parse_report(text: str) -> dict[str, float]:
    """Each function's share of the samples (0..1), by "[k] name" (kernel) or "[.] name" (user) as perf's
    report prints them."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        found = _REPORT_LINE.match(line)
        if found:
            percent, _dso, space, name = found.groups()
            key = f"[{space}] {name}"
            shares[key] = shares.get(key, 0.0) + float(percent) / 100
    return shares


def run_once(perf: str, backend: str, walk: str, pipes: int, cpu: int, data: Path) -> dict:
    """One pipetest run under perf record: its JSON's passes per second and setup time, and the functions'
    nanoseconds per pass."""
    argv = [perf, "record", "-q", "-e", "cpu-clock", "-D", str(DELAY_MS), "-o", str(data), "--",
            "taskset", "-c", str(cpu), str(native.BUILD / "pipetest"), "--backend", backend, "--pipes", str(pipes),
            "--walk", walk, "--generations", str(GENERATIONS), "--max-seconds", str(RUN_S)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_S * 10 + 60)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip() or proc.stdout.strip())[-300:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio", "-q",
                             "-t", ";"], capture_output=True, text=True, timeout=300)
    ns_per_pass = 1e9 / result["passes_per_s"]
    return {"passes_per_s": result["passes_per_s"], "ns_per_pass": ns_per_pass, "setup_s": result.get("setup_s"),
            # The delay must cover the setup, or creating the pipes would count as passing.
            "setup_in_profile": (result.get("setup_s") or 0.0) * 1000 > DELAY_MS,
            "functions_ns": {k: share * ns_per_pass for k, share in parse_report(report.stdout).items()}}


def growth(runs: dict[int, list[dict]], top: int = TOP) -> dict:
    """From one walk's runs by pipe count: the median nanoseconds per pass at each count, and the functions
    whose median grew most from the fewest pipes to the most."""
    least, most = min(runs), max(runs)

    def medians(rows: list[dict]) -> dict[str, float]:
        names = {k for r in rows for k in r["functions_ns"]}
        return {k: statistics.median(r["functions_ns"].get(k, 0.0) for r in rows) for k in names}

    ok = {pipes: [r for r in rows if "error" not in r] for pipes, rows in runs.items()}
    if not ok[least] or not ok[most]:
        return {"error": "no run completed at both ends"}
    low, high = medians(ok[least]), medians(ok[most])
    grew = sorted(((k, high.get(k, 0.0) - low.get(k, 0.0)) for k in set(low) | set(high)),
                  key=lambda item: item[1], reverse=True)
    total = {pipes: statistics.median(r["ns_per_pass"] for r in rows) for pipes, rows in ok.items() if rows}
    return {"ns_per_pass": total, "grew_ns": total[most] - total[least],
            "kernel_grew_ns": sum(d for k, d in grew if k.startswith("[k]")),
            "user_grew_ns": sum(d for k, d in grew if not k.startswith("[k]")),
            "functions": [{"function": k, "ns_at_least": low.get(k, 0.0), "ns_at_most": high.get(k, 0.0),
                           "grew_ns": d} for k, d in grew[:top]]}


def measure(fd_limit: int, cpu: int, rounds: int = ROUNDS) -> dict:
    instruments = anatomy.prepare()
    if instruments.perf is None:
        return {"unavailable": instruments.reason}
    result: dict = {"run_s": RUN_S, "delay_ms": DELAY_MS, "rounds": rounds, "cpu": cpu, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="epollbench-pipewalk-") as tmp:
        for backend in BACKENDS:
            counts = (*PIPES, max_pipes(fd_limit, backend))
            runs: dict[str, dict[int, list[dict]]] = {walk: {pipes: [] for pipes in counts} for walk in catalog.WALKS}
            for n in range(rounds):
                for walk in catalog.WALKS:
                    for pipes in counts:
                        data = Path(tmp) / f"{backend}-{walk}-{pipes}-{n}.data"
                        runs[walk][pipes].append(run_once(instruments.perf, backend, walk, pipes, cpu, data))
                        data.unlink(missing_ok=True)
            result["backends"][backend] = {
                "pipes": list(counts),
                "walks": {walk: {"runs": {str(p): rows for p, rows in by_pipes.items()}, **growth(by_pipes)}
                          for walk, by_pipes in runs.items()}}
    return result


def cpu_of_server() -> int:
    """The CPU pipetest runs on: the first this process may use, as a sweep's UP variant puts the server."""
    return min(os.sched_getaffinity(0))
