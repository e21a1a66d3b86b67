"""Whose a CPU's time was during a point (experiment/host: parties, switches, interference, stat_fallback): ours
and third parties by comm, cgroup and the harness's descendants; `perf script` output of sched:sched_switch
cut into each task's stretches, on a real capture of this host (tests/data/switches) and on made-up switches;
third parties' share of a set of CPUs, their longest stretch and the flag over a window; the /proc/stat
estimate where perf cannot record; and a real capture of a pinned busy loop."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tools

from experiment.anatomy import perf
from experiment.host import interference, parties, stat_fallback, switches
from experiment.host.interference import Held
from experiment.host.parties import ENGINE, IDLE, OURS, THIRD_PARTY, Ours, Task
from experiment.host.switches import OnCpu

DATA = Path(__file__).parent / "data"
CAPTURE = DATA / "switches" / "sched-switch.txt"  # tests/data/switches/README.md says what ran
CAPTURED_FROM, CAPTURED_TO = 14897_205432630, 14897_353347685  # its first and last switch, ns
CAPTURING_PROCESS = 11598
CONTAINER = "3f" * 32
OTHER_CONTAINER = "7a" * 32
MS = 1_000_000


# ---- ours and theirs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("comm", ["dockerd", "containerd", "containerd-shim", "runc", "runc:[2:INIT]",
                                  "docker-init", "tini", "docker-proxy", "perf"])
def test_the_engine_and_the_instruments_are_ours_by_name(comm):
    assert Ours().party(Task(4242, comm)) == OURS


@pytest.mark.parametrize("comm", ["swapper/0", "swapper/1"])
def test_the_idle_task_is_no_ones(comm):
    assert Ours(harness=frozenset({0})).party(Task(0, comm)) == IDLE


def test_a_task_in_one_of_the_runs_containers_is_ours_and_in_another_it_is_a_third_partys():
    ours = Ours(frozenset({CONTAINER}))
    v1 = f"12:pids:/docker/{CONTAINER}\n4:memory:/docker/{CONTAINER}\n0::/\n"
    systemd = f"0::/system.slice/docker-{CONTAINER}.scope\n"
    assert ours.party(Task(300, "ephttpd", 300, v1)) == ours.party(Task(301, "ephttpd", 300, systemd)) == OURS
    assert ours.party(Task(400, "ephttpd", 400, f"0::/system.slice/docker-{OTHER_CONTAINER}.scope\n")) == THIRD_PARTY
    assert ours.party(Task(500, "tokio-rt-worker", 1, "0::/\n")) == THIRD_PARTY
    assert ours.party(Task(501, "ephttpd")) == OURS, "gone, and named as one of our images' programs"
    assert ours.party(Task(502, "tokio-rt-worker")) == THIRD_PARTY, "gone, and not named as ours"


def test_a_gone_thread_is_ours_when_the_capture_saw_it_in_the_harnesss_process(tmp_path):
    """A thread of the harness that has exited (a log reader) is known by the process perf printed with it."""
    ours = Ours(harness=frozenset({1000}))
    assert ours.judge(1042, "invoke", 1000, proc=tmp_path) == OURS
    assert ours.judge(1043, "invoke", 2000, proc=tmp_path) == THIRD_PARTY
    assert ours.judge(1044, "invoke", proc=tmp_path) == THIRD_PARTY, "gone, its process not known"


def test_the_harness_and_every_thread_of_its_processes_are_ours():
    ours = Ours(harness=frozenset({1000, 1005}))
    assert ours.party(Task(1000, "python")) == ours.party(Task(1007, "python", tgid=1005)) == OURS
    assert ours.party(Task(1006, "python", tgid=1006)) == THIRD_PARTY


def test_a_container_id_is_taken_whole_or_refused():
    with pytest.raises(ValueError, match="not full container IDs"):
        Ours(frozenset({CONTAINER[:12]}))


def write_task(proc: Path, pid: int, comm: str, ppid: int, tgid: int | None = None, cgroup: str = "0::/\n") -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True)
    (folder / "comm").write_text(comm + "\n")
    (folder / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 7 3 0 0 20 0 1 0\n")
    (folder / "status").write_text(f"Name:\t{comm}\nTgid:\t{tgid or pid}\nPid:\t{pid}\nPPid:\t{ppid}\n")
    (folder / "cgroup").write_text(cgroup)


def test_a_task_is_read_from_proc_while_it_still_is_that_task(tmp_path):
    write_task(tmp_path, 300, "ephttpd", 1, cgroup=f"0::/system.slice/docker-{CONTAINER}.scope\n")
    write_task(tmp_path, 301, "sh", 1)
    assert Task.read(300, "ephttpd", tmp_path) == Task(300, "ephttpd", 300,
                                                       f"0::/system.slice/docker-{CONTAINER}.scope\n")
    assert Task.read(301, "ephttpd", tmp_path) == Task(301, "ephttpd"), "the pid is another program's now"
    assert Task.read(302, "ephttpd", tmp_path) == Task(302, "ephttpd"), "gone"
    assert Ours(frozenset({CONTAINER})).judge(300, "ephttpd", proc=tmp_path) == OURS


def test_the_harness_is_its_process_and_every_process_below_it(tmp_path):
    """Descendants by each process's parent in stat, whatever its comm holds (spaces, parentheses)."""
    write_task(tmp_path, 1, "init", 0)
    write_task(tmp_path, 100, "python", 1)
    write_task(tmp_path, 101, "perf", 100)
    write_task(tmp_path, 102, "a (b) c", 100)
    write_task(tmp_path, 103, "ephttpd", 102)
    write_task(tmp_path, 200, "tokio-rt-worker", 1)
    (tmp_path / "self").mkdir()
    assert parties.descendants(100, tmp_path) == {100, 101, 102, 103}
    ours = Ours.of_run([CONTAINER], 100, tmp_path)
    assert ours.harness == {100, 101, 102, 103} and ours.container_ids == {CONTAINER}


def test_this_process_and_a_child_it_started_are_ours_and_init_is_not():
    child = subprocess.Popen(["sleep", "30"])
    try:
        ours = Ours.of_run([], os.getpid())
        assert ours.judge(child.pid, "sleep") == ours.judge(os.getpid(), Path("/proc/self/comm").read_text().strip()) \
            == OURS
        init = Path("/proc/1/comm").read_text().strip()
        # In a container PID 1 is the engine's init (docker-init, tini), which is ours; on a host it is not.
        assert ours.judge(1, init) == (OURS if init.split(":")[0] in ENGINE else THIRD_PARTY)
    finally:
        child.kill()
        child.wait()


# ---- switches and stretches --------------------------------------------------------------------------------

def switch(t_ms: float, cpu: int, prev: tuple[str, int], nxt: tuple[str, int], state: str = "S") -> str:
    """One line as `perf script --ns -F cpu,time,trace` prints it."""
    ns = round(t_ms * MS)
    return (f"[{cpu:03d}] {ns // 10**9}.{ns % 10**9:09d}: prev_comm={prev[0]} prev_pid={prev[1]} prev_prio=120 "
            f"prev_state={state} ==> next_comm={nxt[0]} next_pid={nxt[1]} next_prio=120")


def test_a_line_with_the_current_process_gives_the_outgoing_tasks_process():
    line = ("11419/11424 [000] 14897.205432630: prev_comm=epollbench-gues prev_pid=11424 prev_prio=120 "
            "prev_state=R ==> next_comm=swapper/0 next_pid=0 next_prio=120")
    (found,) = switches.parse(line)
    assert (found.prev_tgid, found.prev_pid, found.next_pid, found.cpu) == (11419, 11424, 0, 0)
    assert switches.parse(switch(1, 0, ("a", 5), ("b", 6)))[0].prev_tgid is None


def test_left_out_switches_among_our_programs_and_the_idle_task_are_no_missed_ends():
    """With the quiet filter, ephttpd's switches to and from the idle task are not recorded: the gap from a
    quiet task's switch-in to another quiet task's switch-out is theirs, seen whole; a third party's missed
    exit is still unseen."""
    lines = [switch(0, 0, ("kworker/0:1", 7), ("ephttpd", 300)),
             switch(5, 0, ("swapper/0", 0), ("kdamond.0", 105)),  # ephttpd -> idle was left out
             switch(6, 0, ("kdamond.0", 105), ("openload", 400)),
             switch(9, 0, ("rcu_preempt", 16), ("kworker/0:1", 7))]  # openload -> ... -> rcu: not ours
    quiet = switches.stretches(switches.parse("\n".join(lines)), parties.PROGRAMS)
    assert [(s.comm, s.end_seen) for s in quiet[1:-1]] == [("ephttpd", True), ("kdamond.0", True),
                                                         ("openload", False)]
    unfiltered = switches.stretches(switches.parse("\n".join(lines)))
    assert [s.end_seen for s in unfiltered[1:-1]] == [False, True, False]


def test_the_quiet_filter_names_every_program_on_both_sides():
    text = switches.quiet(["ephttpd", "wrk"])
    assert text == ('(prev_pid != 0 && prev_comm != "ephttpd" && prev_comm != "wrk") || '
                    '(next_pid != 0 && next_comm != "ephttpd" && next_comm != "wrk")')
    args = switches.record_args([0], Path("x"), ["wrk"])
    assert args[:4] == ["-e", switches.EVENT, "--filter", switches.quiet(["wrk"])]


def test_perf_scripts_lines_are_read_with_their_cpu_nanoseconds_and_tasks():
    found = switches.parse(CAPTURE.read_text())
    assert len(found) == 261
    assert found[0] == switches.Switch(CAPTURED_FROM, 0, 0, "swapper/0", 11424, "epollbench-gues")
    assert found[-1].time_ns == CAPTURED_TO
    assert {s.cpu for s in found} == {0, 1}
    assert switches.parse("\n[001] 5.000100: prev_comm=Web Content prev_pid=7 prev_prio=120 prev_state=R+ ==> "
                          "next_comm=swapper/1 next_pid=0 next_prio=120\n\n") == \
        [switches.Switch(5_000_100_000, 1, 7, "Web Content", 0, "swapper/1")]


def test_a_line_that_is_not_a_switch_is_refused():
    with pytest.raises(ValueError, match="line 2"):
        switches.parse(switch(1, 0, ("a", 1), ("b", 2)) + "\nperf: lost 3 chunks\n")


def test_each_cpus_time_is_cut_into_the_stretches_its_tasks_held_open_at_the_captures_edges():
    found = switches.stretches(switches.parse(CAPTURE.read_text()))
    for cpu in (0, 1):
        mine = [s for s in found if s.cpu == cpu]
        assert mine[0].start_ns is None and mine[-1].end_ns is None
        assert all(a.end_ns == b.start_ns for a, b in zip(mine, mine[1:], strict=False)), "no gap, no overlap"
    kdamond = max((s for s in found if s.comm == "kdamond.0"), key=lambda s: s.within(0, 2**62))
    assert (kdamond.cpu, kdamond.pid, kdamond.start_ns, kdamond.end_ns) == (1, 105, 14897_209643439, 14897_211321282)


def test_on_this_host_perf_never_sees_the_host_agents_threads_leave_a_cpu():
    """tokio-rt-worker comes on CPU 1 three times in the capture, and each time the next switch there takes
    another task off: its stretches end unseen (README). Every other task's are seen to the end."""
    found = switches.stretches(switches.parse(CAPTURE.read_text()))
    unseen = [s for s in found if not s.end_seen]
    assert [(s.cpu, s.pid, s.comm) for s in unseen] == [(1, 103, "tokio-rt-worker")] * 3
    assert all(s.end_seen for s in found if s.comm != "tokio-rt-worker")


def test_a_task_perf_did_not_see_leave_holds_a_stretch_whose_end_is_not_seen():
    lines = [switch(0, 0, ("swapper/0", 0), ("agent", 9)), switch(4, 0, ("swapper/0", 0), ("ephttpd", 300)),
             switch(5, 0, ("ephttpd", 300), ("swapper/0", 0))]
    found = switches.stretches(switches.parse("\n".join(lines)))
    assert found == [OnCpu(0, 0, "swapper/0", None, 0), OnCpu(0, 9, "agent", 0, 4 * MS, end_seen=False),
                     OnCpu(0, 300, "ephttpd", 4 * MS, 5 * MS), OnCpu(0, 0, "swapper/0", 5 * MS, None)]


def test_perf_records_the_switches_of_the_cpus_asked_on_the_monotonic_clock(tmp_path):
    assert switches.record_args([0, 2], tmp_path / "s.data") == [
        "-e", "sched:sched_switch", "-C", "0,2", "-k", "CLOCK_MONOTONIC", "--no-buildid", "--no-buildid-cache",
        "--no-bpf-event", "--synth=no", "-o", str(tmp_path / "s.data")]


# ---- interference ------------------------------------------------------------------------------------------

def judge_by_name(pid: int, comm: str, tgid: int | None = None) -> str:
    return IDLE if pid == 0 else OURS if comm in ("ephttpd", "openload") else THIRD_PARTY


def test_a_third_partys_stretch_across_the_windows_edges_counts_only_inside_it():
    """Window 10-20 ms on CPU 0: the neighbour holds 5-12 ms and 18-30 ms, ephttpd between, idle never."""
    stretches = [OnCpu(0, 50, "neighbour", 5 * MS, 12 * MS), OnCpu(0, 300, "ephttpd", 12 * MS, 18 * MS),
                 OnCpu(0, 50, "neighbour", 18 * MS, 30 * MS), OnCpu(1, 60, "other", None, None)]
    found = interference.from_switches(stretches, [0], 10 * MS, 20 * MS, judge_by_name)
    assert (found.window_s, found.third_party_s) == (0.01, 0.004)
    assert found.third_party_share == pytest.approx(0.4)
    assert found.longest == Held("neighbour", 50, 0, 2.0)
    assert found.tasks == {"neighbour": 0.004}
    assert (found.interfered, found.method, found.cpus, found.unattributed_s) == (True, "sched_switch", [0], 0.0)


def test_the_flag_holds_over_two_percent_or_over_one_millisecond_at_a_stretch_and_not_at_them():
    """100 ms on one CPU: 2 ms of third parties in 1 ms stretches is at both thresholds, not over them."""
    def run(*held_ms: float) -> interference.Interference:
        stretches, t = [], 0.0
        for ms in held_ms:
            stretches += [OnCpu(0, 50, "neighbour", round(t * MS), round((t + ms) * MS)),
                          OnCpu(0, 300, "ephttpd", round((t + ms) * MS), round((t + 10) * MS))]
            t += 10
        stretches.append(OnCpu(0, 300, "ephttpd", round(t * MS), None))
        return interference.from_switches(stretches, [0], 0, 100 * MS, judge_by_name)

    assert run(1.0, 1.0).interfered is False
    assert run(1.0, 1.0, 0.5).interfered is True, "2.5 % of the CPU"
    assert run(1.2).interfered is True, "one stretch of 1.2 ms"
    assert run().interfered is False and run().longest is None and run().tasks == {}
    assert (interference.THIRD_PARTY_SHARE, interference.THIRD_PARTY_STRETCH_MS) == (0.02, 1.0)


def test_a_stretch_whose_end_perf_did_not_see_is_unattributed_and_leaves_the_flag_undecided_when_it_could_matter():
    base = [OnCpu(0, 300, "ephttpd", None, 50 * MS), OnCpu(0, 300, "ephttpd", 53 * MS, None)]
    unseen = interference.from_switches([*base, OnCpu(0, 9, "agent", 50 * MS, 53 * MS, end_seen=False)], [0],
                                        0, 100 * MS, judge_by_name)
    assert (unseen.interfered, unseen.third_party_s, unseen.unattributed_s) == (None, 0.0, 0.003)
    assert unseen.unseen_exits == {"agent": 0.003} and unseen.longest_unseen == Held("agent", 9, 0, 3.0)
    short = [OnCpu(0, 300, "ephttpd", None, 50 * MS), OnCpu(0, 9, "agent", 50 * MS, 50 * MS + 500_000, False),
             OnCpu(0, 300, "ephttpd", 50 * MS + 500_000, None)]
    assert interference.from_switches(short, [0], 0, 100 * MS, judge_by_name).interfered is False


def test_a_cpu_without_a_switch_is_unattributed_for_the_whole_window():
    found = interference.from_switches([OnCpu(0, 300, "ephttpd", None, None)], [0, 1], 0, 10 * MS, judge_by_name)
    assert (found.unattributed_s, found.third_party_s, found.interfered) == (0.01, 0.0, None)


def test_the_captures_third_parties_with_their_share_longest_stretch_and_names():
    """Over the fixture's span, the capturing process and the engine ours (parties.Ours, no /proc to read: the
    tasks are long gone): CPU 0 is the guest's; on CPU 1 kdamond.0's 1.68 ms is the longest stretch seen whole,
    and tokio-rt-worker's three are bounds (README)."""
    stretches = switches.stretches(switches.parse(CAPTURE.read_text()))
    ours = Ours(harness=frozenset({CAPTURING_PROCESS}))
    judge = lambda pid, comm, tgid: ours.judge(pid, comm, tgid, DATA / "no-proc")  # noqa: E731
    cpu0 = interference.from_switches(stretches, [0], CAPTURED_FROM, CAPTURED_TO, judge)
    assert set(cpu0.tasks or {}) == {"epollbench-gues"} and cpu0.third_party_share > 0.98
    cpu1 = interference.from_switches(stretches, [1], CAPTURED_FROM, CAPTURED_TO, judge)
    assert cpu1.longest == Held("kdamond.0", 105, 1, 1.677843)
    assert len(cpu1.holds) == interference.HOLDS and cpu1.holds[0] == cpu1.longest
    assert [h.ms for h in cpu1.holds] == sorted((h.ms for h in cpu1.holds), reverse=True)
    assert list(cpu1.tasks or {})[:2] == ["epollbench-gues", "kdamond.0"]
    assert "containerd" not in (cpu1.tasks or {}) and "swapper/1" not in (cpu1.tasks or {})
    assert cpu1.third_party_s == pytest.approx(sum((cpu1.tasks or {}).values()))
    assert cpu1.unseen_exits == {"tokio-rt-worker": pytest.approx(0.005719027)}
    assert cpu1.longest_unseen == Held("tokio-rt-worker", 103, 1, 3.139401)
    assert cpu1.interfered is True
    both = interference.from_switches(stretches, [0, 1], CAPTURED_FROM, CAPTURED_TO, judge)
    assert both.third_party_s == pytest.approx(cpu0.third_party_s + cpu1.third_party_s)
    assert both.to_json()["longest"] == {"comm": "epollbench-gues", "pid": 11424, "cpu": 0, "ms": 11.966381}


# ---- /proc/stat, where perf cannot record --------------------------------------------------------------------

PROC_STAT = """cpu  100 0 50 1000 0 0 0 0 0 0
cpu0 60 0 30 500 0 0 0 0 0 0
cpu1 40 0 20 500 0 0 0 0 0 0
intr 1
"""


def test_a_containers_cpu_time_is_read_from_its_cgroup_on_v1_and_v2(tmp_path):
    v2 = tmp_path / "v2" / "system.slice" / f"docker-{CONTAINER}.scope"
    v2.mkdir(parents=True)
    (v2 / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 500000\nsystem_usec 2000000\n")
    v1 = tmp_path / "v1" / "cpuacct" / "docker" / CONTAINER
    v1.mkdir(parents=True)
    (v1 / "cpuacct.usage").write_text("1250000000\n")
    assert stat_fallback.container_usage_s(CONTAINER, tmp_path / "v2") == 2.5
    assert stat_fallback.container_usage_s(CONTAINER[:12], tmp_path / "v1") == 1.25
    with pytest.raises(stat_fallback.Unreadable, match="container 7a7a7a7a7a7a"):
        stat_fallback.container_usage_s(OTHER_CONTAINER, tmp_path / "v1")


def test_a_processs_cpu_time_is_its_user_and_system_time(tmp_path):
    write_task(tmp_path, 300, "a (b) c", 1)  # utime 7, stime 3 ticks
    assert stat_fallback.process_usage_s(300, tmp_path) == 10 / stat_fallback.USER_HZ
    with pytest.raises(stat_fallback.Unreadable, match="process 301"):
        stat_fallback.process_usage_s(301, tmp_path)


def test_a_reading_takes_the_cpus_busy_time_and_our_pinned_tasks(tmp_path):
    (tmp_path / "stat").write_text(PROC_STAT)
    write_task(tmp_path, 300, "ephttpd", 1)
    reading = stat_fallback.Reading.take([0], pids=[300], proc=tmp_path)
    hz = stat_fallback.USER_HZ
    assert reading.busy_s == {0: 90 / hz} and reading.ours_s == 10 / hz
    with pytest.raises(stat_fallback.Unreadable, match="CPU 5"):
        stat_fallback.Reading.take([5], proc=tmp_path)


def test_real_readings_give_the_busy_time_of_each_cpu(tmp_path):
    """tests/data/procstat: CPU 0 busy 29 jiffies, CPU 1 80, in the second between the readings."""
    readings = []
    for name in ("before.txt", "after.txt"):
        (tmp_path / "stat").write_text((DATA / "procstat" / name).read_text())
        readings.append(dataclasses.replace(stat_fallback.Reading.take([0, 1], proc=tmp_path),
                                            at_ns=len(readings) * 10**9))
    found = stat_fallback.interference(*readings, "no perf")
    hz = stat_fallback.USER_HZ
    assert found.third_party_s == pytest.approx((29 + 80) / hz)
    assert found.third_party_share == pytest.approx((29 + 80) / hz / 2)
    alone = stat_fallback.interference(*(dataclasses.replace(r, busy_s={0: r.busy_s[0]}) for r in readings), "")
    assert alone.third_party_share == pytest.approx(29 / hz)


def test_the_fallback_gives_the_share_not_ours_and_says_why_the_stretch_is_unavailable():
    """2 s on CPUs 0 and 1: 1.5 s busy, 1.4 s of it ours: 0.1 s of third parties, 2.5 %."""
    before = stat_fallback.Reading(0, {0: 10.0, 1: 20.0}, 5.0)
    after = stat_fallback.Reading(2 * 10**9, {0: 11.0, 1: 20.5}, 6.4)
    found = stat_fallback.interference(before, after, "perf is not installed")
    assert (found.method, found.cpus, found.window_s) == ("proc_stat", [0, 1], 2.0)
    assert found.third_party_s == pytest.approx(0.1) and found.third_party_share == pytest.approx(0.025)
    assert (found.interfered, found.longest, found.tasks) == (True, None, None)
    assert found.stretch_unavailable == "perf is not installed"
    quiet = stat_fallback.interference(before, stat_fallback.Reading(2 * 10**9, {0: 11.0, 1: 20.5}, 6.48), "why")
    assert quiet.third_party_share == pytest.approx(0.005) and quiet.interfered is None, "a stretch may hide"
    ours_more = stat_fallback.interference(before, stat_fallback.Reading(2 * 10**9, {0: 11.0, 1: 20.5}, 7.0), "")
    assert ours_more.third_party_s == 0.0, "tick accounting against exact usage: never below nothing"


def test_two_readings_of_the_same_cpus_one_after_the_other_are_needed():
    with pytest.raises(ValueError):
        stat_fallback.interference(stat_fallback.Reading(5, {0: 1.0}, 0), stat_fallback.Reading(5, {0: 1.0}, 0), "")
    with pytest.raises(ValueError):
        stat_fallback.interference(stat_fallback.Reading(0, {0: 1.0}, 0), stat_fallback.Reading(9, {1: 1.0}, 0), "")


# ---- a real capture ----------------------------------------------------------------------------------------

# A third party: on CPU 0 under SCHED_FIFO (nothing of a busy host's cuts its stretch), named spinner, it
# sleeps 0.3 s, then spins 30 ms.
SPIN = """import os, time
os.sched_setaffinity(0, {0})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
open("/proc/self/comm", "w").write("spinner")
time.sleep(0.3)
end = time.monotonic() + 0.03
while time.monotonic() < end:
    pass
"""


def captured_on_cpu0(tmp_path: Path, program: str, linger_s: float = 0.0) -> tuple[switches.Capture, list, int]:
    """A real capture of CPU 0 (perf on the other CPUs) while the Python program runs: the capture, its
    stretches and the program's exit code; a skip (a failure in CI) where perf cannot record here."""
    perf_path, why = perf.ensure(install=False)
    why = why or switches.check(perf_path or "perf")
    if perf_path is None or why:
        tools.missing(f"perf cannot record the switches here: {why}")
    cpus = os.sched_getaffinity(0)
    if 0 not in cpus or len(cpus) < 2:
        pytest.skip("needs CPU 0 and another CPU for perf")
    capture = switches.Capture.start(perf_path, [0], tmp_path, away=cpus - {0})
    try:
        capture.open()
        code = subprocess.run([sys.executable, "-c", program], timeout=30).returncode
        time.sleep(linger_s)
        capture.close()
    finally:
        stretches = capture.finish(perf_path)
    return capture, stretches, code


@pytest.mark.needs_host("records sched:sched_switch on a CPU and runs a SCHED_FIFO busy loop there")
def test_a_busy_loop_pinned_to_the_cpu_is_a_third_party_holding_it_for_its_30_ms(tmp_path):
    """A real capture of CPU 0 (perf on the other CPUs) while the spinner runs: a third party (nothing is ours
    here: no harness, no containers), its 30 ms there counted, the CPU interfered."""
    capture, stretches, code = captured_on_cpu0(tmp_path, SPIN, linger_s=0.05)
    assert code == 0
    found = interference.from_switches(stretches, [0], capture.start_ns, capture.end_ns, Ours().judge)
    assert found.interfered is True
    # The kernel's own real-time threads (migration/0) may cut the 30 ms in two: the spinner's time is whole.
    assert (found.tasks or {}).get("spinner", 0) >= 0.025
    assert max((h.ms for h in found.holds if h.comm == "spinner"), default=0) >= 10


NAMED_SLEEPER = """
import ctypes, os, time
ctypes.CDLL(None).prctl(15, b"ephttpd", 0, 0, 0)  # PR_SET_NAME: the comm of one of our programs
os.sched_setaffinity(0, {0})
for _ in range(300):
    time.sleep(0.001)
"""


@pytest.mark.needs_host("records sched:sched_switch on a CPU with perf's filter")
def test_a_capture_leaves_out_our_programs_switches_to_and_from_the_idle_task(tmp_path):
    """A task named ephttpd that sleeps 1 ms 300 times on CPU 0 switches with the idle task some 600 times:
    the capture's filter keeps none of those (its switches with other tasks stay); the stretches do not take
    its gaps for missed exits."""
    capture, stretches, code = captured_on_cpu0(tmp_path, NAMED_SLEEPER)
    assert code == 0
    recorded = switches.parse(switches.script(perf.find() or "perf", capture.data))
    quiet = [s for s in recorded if {s.prev_comm, s.next_comm} <= {"ephttpd", "swapper/0"}]
    assert recorded and not quiet, f"{len(quiet)} switches between the sleeper and the idle task were recorded"
    assert not [s for s in stretches if s.comm == "ephttpd" and s.start_ns and s.end_ns and not s.end_seen]
