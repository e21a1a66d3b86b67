import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from experiment import preflight
from experiment.errors import UserError
from experiment.preflight import Finding

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

# A host with every limit high enough for 60000 dead connections over 4 source addresses.
ROOMY = {"net.core.somaxconn": 4096, "net.ipv4.tcp_max_syn_backlog": 4096,
         "net.ipv4.ip_local_port_range": [32768, 60999], "net.netfilter.nf_conntrack_max": 262144,
         "fs.file-max": 2466183, "fs.nr_open": 1048576, "net.ipv4.tcp_tw_reuse": 2,
         "fd_hard_limit": 1048576}


def settings(**changes) -> dict:
    return dict(ROOMY, **{k.replace("__", "."): v for k, v in changes.items()})


def by_setting(findings: list[Finding]) -> dict[str, Finding]:
    return {f.setting: f for f in findings}


def fake_proc_sys(root: Path, values: dict[str, str]) -> Path:
    for name, text in values.items():
        path = root / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


# ---- reading ----------------------------------------------------------------------------------------------

def test_read_host_settings_agrees_with_sysctl_and_ulimit():
    read = preflight.read_host_settings()
    for name in preflight.SYSCTLS:
        proc = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True)
        if proc.returncode != 0:
            assert read[name] is None
            continue
        fields = [int(x) for x in proc.stdout.split()]
        assert read[name] == (fields[0] if len(fields) == 1 else fields), name
    hard = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()
    assert read["fd_hard_limit"] == (None if hard == "unlimited" else int(hard))


def test_a_missing_sysctl_reads_as_none(tmp_path):
    root = fake_proc_sys(tmp_path, {"net.core.somaxconn": "4096", "net.ipv4.ip_local_port_range": "1024\t65535"})
    read = preflight.read_host_settings(root)
    assert read["net.netfilter.nf_conntrack_max"] is None
    assert read["net.core.somaxconn"] == 4096
    assert read["net.ipv4.ip_local_port_range"] == [1024, 65535]


# ---- assessing --------------------------------------------------------------------------------------------

def test_a_roomy_host_has_no_findings():
    assert preflight.assess(ROOMY, 60000, 100, source_addresses=4) == []


def test_a_short_listen_queue_is_found_with_its_fix():
    found = by_setting(preflight.assess(settings(net__core__somaxconn=128), 1000, 100, 1))
    assert list(found) == ["net.core.somaxconn"]
    f = found["net.core.somaxconn"]
    assert (f.value, f.needed, f.tunable) == (128, preflight.SERVER_BACKLOG, True)
    assert f.fix == "sysctl -w net.core.somaxconn=2048"
    assert "2048" in f.why and "somaxconn" in f.describe()


def test_a_small_conntrack_table_is_found_and_an_absent_one_is_not():
    found = by_setting(preflight.assess(settings(net__netfilter__nf_conntrack_max=65536), 60000, 100, 4))
    assert found["net.netfilter.nf_conntrack_max"].needed == 2 * 60100
    assert "dropping packet" in found["net.netfilter.nf_conntrack_max"].why
    assert preflight.assess(settings(net__netfilter__nf_conntrack_max=None), 60000, 100, 4) == []


def test_too_few_ephemeral_ports_per_source_address_widens_the_range():
    f = by_setting(preflight.assess(ROOMY, 60000, 100, source_addresses=1))["net.ipv4.ip_local_port_range"]
    low, high = f.needed
    assert high - low + 1 >= 60100
    assert low <= 32768 and high >= 60999 and low >= preflight.LOWEST_EPHEMERAL_PORT
    assert low % 2 != high % 2
    assert f.tunable and f.fix == f"sysctl -w net.ipv4.ip_local_port_range='{low} {high}'"
    # Enough room below the current range: the top stays where it is.
    f = by_setting(preflight.assess(ROOMY, 40000, 100, 1))["net.ipv4.ip_local_port_range"]
    assert f.needed[1] == 60999 and f.needed[1] - f.needed[0] + 1 >= 40100


def test_more_dead_connections_than_ports_needs_more_source_addresses():
    f = by_setting(preflight.assess(ROOMY, 200000, 100, 1))["net.ipv4.ip_local_port_range"]
    assert not f.tunable
    assert "at least 4 source addresses" in f.fix


def test_without_time_wait_reuse_a_point_also_needs_the_last_points_ports():
    found = by_setting(preflight.assess(settings(net__ipv4__tcp_tw_reuse=0), 30000, 100, 2))
    assert found["net.ipv4.tcp_tw_reuse"].needed == 2
    assert found["net.ipv4.ip_local_port_range"].why.endswith("need 30200 ports, the range has 28232")
    assert "net.ipv4.ip_local_port_range" not in by_setting(preflight.assess(ROOMY, 30000, 100, 2))


def test_an_fd_hard_limit_below_the_plan_is_not_tunable_and_says_what_fits():
    found = by_setting(preflight.assess(settings(fd_hard_limit=20000), 60000, 100, 4))
    f = found["fd_hard_limit"]
    most = 20000 - 100 - preflight.FD_SLACK
    assert (f.tunable, f.needed) == (False, 60000 + 100 + preflight.FD_SLACK)
    assert f"at most {most} dead connections" in f.why and "the sweep adapts" in f.fix
    assert preflight.max_dead_connections(settings(fd_hard_limit=20000), 100) == most
    assert preflight.assess(settings(fd_hard_limit=20000), most, 100, 4) == []


# ---- tuning -----------------------------------------------------------------------------------------------

def test_tune_writes_the_fake_tree_never_lowers_and_restores(tmp_path):
    root = fake_proc_sys(tmp_path, {"net.core.somaxconn": "128", "net.ipv4.ip_local_port_range": "32768\t60999",
                                    "net.ipv4.tcp_tw_reuse": "1"})
    findings = [Finding("net.core.somaxconn", 128, 2048, "", ""),
                Finding("net.ipv4.ip_local_port_range", [32768, 60999], [5436, 65535], "", ""),
                Finding("net.ipv4.tcp_tw_reuse", 0, 2, "", ""),  # now 1: enough already
                Finding("fd_hard_limit", 20000, 60164, "", "", tunable=False)]
    with preflight.tune(findings, proc_sys=root) as tuning:
        assert (root / "net/core/somaxconn").read_text() == "2048"
        assert (root / "net/ipv4/ip_local_port_range").read_text() == "5436 65535"
        assert (root / "net/ipv4/tcp_tw_reuse").read_text() == "1\n"
        assert [c["setting"] for c in tuning.changed] == ["net.core.somaxconn", "net.ipv4.ip_local_port_range"]
        assert tuning.left_alone == [{"setting": "net.ipv4.tcp_tw_reuse", "value": 1, "needed": 2}]
    assert (root / "net/core/somaxconn").read_text() == "128"
    assert (root / "net/ipv4/ip_local_port_range").read_text() == "32768\t60999"


def test_restore_leaves_a_value_someone_else_changed_since(tmp_path):
    root = fake_proc_sys(tmp_path, {"net.core.somaxconn": "128"})
    tuning = preflight.tune([Finding("net.core.somaxconn", 128, 2048, "", "")], proc_sys=root)
    (root / "net/core/somaxconn").write_text("8192")
    not_restored = tuning.restore()
    assert [(c["setting"], c["found"]) for c in not_restored] == [("net.core.somaxconn", 8192)]
    assert (root / "net/core/somaxconn").read_text() == "8192"
    assert tuning.restore() == []


def test_a_failed_write_undoes_the_writes_before_it(tmp_path):
    root = fake_proc_sys(tmp_path, {"net.core.somaxconn": "128"})
    (root / "net/ipv4/tcp_max_syn_backlog").mkdir(parents=True)  # unreadable and unwritable as a value
    findings = [Finding("net.core.somaxconn", 128, 2048, "", ""),
                Finding("net.ipv4.tcp_max_syn_backlog", 128, 2048, "", "")]
    with pytest.raises(UserError, match="could not write .*tcp_max_syn_backlog"):
        preflight.tune(findings, proc_sys=root)
    assert (root / "net/core/somaxconn").read_text().strip() == "128"


@pytest.mark.skipif(os.geteuid() != 0, reason="writes /proc/sys: needs root")
@pytest.mark.parametrize("interruption", [None, RuntimeError, KeyboardInterrupt])
def test_tune_raises_the_real_somaxconn_and_restores_it(interruption):
    original = SOMAXCONN.read_text()
    value = int(original)
    expected = pytest.raises(interruption) if interruption else contextlib.nullcontext()
    try:
        with expected, preflight.tune([Finding("net.core.somaxconn", value, value + 1, "test", "")]) as tuning:
            assert int(SOMAXCONN.read_text()) == value + 1
            assert tuning.changed[0]["old"] == value and tuning.changed[0]["new"] == value + 1
            if interruption:
                raise interruption("interrupted")
        assert SOMAXCONN.read_text() == original
    finally:
        if SOMAXCONN.read_text() != original:
            SOMAXCONN.write_text(original)


@pytest.mark.skipif(os.geteuid() != 0, reason="writes /proc/sys: needs root")
def test_tune_never_lowers_the_real_somaxconn():
    original = SOMAXCONN.read_text()
    value = int(original)
    with preflight.tune([Finding("net.core.somaxconn", value, value - 1, "test", "")]) as tuning:
        assert SOMAXCONN.read_text() == original
        assert tuning.changed == [] and tuning.left_alone[0]["value"] == value


def test_tune_as_a_user_says_what_to_run(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root.*sysctl -w net.core.somaxconn=2048"):
        preflight.tune([Finding("net.core.somaxconn", 128, 2048, "", "sysctl -w net.core.somaxconn=2048")])
    assert preflight.tune([Finding("fd_hard_limit", 1, 2, "", "", tunable=False)]).changed == []

