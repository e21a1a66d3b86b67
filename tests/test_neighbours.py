"""Who else held a point's CPUs, through the real pipeline (run/neighbours.py): a reproduce run in containers
with a synthetic third party on the server's CPU, and one with a synthetic stall of the server itself; the
/proc/stat fallback where perf cannot record, on a real container's cgroup."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tools
from reproducing import finished, invoke, point_files

from experiment import model
from experiment.anatomy import perf
from experiment.host import images, interference, switches
from experiment.report import export
from experiment.run import neighbours, services
from experiment.run.containers import Containers
from experiment.run.results import Run

# A third party on CPU 0 (the server's in UP): 30 ms of SCHED_FIFO busy loop once a second, for at most 60 s.
SPINNER = """import os, time
os.sched_setaffinity(0, {0})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
open("/proc/self/comm", "w").write("spinner")
for _ in range(60):
    time.sleep(0.97)
    end = time.monotonic() + 0.03
    while time.monotonic() < end:
        pass
"""
# One open-loop point on ephttpd epoll at 0 dead, UP: the server on CPU 0, openload and deadconn on CPU 1.
OPEN_POINT = ("--sweeps", "dead", "--load", "open", "--variants", "up", "--backends", "epoll", "--dead", "0",
              "--duration", "4", "--no-report")


def perf_or_skip() -> None:
    perf_path, why = perf.ensure(install=False)
    why = why or switches.check(perf_path or "perf")
    if perf_path is None or why:
        tools.missing(f"perf cannot record the switches here: {why}")


def the_open_point(tmp_path) -> dict:
    code, out, err = finished(invoke(*OPEN_POINT, results_dir=tmp_path), 300)
    assert code == 0, err[-2000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("*/run.json") if not p.parent.is_symlink()]
    (point,) = [p for p in point_files(Run(run_dir)) if p["sweep"] == model.DEAD_OPEN]
    assert point["status"] == model.OK, point["reason"]
    (row,) = [export.row(p) for p in Run(run_dir).points()]
    server, kept = point["interference"]["server"], point["tail"]["kept"]
    assert row["others_share"] == server["third_party_share"] and row["others_longest_ms"] == server["longest"]["ms"]
    assert row["p99_without_others_ms"] == (kept["p99"] if kept else None)
    return point


@pytest.mark.docker
@pytest.mark.needs_host("records sched:sched_switch and runs a SCHED_FIFO busy loop on CPU 0")
def test_a_third_party_busy_on_the_servers_cpu_is_named_with_its_stretch_and_its_requests_excluded(tmp_path):
    """With the spinner on CPU 0 throughout, the open point is flagged interfered, names the spinner with at
    least two of its 30 ms bursts among the longest holds, and its tail leaves out the requests due in them;
    the spinner is not on the clients' CPU."""
    perf_or_skip()
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
    try:
        point = the_open_point(tmp_path)
    finally:
        spinner.kill()
        spinner.wait()
    server, clients = point["interference"]["server"], point["interference"]["clients"]
    assert point["flags"]["interfered"] is True and server["interfered"] is True
    assert server["tasks"]["spinner"] >= 0.05 and server["cpus"] == [0]
    assert server["longest"]["ms"] >= 10 and any(h["comm"] == "spinner" for h in server["holds"])
    assert "spinner" not in (clients["tasks"] or {})
    tail = point["tail"]
    kept = tail["kept"]["count"] if tail["kept"] else 0  # a busy host's others may leave none
    assert tail["excluded"] > 0 and kept == tail["replies"] - tail["excluded"]
    assert tail["raw"]["count"] == tail["replies"] == point["figures"]["replies"]


def in_containers(name: str) -> tuple[list[int], list[int]]:
    """The processes named name: those in a Docker container's cgroup, and the others."""
    inside, outside = [], []
    for pid in (int(p) for p in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()):
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        (inside if "docker" in cgroup else outside).append(pid)
    return inside, outside


def stall(name: str, stop_s: float, every_s: float, done: threading.Event) -> None:
    """Stops every process named name in a container (SIGSTOP) for stop_s once every every_s until done."""
    while not done.wait(every_s):
        pids, _ = in_containers(name)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(stop_s)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.docker
@pytest.mark.needs_host("records sched:sched_switch and stops the run's server with signals")
def test_a_stall_of_the_server_itself_is_not_a_third_party_and_its_tail_survives_the_exclusion(tmp_path):
    """ephttpd stopped 30 ms once a second: the requests due then wait up to 30 ms, a few % of them, so p99
    holds them; the stall is no one else's, so its requests are kept and p99 without the third parties stays
    over 10 ms."""
    perf_or_skip()
    if in_containers("ephttpd")[1]:
        pytest.skip("an ephttpd outside containers runs on this host: a third party by the name ours have")
    done = threading.Event()
    stopper = threading.Thread(target=stall, args=("ephttpd", 0.03, 1.0, done), daemon=True)
    stopper.start()
    try:
        point = the_open_point(tmp_path)
    finally:
        done.set()
        stopper.join()
    server = point["interference"]["server"]
    assert "ephttpd" not in (server["tasks"] or {}) and "ephttpd" not in (server["unseen_exits"] or {})
    tail = point["tail"]
    assert tail["raw"]["p99"] >= 10
    assert tail["kept"] is not None and tail["kept"]["p99"] >= 10, (tail, server)


@pytest.mark.docker
@pytest.mark.needs_host("pins a busy loop to CPU 0 and reads a container's CPU time from the host's cgroup tree")
def test_without_perf_the_servers_share_comes_from_proc_stat_and_the_stretch_says_why_not(client, tmp_path):
    """The fallback on a real container pinned to CPU 0 (its cgroup's usage is ours) while this process spins
    there 0.3 s: the spin is a third party's, the share is over the threshold, and the stretch is unavailable
    with perf's reason."""
    cpus = os.sched_getaffinity(0)
    if not {0, 1} <= cpus:
        pytest.skip("needs CPUs 0 and 1")
    built = images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path / "build")
    containers = Containers(client, f"test-neighbours-{os.getpid()}", resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    sleeper = containers.run(built["client"].tag, services.Service("sleeper", "client", ("sleep", "30"), "0"))
    try:
        watch = neighbours.Watch(None, "perf is not available: a test says so")
        cpusets = {model.SERVER_CPUS: "0", model.CLIENT_CPUS: "1"}
        watching = neighbours.begin(watch, cpusets, str(sleeper.container.id))
        assert isinstance(watching, neighbours.Watching)
        watching.open()
        spin_on_cpu0(0.3)
        watching.close()
        found = neighbours.judged(watching, lambda: [str(sleeper.container.id)])
    finally:
        containers.remove_all()
    assert isinstance(found, dict) and set(found) == {model.SERVER_CPUS}
    server = found[model.SERVER_CPUS]
    assert server.method == interference.PROC_STAT and server.cpus == [0]
    assert server.third_party_share > interference.THIRD_PARTY_SHARE and server.interfered is True
    assert server.longest is None and server.stretch_unavailable == "perf is not available: a test says so"


def spin_on_cpu0(seconds: float) -> None:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    finally:
        os.sched_setaffinity(0, before)


def test_in_a_guest_or_on_a_remote_engine_a_point_says_why_nothing_here_sees_its_cpus():
    for watch, why in ((neighbours.Watch.prepare(local=True, in_guest=True), neighbours.GUEST),
                       (neighbours.Watch.prepare(local=False, in_guest=False), neighbours.REMOTE)):
        assert watch.unavailable == why and watch.describe() == {"method": None, "why_no_perf": None,
                                                                 "unavailable": why}
        found = neighbours.begin(watch, {model.SERVER_CPUS: "0", model.CLIENT_CPUS: "1"})
        assert found == model.Unavailable(why)
        assert neighbours.judged(found, lambda: []) == found and neighbours.flag(found) is None
        assert neighbours.tail_of(found, b"", "") == found


def test_a_point_with_a_capture_records_its_interference_and_reads_back_the_same(tmp_path):
    """The records a point keeps (model.Interference with its holds, model.Tail) go to JSON and back whole."""
    held = model.Held("tokio-rt-worker", 103, 0, 21.5)
    found = model.Interference(True, interference.SCHED_SWITCH, [0], 4.0, 0.05, 0.0125, held,
                               {"tokio-rt-worker": 0.05}, holds=[held, model.Held("kworker/0:1", 7, 0, 1.5)])
    kept = model.Percentiles(0.07, 0.1, 0.3, 0.9, 1.2, 900)
    tail = model.Tail(model.Percentiles(0.07, 0.1, 20.0, 30.0, 31.0, 1000), kept, 1000, 1000, 100, 0.1, 10.0)
    assert model.Interference.from_json(found.to_json()) == found
    assert model.Tail.from_json(tail.to_json()) == tail
