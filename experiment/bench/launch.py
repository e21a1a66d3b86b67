"""Starting what the bench measures: the servers natively (pinned to the server CPU) or in the server
container, deadconn's dead connections, and the loads (pinned to the client CPUs) with the server CPU each
costs.

The metric is CPU time over the load (user + system of every server process from /proc/PID/stat, or a
container's cgroup), divided by the replies the load generator counted."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker

from ..errors import UserError
from ..host import conntrack, engine, machine, preflight
from ..run import loads, servers, services
from ..run.containers import Containers, Managed
from . import native

ACTIVE = 100               # connections of each load, as the 2002 study's httperf
LOAD_SECONDS = 5           # how long each wrk load runs
# httperf's reply rate is the mean of its samples, one per REPLY_RATE_SAMPLE_S: a load sized for two sample
# intervals has at least one sample even when the probe overestimated the rate a little.
HTTPERF_SECONDS = 2 * loads.REPLY_RATE_SAMPLE_S
DEADCONN_TIMEOUT_S = 120
NGINX = "/usr/sbin/nginx"
MSGSIZE = 128  # the body: ephttpd's default, which the native server runs with, and a sweep's (Plan.msgsize)
CONTAINER_START_TIMEOUT_S = 30


def ticks(pids: list[int]) -> int:
    """User + system clock ticks of the processes (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def proc_cpu_s(pids: list[int]) -> float:
    return ticks(pids) / os.sysconf("SC_CLK_TCK")


def cgroup_cpu_s(server: Managed) -> float:
    return server.cpu_ns() / 1e9


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(x) for x in text]
    return found


class Cpus:
    """The server's CPU (the first this process may use) and the clients' (the others, or the same one)."""

    def __init__(self) -> None:
        cpus = machine.cpus()
        self.server = {cpus[0]}
        self.clients = set(cpus[1:]) or {cpus[0]}

    def pin_clients(self) -> None:
        os.sched_setaffinity(0, self.clients)

    def one_client(self) -> Cpus:
        """The same server CPU, and the first of the clients' CPUs alone: for loads that must do with one."""
        narrowed = copy.copy(self)
        narrowed.clients = {min(self.clients)}
        return narrowed

    def pin_server(self) -> None:
        os.sched_setaffinity(0, self.server)


@contextlib.contextmanager
def ephttpd(cpus: Cpus, backend: str, workers: int = 1) -> Iterator[tuple[int, list[int]]]:
    """The native ephttpd, every process pinned to the server CPU: its port and its processes."""
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
def nginx(cpus: Cpus, msgsize: int = MSGSIZE) -> Iterator[tuple[int, list[int]]]:
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
            _wait_for_nginx(proc, port)
            yield port, [proc.pid, *_children(proc.pid)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _wait_for_nginx(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 10
    while not servers.tcp_connects("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            said = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise UserError(f"nginx did not start: {said}")
        time.sleep(0.05)


@contextlib.contextmanager
def contained(runner: Containers, image: str, cpus: Cpus, backend: str,
              profile: str) -> Iterator[tuple[int, Managed]]:
    """ephttpd in the server container as a sweep starts it (services.server: host network, the server CPU,
    the host's fd limit), under the seccomp profile given (ours or seccomp.UNCONFINED)."""
    port = machine.free_port()
    service = dataclasses.replace(services.server(backend, port, MSGSIZE, server_cpuset(cpus)), seccomp=profile)
    server = runner.run(image, service)
    try:
        if not servers.wait_ready(server, service, services.LOOPBACK, port, CONTAINER_START_TIMEOUT_S):
            raise UserError(f"ephttpd {backend} did not start in its container (seccomp {profile}): "
                            f"{server.output_tail() or 'no output'}")
        yield port, server
        runner.stop(server)
    finally:
        runner.remove(server)


def server_cpuset(cpus: Cpus) -> str:
    return ",".join(map(str, sorted(cpus.server)))


def local_engine() -> tuple[docker.DockerClient | None, str | None]:
    """A client of this machine's Docker engine, or None and why not: wrk here reaches a server container on
    loopback only when the engine runs its containers on this machine."""
    url = os.environ.get("DOCKER_HOST")
    if not engine.is_local(url):
        return None, f"the Docker engine at {url} is not on this machine: wrk here cannot reach its containers"
    try:
        return engine.connect(url), None
    except UserError as error:
        return None, str(error)


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """This process's environment with env added (what a native server started meanwhile inherits)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def untracking() -> tuple[dict, preflight.Finding | None]:
    """Whether loopback is connection-tracked here, and the finding that --tune-host's rule would undo it,
    when this process may apply it (root, iptables or nft)."""
    state = conntrack.read_loopback_conntrack(preflight.read_host_settings()["net.netfilter.nf_conntrack_max"]
                                              is not None)
    finding = preflight.loopback_finding(state)
    usable = finding is not None and finding.tunable and state["tracked"] is True and os.geteuid() == 0
    return state, finding if usable else None


def wrk(cpus: Cpus, port: int, seconds: float | None = None) -> dict:
    """One wrk load (ACTIVE connections, one thread, LOAD_SECONDS unless given) on the client CPUs."""
    seconds = seconds or LOAD_SECONDS
    command = loads.wrk_command(f"http://127.0.0.1:{port}/", connections=ACTIVE, threads=1, duration_s=seconds)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 30,
                          preexec_fn=cpus.pin_clients)
    parsed = loads.parse_wrk(proc.stdout)
    return {"replies": parsed["requests"], "rate": parsed["requests_per_s"], "duration_s": parsed["duration_s"],
            "errors": sum(parsed["socket_errors"].values()) + (parsed.get("non_2xx_3xx") or 0)}


def run_httperf(cpus: Cpus, load: loads.ActiveLoad, seconds: float) -> str:
    proc = subprocess.run(loads.command(load), capture_output=True, text=True, timeout=seconds * 10 + 60,
                          preexec_fn=cpus.pin_clients)
    return proc.stdout


def probe_rate(cpus: Cpus, port: int) -> float:
    """The reply rate the load will see, probed as a sweep probes it (loads.probe_rate)."""
    def run(load: loads.ActiveLoad) -> str:
        return run_httperf(cpus, load, loads.PROBE_SECONDS)

    return loads.probe_rate(run, "127.0.0.1", port, ACTIVE)


def httperf(cpus: Cpus, port: int, probe_rate: float) -> dict:
    """The 2002 load (ActiveLoad's defaults: connections opened at 100/s) sized by the probe's rate to last
    HTTPERF_SECONDS; its rate is httperf's mean of its 5 s samples, as a sweep's (sweep._dead_figures), not
    replies / test-duration, which counts the ramp."""
    load = loads.ActiveLoad(port=port, connections=ACTIVE,
                            num_calls=loads.calls_for_duration(probe_rate, HTTPERF_SECONDS, ACTIVE))
    parsed = loads.parse(run_httperf(cpus, load, HTTPERF_SECONDS))
    reply_rate = parsed["reply_rate"]
    return {"replies": parsed["total"]["replies"], "rate": reply_rate["avg"], "rate_source": reply_rate["avg_source"],
            "rate_samples": reply_rate["samples"], "rate_overall": reply_rate["overall"], "probe_rate": probe_rate,
            "command": loads.command(load), "duration_s": parsed["total"]["test_duration_s"],
            "errors": parsed["errors"]["total"]}


def server_cost(run: Callable[[], dict], cpu_s: Callable[[], float], **extra: str) -> dict:
    """One load (run(): its replies, rate and duration) and the server CPU it cost (cpu_s: the server's CPU
    seconds so far); extra goes in the row after the load's own fields."""
    before = cpu_s()
    result = run()
    used = cpu_s() - before
    replies = result["replies"]
    return {**result, **extra, "server_cpu_s": used,
            "server_busy_pct": 100 * used / result["duration_s"] if result["duration_s"] else None,
            "cpu_us_per_reply": used * 1e6 / replies if replies else None}


def under_load(cpus: Cpus, port: int, pids: list[int], load: str) -> dict:
    """A wrk or an httperf load on the native server's processes pids, and the server CPU it cost."""
    # The probe sizing an httperf load runs before the server's CPU time is read: its replies are not counted.
    run = (functools.partial(wrk, cpus, port) if load == "wrk"
           else functools.partial(httperf, cpus, port, probe_rate(cpus, port)))
    return server_cost(run, functools.partial(proc_cpu_s, pids), load=load)


def point(cpus: Cpus, server: str, backend: str, dead: int, load: str) -> dict:
    """A native server (ephttpd or nginx) holding dead dead connections under one load."""
    start = ephttpd(cpus, backend) if server == "ephttpd" else nginx(cpus)
    with start as (port, pids), dead_connections(cpus, port, dead):
        return {"server": server, "backend": backend, "dead": dead, **under_load(cpus, port, pids, load)}


def syscalls_per_reply(cpus: Cpus, port: int, pids: list[int], seconds: float | None = None) -> float | None:
    """A second wrk load with perf counting the server's system calls (raw_syscalls:sys_enter), so that the
    tracepoint's cost stays out of the CPU figures of the first."""
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached before the load; an idle server makes no calls meanwhile
    try:
        result = wrk(cpus, port, seconds)
    finally:
        perf.send_signal(signal.SIGINT)
        _, said = perf.communicate(timeout=30)
    counts = [line.split(",")[0] for line in said.splitlines() if "raw_syscalls:sys_enter" in line]
    if not counts or not counts[0].isdigit() or not result["replies"]:
        return None
    return int(counts[0]) / result["replies"]
