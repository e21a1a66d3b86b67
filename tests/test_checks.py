import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment.host import checks
from experiment.host.checks import CpuJiffies

#       user nice system idle iowait irq softirq steal guest guest_nice
STAT_A = """cpu  1000 10 500 8000 100 5 20 0 300 0
cpu0 600 10 200 4000 50 5 10 0 300 0
cpu1 400 0 300 4000 50 0 10 0 0 0
intr 12345 0 0
ctxt 999
"""
STAT_B = """cpu  1100 10 600 8200 100 5 40 0 300 0
cpu0 700 10 300 4000 50 5 30 0 300 0
cpu1 400 0 300 4200 50 0 10 0 0 0
"""
CV1_CPU = Path("/sys/fs/cgroup/cpu")


def test_proc_stat_busy_and_total_jiffies():
    stat = checks.parse_proc_stat(STAT_A)
    assert set(stat) == {"cpu", "cpu0", "cpu1"}
    # guest time is already inside user: not counted twice
    assert stat["cpu0"] == CpuJiffies(busy=600 + 10 + 200 + 5 + 10, total=600 + 10 + 200 + 5 + 10 + 4000 + 50)
    assert stat["cpu1"] == CpuJiffies(busy=710, total=4760)
    with pytest.raises(ValueError, match="no 'cpu' line"):
        checks.parse_proc_stat("intr 1 2 3\n")


def test_busy_share_between_two_readings():
    busy = checks.busy_pct(checks.parse_proc_stat(STAT_A), checks.parse_proc_stat(STAT_B))
    assert busy == {"cpu": round(100 * 220 / 420, 1), "cpu0": 100.0, "cpu1": 0.0}
    same = checks.parse_proc_stat(STAT_A)
    assert checks.busy_pct(same, same)["cpu0"] is None


def test_other_load_judges_the_quiet_window_of_the_chosen_cpus():
    busy = {"cpu": 50.0, "cpu0": 95.0, "cpu1": 5.0}
    assert checks.other_load(busy)
    assert checks.other_load(busy, cpus=[0])
    assert not checks.other_load(busy, cpus=[1])
    assert not checks.other_load({"cpu": None, "cpu0": None})
    assert checks.other_load({"cpu1": 25.0}, threshold_pct=20) and not checks.other_load({"cpu1": 15.0})


def test_loadavg():
    assert checks.parse_loadavg("0.48 0.25 0.11 2/113 8394\n") == {
        "1min": 0.48, "5min": 0.25, "15min": 0.11, "runnable": 2, "threads": 113}


def test_a_real_load_snapshot_of_this_machine():
    before = checks.LoadSnapshot.take(window_s=0.2)
    after = checks.LoadSnapshot.take(window_s=0.2)
    cpus = {f"cpu{n}" for n in range(os.cpu_count())}
    assert cpus | {"cpu"} == set(before.busy_window_pct)
    assert all(v is None or 0.0 <= v <= 100.0 for v in before.busy_window_pct.values())
    assert isinstance(before.other_load(), bool)
    assert before.loadavg["threads"] >= 1
    during = before.busy_until(after)
    assert set(during) == cpus | {"cpu"}
    result = before.finish()
    assert set(result["flags"]) == {"other_load"}
    assert result["checks"]["load_before"] == before.to_dict()
    assert set(result["checks"]["cpu_busy_pct_during"]) == cpus | {"cpu"}


def test_a_busy_cpu_before_the_point_is_other_load():
    cpu = sorted(os.sched_getaffinity(0))[0]
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\n"
                                "while time.time() < end: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {cpu})
        time.sleep(0.2)
        snapshot = checks.LoadSnapshot.take(cpus=[cpu], window_s=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert snapshot.busy_window_pct[f"cpu{cpu}"] > checks.OTHER_LOAD_BUSY_PCT
    assert snapshot.other_load()


def test_client_saturation_is_judged_against_what_the_client_can_use():
    assert checks.client_saturated(95.0, 1)
    assert not checks.client_saturated(85.0, 1)
    assert checks.client_saturated(95.0, 2)  # single-threaded: one CPU is all it can use
    assert checks.client_saturated(46.0, 0.5)  # docker --cpus 0.5
    assert not checks.client_saturated(170.0, 2, threads=4)
    assert checks.client_saturated(185.0, 2, threads=4)
    with pytest.raises(ValueError):
        checks.client_saturated(50.0, 0)


def test_server_saturation_from_its_cpu_time():
    assert checks.server_saturated(9.5, 10.0, 1)
    assert not checks.server_saturated(2.8, 10.0, 1)
    assert checks.server_saturated(18.5, 10.0, 2, workers=2)
    assert not checks.server_saturated(9.5, 10.0, 2, workers=2)
    result = checks.bottleneck_check(80.0, 1, server_cpu_s=2.8, duration_s=10.0, server_cpus=1)
    assert result["flags"] == {"client_saturated": False, "server_saturated": False}
    assert result["checks"]["server_cpu_pct"] == 28.0


def test_cpu_stat_v1_and_v2():
    v1 = "nr_periods 22\nnr_throttled 20\nthrottled_time 1594226069\nnr_bursts 0\nburst_time 0\n"
    assert checks.parse_cpu_stat(v1) == {"nr_periods": 22, "nr_throttled": 20, "throttled_ns": 1594226069}
    v2 = ("usage_usec 8000\nuser_usec 5000\nsystem_usec 3000\nnr_periods 10\nnr_throttled 3\n"
          "throttled_usec 1500\n")
    assert checks.parse_cpu_stat(v2) == {"nr_periods": 10, "nr_throttled": 3, "throttled_ns": 1_500_000}
    with pytest.raises(ValueError):
        checks.parse_cpu_stat("usage_usec 1\n")


def test_container_cgroup_paths(tmp_path):
    cid = "a2269c8c1f6d" + "0" * 52
    v1 = tmp_path / "v1" / "cpu" / "docker" / cid / "cpu.stat"
    v2 = tmp_path / "v2" / "system.slice" / f"docker-{cid}.scope" / "cpu.stat"
    for path in (v1, v2):
        path.parent.mkdir(parents=True)
        path.write_text("nr_periods 0\nnr_throttled 0\nthrottled_time 0\n")
    assert checks.cgroup_cpu_stat(cid, tmp_path / "v1") == v1
    assert checks.cgroup_cpu_stat(cid[:12], tmp_path / "v1") == v1
    assert checks.cgroup_cpu_stat(cid, tmp_path / "v2") == v2
    assert checks.cgroup_cpu_stat("ffff", tmp_path / "v1") is None


def test_throttle_snapshot_reports_the_difference(tmp_path):
    server, client = tmp_path / "server.stat", tmp_path / "client.stat"
    server.write_text("nr_periods 10\nnr_throttled 0\nthrottled_time 0\n")
    client.write_text("nr_periods 10\nnr_throttled 2\nthrottled_time 500\n")
    snapshot = checks.ThrottleSnapshot.take({"server": server, "client": client, "gone": None})
    server.write_text("nr_periods 30\nnr_throttled 0\nthrottled_time 0\n")
    client.write_text("nr_periods 30\nnr_throttled 7\nthrottled_time 9500\n")
    result = snapshot.finish()
    assert result["flags"] == {"cpu_throttled": True}
    assert result["checks"]["cpu_throttling"] == {
        "server": {"nr_periods": 20, "nr_throttled": 0, "throttled_ns": 0},
        "client": {"nr_periods": 20, "nr_throttled": 5, "throttled_ns": 9000},
        "gone": None}
    assert checks.ThrottleSnapshot.take({}).finish()["flags"] == {"cpu_throttled": None}


@pytest.mark.needs_host("writes cgroup files")
@pytest.mark.skipif(not (CV1_CPU / "cpu.cfs_quota_us").exists(), reason="needs the cgroup v1 cpu controller")
def test_a_real_cfs_quota_shows_as_throttling():
    group = CV1_CPU / f"epollbench-test-{os.getpid()}"
    group.mkdir()
    spinner = None
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("10000")  # 10 % of one CPU
        spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\n"
                                    "while time.time() < end: pass"])
        (group / "cgroup.procs").write_text(str(spinner.pid))
        snapshot = checks.ThrottleSnapshot.take({"spinner": group / "cpu.stat"})
        deadline = time.monotonic() + 10
        while checks.parse_cpu_stat((group / "cpu.stat").read_text())["nr_throttled"] <= \
                snapshot.start["spinner"]["nr_throttled"] and time.monotonic() < deadline:
            time.sleep(0.1)
        result = snapshot.finish()
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
        group.rmdir()
    assert result["flags"]["cpu_throttled"] is True
    assert result["checks"]["cpu_throttling"]["spinner"]["nr_throttled"] > 0
    assert result["checks"]["cpu_throttling"]["spinner"]["throttled_ns"] > 0


def test_cpu_frequencies_from_cpufreq(tmp_path):
    for cpu, khz in (("cpu0", "2400000"), ("cpu1", "1200000")):
        cpufreq = tmp_path / cpu / "cpufreq"
        cpufreq.mkdir(parents=True)
        (cpufreq / "scaling_cur_freq").write_text(khz + "\n")
        (cpufreq / "cpuinfo_max_freq").write_text("3000000\n")
        (cpufreq / "scaling_governor").write_text("powersave\n")
    freqs = checks.read_cpu_frequencies(tmp_path)
    assert freqs == {"cpu0": {"mhz": 2400.0, "max_mhz": 3000.0, "governor": "powersave"},
                     "cpu1": {"mhz": 1200.0, "max_mhz": 3000.0, "governor": "powersave"}}
    slower = {"cpu0": dict(freqs["cpu0"], mhz=2000.0), "cpu1": freqs["cpu1"]}
    assert checks.frequency_changed(freqs, slower)
    assert not checks.frequency_changed(freqs, freqs)
    assert checks.frequency_changed(None, freqs) is None
    assert checks.read_cpu_frequencies(tmp_path / "nothing") is None


def test_this_machines_cpu_frequency_is_read_or_none():
    freqs = checks.read_cpu_frequencies()
    assert freqs is None or all(f["mhz"] > 0 and f["max_mhz"] > 0 for f in freqs.values())


def test_point_checks_on_this_machine_merge_every_flag():
    point = checks.PointChecks.take(cpus=[0], window_s=0.1)
    result = point.finish(client_cpu_pct=80.0, client_cpus=1, server_cpu_s=1.0, duration_s=2.0, server_cpus=1)
    assert set(result["flags"]) == {"other_load", "cpu_throttled", "cpu_frequency_changed",
                                    "client_saturated", "server_saturated"}
    assert result["flags"]["cpu_throttled"] is None  # no containers named
    assert result["flags"]["server_saturated"] is False
    assert {"load_before", "cpu_busy_pct_during", "cpu_throttling", "cpu_frequency_start",
            "client_cpu_pct", "server_cpu_pct"} <= set(result["checks"])


def test_merge():
    assert checks.merge({"flags": {"a": True}, "checks": {"x": 1}}, {"flags": {"b": None}}) == {
        "flags": {"a": True, "b": None}, "checks": {"x": 1}}
