"""`invoke bench`: is the tool cheaper than what it measures? Side-by-side ratios taken in one run.

What is measured (each natively on this host, the server pinned to the first CPU and every client to the
others, as in the UP variant):
  1. server CPU microseconds per reply of ephttpd (epoll) and Debian's nginx (epoll), same CPU, same body,
     same load (wrk, then httperf), at 0 dead connections and at the most one server process can hold; the
     httperf load is sized as a sweep sizes it (a probe opening its connections fast) and its reply rate is,
     as a sweep's, httperf's mean of its 5 s samples, which leaves out the 2002 connection ramp;
  2. ephttpd's capacity on one CPU under wrk (replies/s and the server's CPU share, and replies per server
     CPU-second: on a 2-CPU host wrk's one thread cannot keep the server fully busy), for every backend at 0
     and at the most dead connections; from it, how far each backend's capacity falls with dead
     connections, and poll's cost per extra dead connection per reply (ns);
  3. deadconn's opening rate (connections/s) up to the most the host allows (two server processes), with
     loopback tracked by conntrack and, where this process may change that, untracked (--tune-host's rule);
  4. the harness: wall time of a quick profile run with cached images, split into images, setup, measuring
     and report (read from the run's own timings);
  5. pipetest's token passes/s per backend at 10 pipes and at the most pipes allowed, next to 2002's;
  6. the load generators on one client CPU against ephttpd (epoll, 0 dead): wrk's and httperf's rate and
     their own CPU per request, and openload's highest sustained rate (the highest of OPEN_RATES it offered
     and achieved within 1 %, not overloaded) with its CPU per request there (getrusage of each child).
  7. completion vs readiness (issue 15): CPU per reply and syscalls per reply of io_uring-recv (also with
     direct descriptors), io_uring (readiness) and epoll under wrk, at 0 and at the most dead connections, over
     COMPLETION_ROUNDS rounds: medians with a distribution-free 95% interval (order statistics). Syscalls come
     from a second wrk load with `perf stat -e raw_syscalls:sys_enter` attached, so that the tracepoint's
     cost stays out of the CPU figures.
  8. the kernel cost anatomy's own cost (bench/anatomy.py): the perturbation of CPU per reply while perf
     profiles and counts, and its added wall time per dead point, extrapolated to the quick profile.
  9. what the server container and its seccomp filter cost (issue 15): server CPU per reply of ephttpd epoll
     and io_uring-recv under wrk at 0 dead, natively, in the server container under our seccomp profile (as
     a sweep runs it) and in the container unconfined (where the engine allows it; else recorded as
     unavailable with the reason), over SECCOMP_ROUNDS interleaved rounds: per-round ratios container/native
     and filtered/unconfined with their median and 95% interval, the filter's cost per reply, and per system
     call from syscalls per reply counted natively (a second wrk load under perf, as item 7); and, since a
     reply's two calls or fewer cost too little against its TCP path's noise, the filter's cost per system
     call directly (a getppid() loop in the server image, filtered minus unconfined) and what it predicts
     per reply for each backend. A container's
     CPU is its cgroup's (what a sweep reads), the native server's /proc's; the image's ephttpd is built by
     the image from the same sources, so container/native also holds any difference of compiler or libc.
 10. where pipetest's time goes as the pipes grow, with each token walk (issue 16, bench/pipewalk.py):
     nanoseconds per pass of each function from a cpu-clock profile, and those that grew most.
The metric is CPU time from /proc/PID/stat (user + system, every process of the server) over the load,
divided by the replies the load generator counted. Items 1-3 run ROUNDS rounds, each taking every row once,
and report medians (ratios: the median of the rounds' ratios).
Not measured: anything inside containers except items 4 and 9; reply rates measured with httperf, which is
single-threaded and busy-polls, say more about httperf than about a server on a 2-CPU host. No test asserts
any of these numbers: they are written to benchmarks/results/ and printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
from rich.console import Console
from rich.table import Table

from .. import catalog, paths
from ..errors import UserError
from ..host import conntrack, engine, images, machine, preflight, syscall_cost, tuning
from ..run import loads, seccomp, servers, services
from ..run.containers import Containers, Managed
from ..run.plan import max_dead, max_pipes
from . import anatomy as anatomy_cost
from . import native, pipewalk
from .stats import median_interval

ACTIVE = 100               # connections of each load, as the 2002 study's httperf
LOAD_SECONDS = 5           # how long each wrk load runs
# httperf's reply rate is the mean of its samples, one per REPLY_RATE_SAMPLE_S: a load sized for two sample
# intervals has at least one sample even when the probe overestimated the rate a little.
HTTPERF_SECONDS = 2 * loads.REPLY_RATE_SAMPLE_S
PIPETEST_SECONDS = 2
DEADCONN_TIMEOUT_S = 120
NGINX = "/usr/sbin/nginx"
# What main runs natively, installed first as root on Debian: the native build, nginx, the loads, and
# iptables for measuring deadconn with loopback untracked.
NATIVE_PACKAGES = ["gcc", "make", "libc6-dev", "liburing-dev", "nginx-light", "httperf", "wrk", "iptables"]
# Rounds of each measurement, interleaved so that the machine's drift hits every row alike; medians reported.
ROUNDS = 3
REFERENCE = paths.ROOT / "experiment" / "data" / "lse-2002.json"
RESULTS = paths.ROOT / "benchmarks" / "results"
TARGETS = {"ephttpd_vs_nginx_cpu_ratio": 0.5, "capacity_kept_at_most_dead": 0.95,
           "deadconn_per_s": 40_000, "quick_profile_s": 600, "quick_measuring_share": 0.8,
           "openload_per_s": 100_000}


def _ticks(pids: list[int]) -> int:
    """User + system clock ticks of the processes (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(x) for x in text]
    return found


class Cpus:
    def __init__(self) -> None:
        cpus = machine.cpus()
        self.server = {cpus[0]}
        self.clients = set(cpus[1:]) or {cpus[0]}

    def pin_clients(self) -> None:
        os.sched_setaffinity(0, self.clients)

    def pin_server(self) -> None:
        os.sched_setaffinity(0, self.server)


@contextlib.contextmanager
def ephttpd(cpus: Cpus, backend: str, workers: int = 1) -> Iterator[tuple[int, list[int]]]:
    server = native.Ephttpd(backend=backend, extra_args=["--workers", str(workers)] if workers > 1 else [])
    with server:
        os.sched_setaffinity(server.pid, cpus.server)
        pids = [server.pid, *_children(server.pid)]
        deadline = time.monotonic() + 10
        while workers > 1 and len(pids) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the listening line can come before every worker has been forked
            pids = [server.pid, *_children(server.pid)]
        for pid in pids:
            os.sched_setaffinity(pid, cpus.server)
        yield server.port, pids
        server.stop()


@contextlib.contextmanager
def nginx(cpus: Cpus, msgsize: int = 128) -> Iterator[tuple[int, list[int]]]:
    """Debian's nginx with the configuration a sweep gives it (servers.nginx_conf), pinned like ephttpd."""
    if not os.access(NGINX, os.X_OK):
        raise UserError("nginx is not installed: `apt-get install nginx-light` (./run test installs it)")
    with tempfile.TemporaryDirectory(prefix="epollbench-nginx-") as tmp:
        port = machine.free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(servers.nginx_conf(port, msgsize, machine.fd_hard_limit(), pid_path=f"{tmp}/nginx.pid"))
        proc = subprocess.Popen([NGINX, "-c", str(conf), "-e", "stderr"], stderr=subprocess.PIPE, text=True,
                                preexec_fn=cpus.pin_server)
        try:
            deadline = time.monotonic() + 10
            while not servers.tcp_connects("127.0.0.1", port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    said = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                    raise UserError(f"nginx did not start: {said}")
                time.sleep(0.05)
            yield port, [proc.pid, *_children(proc.pid)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)



@contextlib.contextmanager
def dead_connections(cpus: Cpus | None, port: int, count: int) -> Iterator[dict]:
    """deadconn holding count dead connections to port (pinned to the client CPUs when cpus is given)."""
    proc = subprocess.Popen(native.deadconn_command("--port", str(port), "-n", str(count), "--timeout",
                                                    str(DEADCONN_TIMEOUT_S)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=cpus.pin_clients if cpus else None)
    try:
        ready = json.loads((proc.stdout.readline() if proc.stdout else "") or "{}")
        if ready.get("event") != "ready":
            said = proc.stderr.read().strip() if proc.stderr else ""
            raise UserError(f"deadconn could not hold {count} connections: {ready or said}")
        yield ready
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wrk(cpus: Cpus, port: int, seconds: float | None = None) -> dict:
    seconds = seconds or LOAD_SECONDS
    command = loads.wrk_command(f"http://127.0.0.1:{port}/", connections=ACTIVE, threads=1, duration_s=seconds)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 30,
                          preexec_fn=cpus.pin_clients)
    parsed = loads.parse_wrk(proc.stdout)
    return {"replies": parsed["requests"], "rate": parsed["requests_per_s"], "duration_s": parsed["duration_s"],
            "errors": sum(parsed["socket_errors"].values()) + (parsed.get("non_2xx_3xx") or 0)}


def _run_httperf(cpus: Cpus, load: loads.ActiveLoad, seconds: float) -> str:
    proc = subprocess.run(loads.command(load), capture_output=True, text=True, timeout=seconds * 10 + 60,
                          preexec_fn=cpus.pin_clients)
    return proc.stdout


def _probe_rate(cpus: Cpus, port: int) -> float:
    """The reply rate the load will see, probed as a sweep probes it (loads.probe_rate)."""
    def run(load: loads.ActiveLoad) -> str:
        return _run_httperf(cpus, load, loads.PROBE_SECONDS)

    return loads.probe_rate(run, "127.0.0.1", port, ACTIVE)


def _httperf(cpus: Cpus, port: int, probe_rate: float) -> dict:
    """The 2002 load (ActiveLoad's defaults: connections opened at 100/s) sized by the probe's rate to last
    HTTPERF_SECONDS; its rate is httperf's mean of its 5 s samples, as a sweep's (sweep._dead_figures), not
    replies / test-duration, which counts the ramp."""
    load = loads.ActiveLoad(port=port, connections=ACTIVE,
                              num_calls=loads.calls_for_duration(probe_rate, HTTPERF_SECONDS, ACTIVE))
    parsed = loads.parse(_run_httperf(cpus, load, HTTPERF_SECONDS))
    reply_rate = parsed["reply_rate"]
    return {"replies": parsed["total"]["replies"], "rate": reply_rate["avg"], "rate_source": reply_rate["avg_source"],
            "rate_samples": reply_rate["samples"], "rate_overall": reply_rate["overall"], "probe_rate": probe_rate,
            "command": loads.command(load), "duration_s": parsed["total"]["test_duration_s"],
            "errors": parsed["errors"]["total"]}


def _under_load(cpus: Cpus, port: int, pids: list[int], load: str) -> dict:
    # The probe sizing an httperf load runs before the server's CPU time is read: its replies are not counted.
    measure = _wrk if load == "wrk" else functools.partial(_httperf, probe_rate=_probe_rate(cpus, port))
    before = _ticks(pids)
    result = measure(cpus, port)
    cpu_s = (_ticks(pids) - before) / os.sysconf("SC_CLK_TCK")
    replies = result["replies"]
    return {**result, "load": load, "server_cpu_s": cpu_s,
            "server_busy_pct": 100 * cpu_s / result["duration_s"] if result["duration_s"] else None,
            "cpu_us_per_reply": cpu_s * 1e6 / replies if replies else None}


# The offered rates openload climbs, in requests/s, until it is overloaded (item 6).
OPEN_RATES = (40_000, 60_000, 80_000, 90_000, 100_000, 110_000, 120_000, 140_000)


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _generator(cpus: Cpus, port: int, name: str, rate: float | None = None) -> dict:
    """One load generator's run on the client CPUs: its rate and its own CPU per request (the children's
    rusage over the run; each run's process is reaped before the next starts)."""
    before = _child_cpu_s()
    if name == "wrk":
        result = _wrk(cpus, port)
        replies, rate_seen = result["replies"], result["rate"]
        extra: dict = {}
    elif name == "httperf":
        parsed = loads.parse(_run_httperf(cpus, loads.ActiveLoad(
            port=port, connections=ACTIVE, rate=loads.PROBE_CONNECTION_RATE,
            num_calls=loads.calls_for_duration(150_000, LOAD_SECONDS, ACTIVE)), LOAD_SECONDS))
        replies, rate_seen = parsed["total"]["replies"], parsed["reply_rate"]["overall"]
        extra = {}
    else:
        load = loads.OpenLoad(port=port, rate=float(rate or 0), connections=ACTIVE, duration_s=LOAD_SECONDS,
                              timeout_s=2)
        proc = subprocess.run([str(native.BUILD / loads.OPENLOAD), *loads.open_command(load)[1:]],
                              capture_output=True, text=True, timeout=load.bound_s + 60, preexec_fn=cpus.pin_clients)
        parsed = loads.parse_openload(proc.stdout)
        replies, rate_seen = parsed["replies"], parsed["achieved_rate"]
        extra = {"offered": rate, "overloaded": parsed["overloaded"], "lagged": parsed["lagged"],
                 "p99_ms": parsed["latency_ms"]["p99"]}
    cpu_s = _child_cpu_s() - before
    return {"generator": name, "rate": rate_seen, "requests": replies,
            "cpu_us_per_request": cpu_s * 1e6 / replies if replies else None, **extra}


def generators(cpus: Cpus, rounds: int = ROUNDS) -> dict:
    """Item 6: each round, one ephttpd epoll on the server CPU, and on the client CPUs wrk, httperf, then
    openload up OPEN_RATES until an offered rate is not achieved (overloaded)."""
    rows = []
    for n in range(1, rounds + 1):
        with ephttpd(cpus, "epoll") as (port, _pids):
            rows += [{**_generator(cpus, port, "wrk"), "round": n}, {**_generator(cpus, port, "httperf"), "round": n}]
            for rate in OPEN_RATES:
                row = {**_generator(cpus, port, "openload", rate), "round": n}
                rows.append(row)
                if row["overloaded"]:
                    break
    summary = {}
    for name in ("wrk", "httperf"):
        same = [r for r in rows if r["generator"] == name]
        costs = [r["cpu_us_per_request"] for r in same if r["cpu_us_per_request"]]
        summary[name] = {"rate": _median([r["rate"] for r in same]), "cpu_us_per_request": _median(costs)}
    sustained = [max((r for r in rows if r["generator"] == "openload" and r["round"] == n and not r["overloaded"]),
                     key=lambda r: r["offered"], default=None) for n in range(1, rounds + 1)]
    summary["openload"] = {
        "max_sustained_rate": _median([r["offered"] for r in sustained if r]),
        "cpu_us_per_request": _median([r["cpu_us_per_request"] for r in sustained if r and r["cpu_us_per_request"]])}
    return {"rows": rows, "summary": summary}


COMPLETION_ROUNDS = 6
# (label, backend, environment): io_uring-recv with direct descriptors is uring_loop.c's other mode.
COMPLETION_SERIES: tuple[tuple[str, str, dict[str, str]], ...] = (("epoll", "epoll", {}), ("io_uring", "io_uring", {}),
                     (catalog.URING_RECV, catalog.URING_RECV, {}),
                     (f"{catalog.URING_RECV}/fixed", catalog.URING_RECV, {"EPHTTPD_URING_FIXED_FILES": "1"}))


def _syscalls_per_reply(cpus: Cpus, port: int, pids: list[int], seconds: float | None = None) -> float | None:
    """A second wrk load with perf counting the server's system calls (raw_syscalls:sys_enter)."""
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached before the load; an idle server makes no calls meanwhile
    try:
        result = _wrk(cpus, port, seconds)
    finally:
        perf.send_signal(signal.SIGINT)
        _, said = perf.communicate(timeout=30)
    counts = [line.split(",")[0] for line in said.splitlines() if "raw_syscalls:sys_enter" in line]
    if not counts or not counts[0].isdigit() or not result["replies"]:
        return None
    return int(counts[0]) / result["replies"]


def completion_model(cpus: Cpus, fd_limit: int, rounds: int = COMPLETION_ROUNDS) -> dict:
    """Item 7: each round takes every series at 0 and at the most dead connections."""
    rows = []
    for n in range(1, rounds + 1):
        for label, backend, env in COMPLETION_SERIES:
            for dead in (0, max_dead(fd_limit, backend, ACTIVE)):
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    with ephttpd(cpus, backend) as (port, pids), dead_connections(cpus, port, dead):
                        measured = _under_load(cpus, port, pids, "wrk")
                        calls = _syscalls_per_reply(cpus, port, pids)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                rows.append({"series": label, "backend": backend, "dead": dead, "round": n, **measured,
                             "syscalls_per_reply": calls})
    summary = []
    for label, _backend, _env in COMPLETION_SERIES:
        for dead in dict.fromkeys(r["dead"] for r in rows if r["series"] == label):
            same = [r for r in rows if (r["series"], r["dead"]) == (label, dead)]
            summary.append({"series": label, "dead": dead, "rounds": len(same),
                            "cpu_us_per_reply": median_interval([r["cpu_us_per_reply"] for r in same
                                                                 if r["cpu_us_per_reply"]]),
                            "syscalls_per_reply": median_interval([r["syscalls_per_reply"] for r in same
                                                                   if r["syscalls_per_reply"] is not None]),
                            "rate": median_interval([r["rate"] for r in same])})
    # Ratios per round (same round, minutes apart at most), then their median and interval.
    def cost(series: str, n: int, most: bool) -> float | None:
        same = sorted((r for r in rows if r["series"] == series and r["round"] == n), key=lambda r: r["dead"])
        return same[-1 if most else 0]["cpu_us_per_reply"]

    ratios = {}
    for label in (catalog.URING_RECV, f"{catalog.URING_RECV}/fixed", "io_uring"):
        for most in (False, True):
            per_round = [a / b for n in range(1, rounds + 1)
                         if (a := cost(label, n, most)) and (b := cost("epoll", n, most))]
            ratios[f"{label}/epoll@{'most' if most else 'zero'}"] = median_interval(per_round)
        kept = [b / a for n in range(1, rounds + 1) if (a := cost(label, n, False)) and (b := cost(label, n, True))]
        ratios[f"{label} most/zero"] = median_interval(kept)
    return {"rows": rows, "summary": summary, "ratios": ratios,
            "goals": {"cpu_vs_epoll_at_zero": 0.9, "most_over_zero": 1.05, "syscalls_per_reply": 0.5}}


# Item 9: the backends compared (a readiness one, ~2 system calls per reply, and the completion one, ~0.2),
# where ephttpd runs, and what each place's seccomp mode must read in /proc/PID/status for the row to be it.
SECCOMP_BACKENDS = ("epoll", catalog.URING_RECV)
NATIVE, FILTERED, UNCONFINED = "native", "filtered", "unconfined"
SECCOMP_PLACES = (NATIVE, FILTERED, UNCONFINED)
SECCOMP_EXPECTED = {FILTERED: "filter", UNCONFINED: "disabled"}
# Six rounds: the fewest whose median has a distribution-free 95% interval (with six, the range: 96.9%;
# with four the range is only 87.5%). Each load is short so that the item stays under 4 minutes.
SECCOMP_ROUNDS = 6
SECCOMP_LOAD_SECONDS = 3
# The filter's cost per system call, measured directly (a reply's few calls cost too little against the
# noise of its TCP path): CPU time per getppid() call of a Python loop in the server image, the least of
# SYSCALL_PROBE_REPEATS runs of SYSCALL_PROBE_CALLS, filtered and unconfined; the interpreter's share
# cancels in the difference. getppid, like recv, send, epoll_wait and io_uring_enter, is a call Docker's
# profile allows whatever its arguments.
SYSCALL_PROBE_CALLS = 200_000
SYSCALL_PROBE_REPEATS = 7
SYSCALL_PROBE = f"""\
import json, os, time
best = None
for _ in range({SYSCALL_PROBE_REPEATS}):
    started = time.process_time_ns()
    for _ in range({SYSCALL_PROBE_CALLS}):
        os.getppid()
    spent = (time.process_time_ns() - started) / {SYSCALL_PROBE_CALLS}
    best = spent if best is None else min(best, spent)
print(json.dumps({{"event": "syscall_probe", "ns_per_call": best}}))
"""
CONTAINER_START_TIMEOUT_S = 30
MSGSIZE = 128  # the body: ephttpd's default, which the native server runs with, and a sweep's (Plan.msgsize)


def place_order(n: int) -> tuple[str, ...]:
    """The places in round n's order (n from 1): rotated one step a round, so that none always runs first
    (or last) for a backend and a drift within rounds falls on each alike."""
    shift = (n - 1) % len(SECCOMP_PLACES)
    return SECCOMP_PLACES[shift:] + SECCOMP_PLACES[:shift]


def seccomp_ratios(rows: list[dict], backends: tuple[str, ...] = SECCOMP_BACKENDS) -> dict:
    """Per backend, each a median [95% interval] of the rounds' own values (a round compares runs seconds
    apart): CPU per reply filtered/native (the container as a sweep runs it), unconfined/native and
    filtered/unconfined (the filter alone); the filter's cost per reply (ns), and per system call from the
    native syscalls per reply of the same round. A ratio needing a place with no row in a round leaves that
    round out; None where no round has it."""
    def cost(backend: str, place: str, n: int) -> float | None:
        row = next((r for r in rows if (r["backend"], r["place"], r["round"]) == (backend, place, n)), None)
        return row["cpu_us_per_reply"] if row else None

    def calls(backend: str, n: int) -> float | None:
        row = next((r for r in rows if (r["backend"], r["place"], r["round"]) == (backend, NATIVE, n)), None)
        return row.get("syscalls_per_reply") if row else None

    ratios: dict[str, dict] = {}
    for backend in backends:
        rounds = sorted({r["round"] for r in rows if r["backend"] == backend})
        ratio: dict[str, list[float]] = {f"{a}/{b}": [] for a, b in ((FILTERED, NATIVE), (UNCONFINED, NATIVE),
                                                                      (FILTERED, UNCONFINED))}
        filter_ns: list[float] = []
        per_call: list[float] = []
        for n in rounds:
            for key, values in ratio.items():
                a, b = (cost(backend, place, n) for place in key.split("/"))
                if a and b:
                    values.append(a / b)
            filtered, unconfined, native_calls = cost(backend, FILTERED, n), cost(backend, UNCONFINED, n), \
                calls(backend, n)
            if filtered and unconfined:
                filter_ns.append((filtered - unconfined) * 1e3)
                if native_calls:
                    per_call.append((filtered - unconfined) * 1e3 / native_calls)
        ratios[backend] = {**{key: median_interval(values) for key, values in ratio.items()},
                           "filter_ns_per_reply": median_interval(filter_ns),
                           "filter_ns_per_syscall": median_interval(per_call)}
    return ratios


def filter_per_call(probes: list[dict], rows: list[dict], backends: tuple[str, ...] = SECCOMP_BACKENDS) -> dict:
    """From the syscall probes: the filter's ns per call (filtered minus unconfined, each round's own), its
    median [95% interval], and per backend what that predicts per reply (the median ns per call times the
    median native syscalls per reply, and that as a share of the native CPU per reply); None without an
    unconfined probe."""
    def probe(place: str, n: int) -> float | None:
        return next((p["ns_per_call"] for p in probes if (p["place"], p["round"]) == (place, n)), None)

    rounds = sorted({p["round"] for p in probes})
    diffs = [f - u for n in rounds if (f := probe(FILTERED, n)) is not None and (u := probe(UNCONFINED, n)) is not None]
    per_call = median_interval(diffs)
    predicted: dict[str, dict | None] = {}
    for backend in backends:
        native = [r for r in rows if (r["backend"], r["place"]) == (backend, NATIVE)]
        calls = median_interval([r["syscalls_per_reply"] for r in native if r.get("syscalls_per_reply") is not None])
        cost = median_interval([r["cpu_us_per_reply"] for r in native if r.get("cpu_us_per_reply")])
        predicted[backend] = None if per_call is None or calls is None else {
            "ns_per_reply": per_call[0] * calls[0],
            "share_of_native_reply": per_call[0] * calls[0] / (cost[0] * 1e3) if cost else None}
    return {"filter_ns_per_call": per_call,
            "filtered_ns_per_call": median_interval([p["ns_per_call"] for p in probes
                                                     if p["place"] == FILTERED and p["ns_per_call"] is not None]),
            "unconfined_ns_per_call": median_interval([p["ns_per_call"] for p in probes
                                                       if p["place"] == UNCONFINED and p["ns_per_call"] is not None]),
            "predicted": predicted}


def _proc_cpu_s(pids: list[int]) -> float:
    return _ticks(pids) / os.sysconf("SC_CLK_TCK")


def _cgroup_cpu_s(server: Managed) -> float:
    return server.cpu_ns() / 1e9


def _cost_under_wrk(cpus: Cpus, port: int, cpu_s: Callable[[], float], seconds: float) -> dict:
    """One wrk load and the server CPU it cost (cpu_s: the server's CPU seconds so far)."""
    before = cpu_s()
    result = _wrk(cpus, port, seconds)
    used = cpu_s() - before
    replies = result["replies"]
    return {**result, "server_cpu_s": used,
            "server_busy_pct": 100 * used / result["duration_s"] if result["duration_s"] else None,
            "cpu_us_per_reply": used * 1e6 / replies if replies else None}


@contextlib.contextmanager
def _contained(runner: Containers, image: str, cpus: Cpus, backend: str,
               profile: str) -> Iterator[tuple[int, Managed]]:
    """ephttpd in the server container as a sweep starts it (services.server: host network, the server CPU,
    the host's fd limit), under the seccomp profile given (ours or seccomp.UNCONFINED)."""
    port = machine.free_port()
    cpuset = ",".join(map(str, sorted(cpus.server)))
    service = dataclasses.replace(services.server(backend, port, MSGSIZE, cpuset), seccomp=profile)
    server = runner.run(image, service)
    try:
        if not servers.wait_ready(server, service, services.LOOPBACK, port, CONTAINER_START_TIMEOUT_S):
            raise UserError(f"ephttpd {backend} did not start in its container (seccomp {profile}): "
                            f"{server.output_tail() or 'no output'}")
        yield port, server
        runner.stop(server)
    finally:
        runner.remove(server)


def _syscall_probe(runner: Containers, image: str, cpus: Cpus, profile: str) -> float | None:
    """SYSCALL_PROBE in the server image on the server CPU under the seccomp profile given: CPU ns per
    getppid() call, or None when it printed none."""
    service = services.Service("probe", "server", ("python3", "-c", SYSCALL_PROBE), ",".join(map(str, sorted(
        cpus.server))), seccomp=profile)
    _managed, output, _code = runner.run_to_end(image, service, timeout=120)
    for line in reversed(output.splitlines()):
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            said = json.loads(line)
            if isinstance(said, dict) and said.get("event") == "syscall_probe":
                return float(said["ns_per_call"])
    return None


def _engine_for_bench() -> tuple[docker.DockerClient | None, str | None]:
    """A client of this machine's Docker engine, or None and why not: wrk here reaches a server container on
    loopback only when the engine runs its containers on this machine."""
    url = os.environ.get("DOCKER_HOST")
    if not engine.is_local(url):
        return None, f"the Docker engine at {url} is not on this machine: wrk here cannot reach its containers"
    try:
        return engine.connect(url), None
    except UserError as error:
        return None, str(error)


def seccomp_cost(cpus: Cpus, client: docker.DockerClient | None = None, image: str | None = None,
                 rounds: int = SECCOMP_ROUNDS, seconds: float = SECCOMP_LOAD_SECONDS) -> dict:
    """Item 9: each round, first the syscall probe (SYSCALL_PROBE) filtered and unconfined, then each backend
    natively, in the container under our filter and unconfined (in place_order(round)), every load wrk for
    `seconds` at 0 dead; natively a second load under perf for syscalls per reply. client and image: the
    engine and the server image (default: this machine's engine and images.build's). A place the host does
    not allow is recorded under "places" as unavailable."""
    places: dict[str, dict] = {NATIVE: {}, FILTERED: {"seccomp": seccomp.profile_name()},
                               UNCONFINED: {"seccomp": seccomp.UNCONFINED}}
    if client is None:
        client, why = _engine_for_bench()
        if why:
            for place in (FILTERED, UNCONFINED):
                places[place]["unavailable"] = why
    if client is not None and image is None:
        with tempfile.TemporaryDirectory(prefix="epollbench-bench-build-") as log_dir:
            image = images.build(client, images.DEFAULT_BASE_IMAGE, Path(log_dir))["server"].tag
    runner = Containers(client, f"bench-seccomp-{os.getpid()}", machine.fd_hard_limit()) if client else None
    rows: list[dict] = []
    probes: list[dict] = []
    try:
        for n in range(1, rounds + 1):
            if runner is not None and image is not None:
                for place in (p for p in place_order(n) if p != NATIVE and "unavailable" not in places[p]):
                    probes.append({"place": place, "round": n,
                                   "ns_per_call": _syscall_probe(runner, image, cpus, places[place]["seccomp"])})
            for backend in SECCOMP_BACKENDS:
                for place in place_order(n):
                    if "unavailable" in places[place]:
                        continue
                    row = {"backend": backend, "place": place, "round": n}
                    if place == NATIVE:
                        with ephttpd(cpus, backend) as (port, pids):
                            row["seccomp_mode"] = syscall_cost.seccomp(pids[0])
                            row.update(_cost_under_wrk(cpus, port, functools.partial(_proc_cpu_s, pids),
                                                       seconds))
                            row["syscalls_per_reply"] = _syscalls_per_reply(cpus, port, pids, seconds)
                        rows.append(row)
                        continue
                    assert runner is not None and image is not None  # a container place is available
                    try:
                        with _contained(runner, image, cpus, backend, places[place]["seccomp"]) as (port, server):
                            pid = server.pid()
                            mode = syscall_cost.seccomp(pid) if pid else {"mode": None}
                            row["seccomp_mode"] = mode
                            # None: this process cannot see the container's processes (another PID
                            # namespace); the engine was asked, and the row says it could not be checked.
                            if mode["mode"] not in (None, SECCOMP_EXPECTED[place]):
                                places[place]["unavailable"] = (
                                    f"the container asked for seccomp {places[place]['seccomp']} ran with "
                                    f"seccomp mode {mode['mode']} (/proc/PID/status), not {SECCOMP_EXPECTED[place]}")
                                continue
                            row.update(_cost_under_wrk(cpus, port, functools.partial(_cgroup_cpu_s, server),
                                                       seconds))
                    except docker.errors.APIError as error:
                        if place != UNCONFINED:
                            raise
                        places[place]["unavailable"] = ("the engine refused seccomp=unconfined: "
                                                        f"{error.explanation or error}")
                        continue
                    rows.append(row)
    finally:
        if runner is not None:
            runner.remove_all()
    summary = [{"backend": backend, "place": place, "rounds": len(same),
                "cpu_us_per_reply": median_interval([r["cpu_us_per_reply"] for r in same if r["cpu_us_per_reply"]]),
                "rate": median_interval([r["rate"] for r in same]),
                "syscalls_per_reply": median_interval([r["syscalls_per_reply"] for r in same
                                                       if r.get("syscalls_per_reply") is not None])}
               for backend in SECCOMP_BACKENDS for place in SECCOMP_PLACES
               if (same := [r for r in rows if (r["backend"], r["place"]) == (backend, place)])]
    return {"rounds": rounds, "load_seconds": seconds, "dead": 0, "image": image, "places": places, "rows": rows,
            "summary": summary, "ratios": seccomp_ratios(rows), "syscall_probe": {
                "calls": SYSCALL_PROBE_CALLS, "repeats": SYSCALL_PROBE_REPEATS, "rows": probes,
                **filter_per_call(probes, rows)}}


def _point(cpus: Cpus, server: str, backend: str, dead: int, load: str) -> dict:
    start = ephttpd(cpus, backend) if server == "ephttpd" else nginx(cpus)
    with start as (port, pids), dead_connections(cpus, port, dead):
        return {"server": server, "backend": backend, "dead": dead, **_under_load(cpus, port, pids, load)}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summary(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """One line per distinct keys of the rows: the medians over rounds of rate, CPU per reply and busy share,
    and replies per server CPU-second (the server's capacity if its CPU were fully busy)."""
    lines = []
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        same = [r for r in rows if tuple(r[k] for k in keys) == key]
        cost = _median([r["cpu_us_per_reply"] for r in same if r["cpu_us_per_reply"]])
        lines.append({**dict(zip(keys, key, strict=True)), "rounds": len(same),
                      "rate": _median([r["rate"] for r in same]),
                      "server_busy_pct": _median([r["server_busy_pct"] for r in same if r["server_busy_pct"]]),
                      "cpu_us_per_reply": cost, "replies_per_cpu_s": 1e6 / cost if cost else None})
    return lines


def versus_nginx(cpus: Cpus, most: int, rounds: int = ROUNDS) -> dict:
    """Each round runs ephttpd then nginx at each load and level, so that the ratio of one round compares
    runs taken minutes apart at most; the ratio reported is the median of the rounds'."""
    rows = [{**_point(cpus, server, "epoll", dead, load), "round": n}
            for n in range(1, rounds + 1) for load in ("wrk", "httperf") for dead in (0, most)
            for server in ("ephttpd", "nginx")]
    ratios = {}
    for load in ("wrk", "httperf"):
        for dead in (0, most):
            per_round = []
            for n in range(1, rounds + 1):
                ours, theirs = (next(r for r in rows if (r["server"], r["load"], r["dead"], r["round"]) ==
                                     (s, load, dead, n)) for s in ("ephttpd", "nginx"))
                if ours["cpu_us_per_reply"] and theirs["cpu_us_per_reply"]:
                    per_round.append(ours["cpu_us_per_reply"] / theirs["cpu_us_per_reply"])
            ratios[f"{load}@{dead}"] = _median(per_round)
    return {"rows": rows, "summary": _summary(rows, ("load", "dead", "server")), "ephttpd_over_nginx": ratios}


def capacity(cpus: Cpus, fd_limit: int, rounds: int = ROUNDS) -> dict:
    """Every backend at 0 and at the most dead connections, round after round. On a host where the one wrk
    thread needs a CPU as much as the server does, wrk cannot keep the server fully busy: replies per server
    CPU-second is its capacity then, and what "kept" compares."""
    rows = [{**_point(cpus, "ephttpd", backend, dead, "wrk"), "round": n}
            for n in range(1, rounds + 1) for backend in catalog.EPHTTPD_BACKENDS
            for dead in (0, max_dead(fd_limit, backend, ACTIVE))]
    summary = _summary(rows, ("backend", "dead"))
    kept, rate_kept, poll_ns = {}, {}, None
    for backend in catalog.EPHTTPD_BACKENDS:
        zero, most = (line for line in summary if line["backend"] == backend)
        kept[backend] = most["replies_per_cpu_s"] / zero["replies_per_cpu_s"]
        rate_kept[backend] = most["rate"] / zero["rate"]
        if backend == "poll" and most["dead"]:
            poll_ns = (most["cpu_us_per_reply"] - zero["cpu_us_per_reply"]) * 1e3 / most["dead"]
    return {"rows": rows, "summary": summary, "capacity_kept": kept, "rate_kept": rate_kept,
            "poll_ns_per_dead_per_reply": poll_ns}


def _open_dead(fd_limit: int) -> dict:
    """Two ephttpd workers hold twice what one process can; deadconn opens that many, unpinned."""
    workers = 2
    count = workers * max_dead(fd_limit, "epoll", ACTIVE)
    server = native.Ephttpd(backend="epoll", extra_args=["--workers", str(workers)])
    with server, dead_connections(None, server.port, count) as ready:
        return {"connections": ready["held"], "seconds": ready["seconds"], "rate_per_s": ready["rate_per_s"],
                "workers": ready["workers"], "server_workers": workers,
                "conntrack_drops": ready.get("conntrack_drops")}


def _untracking() -> tuple[dict, preflight.Finding | None]:
    """Whether loopback is connection-tracked here, and the finding that --tune-host's rule would undo it,
    when this process may apply it (root, iptables or nft)."""
    state = conntrack.read_loopback_conntrack(preflight.read_host_settings()["net.netfilter.nf_conntrack_max"]
                                              is not None)
    finding = preflight.loopback_finding(state)
    usable = finding is not None and finding.tunable and state["tracked"] is True and os.geteuid() == 0
    return state, finding if usable else None


def deadconn_rate(fd_limit: int, rounds: int = ROUNDS) -> dict:
    """deadconn's opening rate, round after round; where this process may exempt loopback from connection
    tracking (root, iptables or nft: what --tune-host does), each round measures it both ways."""
    state, finding = _untracking()
    rows = []
    for n in range(1, rounds + 1):
        rows.append({**_open_dead(fd_limit), "round": n, "loopback_tracked": state["tracked"]})
        if finding is not None:
            with tuning.tune([finding]):
                rows.append({**_open_dead(fd_limit), "round": n, "loopback_tracked": False})
    by_tracking = {}
    for tracked in dict.fromkeys(r["loopback_tracked"] for r in rows):
        rates = [r["rate_per_s"] for r in rows if r["loopback_tracked"] == tracked]
        by_tracking["tracked" if tracked else "untracked" if tracked is False else "unknown"] = _median(rates)
    return {"rows": rows, "median_rate_per_s": by_tracking}


def harness() -> dict:
    """A quick profile run with cached images, in a scratch results folder, and its phase timings."""
    with tempfile.TemporaryDirectory(prefix="epollbench-harness-") as tmp:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "invoke", "reproduce", "--results-dir", tmp],
                              cwd=paths.ROOT, capture_output=True, text=True)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise UserError(f"the quick profile failed: {proc.stderr.strip()[-300:]}")
        record = json.loads((Path(tmp) / "latest" / "run.json").read_text())
    timings = record.get("timings", {})
    measuring = timings.get("measuring_s")
    return {"wall_s": wall, "timings": timings, "measuring_share": measuring / wall if measuring else None}


def pipetest(fd_limit: int) -> dict:
    reference = json.loads(REFERENCE.read_text())["pipetest_smp"]["series"]
    rows = []
    for backend in catalog.PIPETEST_BACKENDS:
        for pipes in (10, max_pipes(fd_limit, backend)):
            proc = subprocess.run([str(native.BUILD / "pipetest"), "--backend", backend, "--pipes", str(pipes),
                                   "--generations", "1000000000", "--max-seconds", str(PIPETEST_SECONDS)],
                                  capture_output=True, text=True, timeout=PIPETEST_SECONDS * 10 + 30)
            if proc.returncode != 0:
                rows.append({"backend": backend, "pipes": pipes, "error": proc.stderr.strip()})
                continue
            result = json.loads(proc.stdout)
            rows.append({"backend": backend, "pipes": pipes, "passes_per_s": result["passes_per_s"]})
    return {"rows": rows, "reference_2002": reference}


# What --only may name: nothing (every item), or the one item run alone.
ONLY = (None, "completion", "seccomp", "walk")


def main(json_out: str | None = None, skip_harness: bool = False, only: str | None = None) -> dict:
    if only not in ONLY:
        raise UserError(f"--only {only!r}: the items run alone are {', '.join(map(repr, ONLY[1:]))} (items 7, 9, 10)")
    machine.ensure_packages(NATIVE_PACKAGES, "./run bench")
    native.build()
    fd_limit = machine.fd_hard_limit()
    cpus = Cpus()
    most = max_dead(fd_limit, "epoll", ACTIVE)
    result: dict = {"schema_version": 1, "benchmark": "bench",
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "kernel": os.uname().release, "cpu_model": machine.cpu_model(), "cpus": machine.cpu_count(),
              "fd_limit": fd_limit, "server_cpus": sorted(cpus.server), "client_cpus": sorted(cpus.clients),
              "load_seconds": LOAD_SECONDS, "targets": TARGETS, "load_at_start": list(os.getloadavg())}
    # The loads open and close some 400,000 loopback connections; tracked, their entries would fill the
    # conntrack table for the deadconn rounds after them (a full table drops SYNs): untracked as a sweep
    # with --tune-host, where this process may.
    _state, finding = _untracking()
    result["loads_loopback_untracked"] = finding is not None
    with tuning.tune([finding] if finding else []):
        if only is None:
            result["versus_nginx"] = versus_nginx(cpus, most)
            result["capacity"] = capacity(cpus, fd_limit)
        if only in (None, "completion"):
            result["completion"] = completion_model(cpus, fd_limit)
        if only in (None, "seccomp"):
            result["seccomp"] = seccomp_cost(cpus)
    if only in (None, "walk"):
        result["pipe_walk"] = pipewalk.measure(fd_limit, min(cpus.server))
    if only is None:
        result["deadconn"] = deadconn_rate(fd_limit)
        result["pipetest"] = pipetest(fd_limit)
        result["generators"] = generators(cpus)
        timed = None if skip_harness else harness()
        result["harness"] = timed
        quick_wall, source = ((timed["wall_s"], "item 4 (anatomy on)") if timed
                              else anatomy_cost.last_quick_wall(RESULTS))
        result["anatomy"] = {"perturbation": anatomy_cost.perturbation(cpus.server, cpus.clients),
                             "wall_time": anatomy_cost.wall_time(fd_limit, quick_wall, source)}
        _print(result)
    if "completion" in result:
        _print_completion(result["completion"])
    if "seccomp" in result:
        _print_seccomp(result["seccomp"])
    if "pipe_walk" in result:
        _print_pipe_walk(result["pipe_walk"])
    path = Path(json_out) if json_out else RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%SZ')}.json"
    if path.exists():
        raise UserError(f"{path} exists: results are never overwritten; choose another --json-out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")
    return result


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _num(value, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _interval(value: tuple[float, float, float] | None, fmt: str = ".2f") -> str:
    return "-" if value is None else f"{value[0]:{fmt}} [{value[1]:{fmt}}, {value[2]:{fmt}}]"


def _print_completion(c: dict) -> None:
    console = Console()
    console.print(_table(f"7. completion vs readiness under wrk (medians [95% interval] of {COMPLETION_ROUNDS} rounds)",
                         ["series", "dead", "CPU µs/reply", "syscalls/reply", "replies/s"],
                         [[x["series"], _num(x["dead"]), _interval(x["cpu_us_per_reply"]),
                           _interval(x["syscalls_per_reply"], ".3f"), _interval(x["rate"], ",.0f")]
                          for x in c["summary"]]))
    for key, value in c["ratios"].items():
        console.print(f"  {key}: {_interval(value, '.3f')}")
    goals = c["goals"]
    console.print(f"  goals: io_uring-recv/epoll at 0 dead <= {goals['cpu_vs_epoll_at_zero']}, most/zero <= "
                  f"{goals['most_over_zero']}, syscalls/reply <= {goals['syscalls_per_reply']}: met only where "
                  "the whole interval is")


def _print_seccomp(c: dict) -> None:
    console = Console()
    console.print(_table(f"9. the container and its seccomp filter under wrk at 0 dead (medians [95% interval] of "
                         f"{c['rounds']} rounds)", ["backend", "place", "CPU µs/reply", "syscalls/reply", "replies/s"],
                         [[x["backend"], x["place"], _interval(x["cpu_us_per_reply"]),
                           _interval(x["syscalls_per_reply"], ".3f"), _interval(x["rate"], ",.0f")]
                          for x in c["summary"]]))
    for place, how in c["places"].items():
        if "unavailable" in how:
            console.print(f"  {place}: unavailable ({how['unavailable']})")
    for backend, ratios in c["ratios"].items():
        console.print(f"  {backend}: " + ", ".join(f"{key} {_interval(value, '.3f' if '/' in key else '.0f')}"
                                                   for key, value in ratios.items()))
    probe = c["syscall_probe"]
    console.print(f"  the filter per system call (getppid in the server image, filtered - unconfined): "
                  f"{_interval(probe['filter_ns_per_call'], '.1f')} ns (filtered "
                  f"{_interval(probe['filtered_ns_per_call'], '.1f')}, unconfined "
                  f"{_interval(probe['unconfined_ns_per_call'], '.1f')})")
    for backend, predicted in probe["predicted"].items():
        if predicted:
            console.print(f"  {backend}: predicted filter cost {predicted['ns_per_reply']:.0f} ns per reply "
                          f"({_num(predicted['share_of_native_reply'], '.1%')} of its native CPU per reply)")


def _print(r: dict) -> None:
    console = Console()
    vs = r["versus_nginx"]
    console.print(_table(f"1. server CPU per reply: ephttpd vs nginx (epoll, one CPU; medians of {ROUNDS} rounds)",
                         ["load", "dead", "server", "replies/s", "server busy %", "CPU µs/reply"],
                         [[x["load"], _num(x["dead"]), x["server"], _num(x["rate"]), _num(x["server_busy_pct"]),
                           _num(x["cpu_us_per_reply"], ".2f")] for x in vs["summary"]]))
    for key, ratio in vs["ephttpd_over_nginx"].items():
        console.print(f"  ephttpd / nginx CPU per reply, {key} dead: {_num(ratio, '.2f')} "
                      f"(target <= {TARGETS['ephttpd_vs_nginx_cpu_ratio']})")
    cap = r["capacity"]
    console.print(_table(f"2. ephttpd capacity on one CPU (wrk; medians of {ROUNDS} rounds)",
                         ["backend", "dead", "replies/s", "server busy %", "CPU µs/reply", "replies/CPU-s"],
                         [[x["backend"], _num(x["dead"]), _num(x["rate"]), _num(x["server_busy_pct"]),
                           _num(x["cpu_us_per_reply"], ".2f"), _num(x["replies_per_cpu_s"])] for x in cap["summary"]]))
    for backend, kept in cap["capacity_kept"].items():
        console.print(f"  {backend}: at the most dead connections, {kept:.1%} of its 0-dead replies per CPU-second "
                      f"({cap['rate_kept'][backend]:.1%} of its replies/s)")
    console.print(f"  poll: {_num(cap['poll_ns_per_dead_per_reply'], '.1f')} ns per extra dead connection per reply")
    d = r["deadconn"]
    rates = ", ".join(f"{k} loopback {_num(v)}/s" for k, v in d["median_rate_per_s"].items())
    console.print(f"3. deadconn: {d['rows'][0]['connections']:,} connections, medians: {rates} "
                  f"(target >= {TARGETS['deadconn_per_s']:,}/s)")
    console.print(_table("5. pipetest (token passes/s)", ["backend", "pipes", "passes/s"],
                         [[x["backend"], _num(x["pipes"]), _num(x.get("passes_per_s"))]
                          for x in r["pipetest"]["rows"]]))
    g = r["generators"]["summary"]
    console.print(f"6. load generators on one CPU (ephttpd epoll, medians of {ROUNDS} rounds): "
                  f"wrk {_num(g['wrk']['rate'])}/s at {_num(g['wrk']['cpu_us_per_request'], '.2f')} µs/request, "
                  f"httperf {_num(g['httperf']['rate'])}/s at {_num(g['httperf']['cpu_us_per_request'], '.2f')} µs, "
                  f"openload sustains {_num(g['openload']['max_sustained_rate'])}/s at "
                  f"{_num(g['openload']['cpu_us_per_request'], '.2f')} µs (target >= {TARGETS['openload_per_s']:,}/s)")
    _print_anatomy(console, r.get("anatomy"))
    h = r["harness"]
    if h:
        t = h["timings"]
        console.print(f"4. harness: quick profile {h['wall_s']:.0f} s wall: images {_num(t.get('images_s'), '.0f')} s, "
                      f"setup {_num(t.get('setup_s'), '.0f')} s, measuring {_num(t.get('measuring_s'), '.0f')} s, "
                      f"report {_num(t.get('report_s'), '.0f')} s; measuring share "
                      f"{_num(h['measuring_share'], '.0%')} (targets <= 600 s, >= 80%)")


def _interval_of(x: dict, fmt: str) -> str:
    return f"{_num(x.get('median'), fmt)} [{_num(x.get('low'), fmt)}, {_num(x.get('high'), fmt)}]"


def _print_anatomy(console: Console, a: dict | None) -> None:
    if not a:
        return
    p = a["perturbation"]
    if "unavailable" in p:
        console.print(f"8. anatomy perturbation: unavailable ({p['unavailable']})")
    else:
        ratios = p["cpu_per_reply_ratio"]
        console.print(f"8. anatomy, {p['server']} {p['backend']} at {p['dead']:,} dead, {len(p['rows'])} rounds: "
                      f"CPU per reply {_interval_of(p['plain_us_per_reply'], '.2f')} µs plain; while perf profiles "
                      f"x{_interval_of(ratios['profile'], '.3f')}, while it counts syscalls "
                      f"x{_interval_of(ratios['counting'], '.3f')} (median [95% interval])")
    w = a["wall_time"]
    share = w.get("quick_added_share_extrapolated")
    console.print(f"   anatomy wall time: +{w['added_s_per_dead_point']:.1f} s per dead point (one small sweep with "
                  f"and without); extrapolated to the quick profile's {w['quick_dead_points']} dead points: "
                  f"+{w['quick_added_s_extrapolated']:.0f} s on {_num(w['quick_wall_s'])} s "
                  f"({w['quick_wall_source']}) = {_num(share, '.0%')} (target <= {w['target_share']:.0%})")


def _print_pipe_walk(w: dict) -> None:
    console = Console()
    if "unavailable" in w:
        console.print(f"10. pipetest's walks: unavailable ({w['unavailable']})")
        return
    for backend, found in w["backends"].items():
        for walk, summary in found["walks"].items():
            if "error" in summary:
                console.print(f"10. pipetest {backend} ({walk}): {summary['error']}")
                continue
            per_pass = ", ".join(f"{_num(int(p))} pipes {ns:,.0f} ns" for p, ns in summary["ns_per_pass"].items())
            console.print(f"10. pipetest {backend} ({walk}) per pass: {per_pass}; grew {summary['grew_ns']:,.0f} ns "
                          f"(kernel {summary['kernel_grew_ns']:,.0f}, user {summary['user_grew_ns']:,.0f}); most: "
                          + ", ".join(f"{f['function']} +{f['grew_ns']:,.0f}" for f in summary["functions"][:5]))
