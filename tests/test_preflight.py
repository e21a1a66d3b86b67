import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from experiment import catalog
from experiment.errors import UserError
from experiment.host import conntrack, preflight
from experiment.host.preflight import Finding
from experiment.host.tuning import Tuning, tune

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

# A host with every limit high enough for 60000 dead connections over 4 source addresses.
ROOMY = {"net.core.somaxconn": 4096, "net.ipv4.tcp_max_syn_backlog": 4096,
         "net.ipv4.ip_local_port_range": [32768, 60999], "net.netfilter.nf_conntrack_max": 262144,
         "fs.file-max": 2466183, "fs.nr_open": 1048576, "net.ipv4.tcp_tw_reuse": 2,
         "fs.epoll.max_user_watches": 5491489, "fs.pipe-max-size": 1048576, "mem_available_bytes": 16 << 30,
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
    assert preflight.assess(ROOMY, 60000, 100, source_addresses=4, per_process_dead=19500,
                            holder_pipe_bytes=catalog.holder_pipe_bytes(20000)) == []


def test_holders_on_a_capped_host_need_epoll_watches_for_all_a_pipe_each_and_memory_but_no_more_fds():
    capped = settings(fd_hard_limit=20000, fs__epoll__max_user_watches=50000,
                      mem_available_bytes=512 << 20)
    # The holders' channel: an 8-byte message per connection a holder may hold, and a page (~164 KB here).
    pipe = catalog.holder_pipe_bytes(20000)
    assert pipe == (20000 - 16) * 8 + 4096
    capped["fs.pipe-max-size"] = 65536
    found = by_setting(preflight.assess(capped, 60000, 100, source_addresses=6, per_process_dead=19500,
                                        holder_pipe_bytes=pipe))
    assert set(found) == {"fs.epoll.max_user_watches", "fs.pipe-max-size", "mem_available_bytes"}
    assert found["fs.epoll.max_user_watches"].needed == 60000 + 100 + preflight.EPOLL_WATCH_SLACK
    assert found["fs.epoll.max_user_watches"].tunable and found["fs.pipe-max-size"].needed == pipe
    memory = found["mem_available_bytes"]
    assert (memory.needed, memory.tunable) == (60100 * preflight.BYTES_PER_CONNECTION, False)
    # Without holders the pipe is no finding, and the server itself would need the fds.
    alone = by_setting(preflight.assess(capped, 60000, 100, source_addresses=6))
    assert "fs.pipe-max-size" not in alone and "fd_hard_limit" in alone


def test_deadconn_takes_a_source_address_per_share_of_the_port_range():
    ports = settings()["net.ipv4.ip_local_port_range"]
    share = int(preflight.DEADCONN_PORT_SHARE * (ports[1] - ports[0] + 1))
    assert preflight.source_addresses_needed(settings(), 60000) == -(-60000 // share) == 6
    assert preflight.source_addresses_needed(settings(), share) == 1
    assert preflight.source_addresses_needed(settings(), 0) == 1


def test_memory_available_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683664 kB\nMemAvailable:   23672068 kB\n")
    assert preflight.read_mem_available(meminfo) == 23672068 * 1024
    assert preflight.read_mem_available(tmp_path / "absent") is None
    assert preflight.read_host_settings()["mem_available_bytes"] > 0


def test_a_short_listen_queue_is_found_with_its_fix():
    found = by_setting(preflight.assess(settings(net__core__somaxconn=128), 1000, 100, 1))
    assert list(found) == ["net.core.somaxconn"]
    f = found["net.core.somaxconn"]
    assert (f.value, f.needed, f.tunable) == (128, catalog.LISTEN_BACKLOG, True)
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
    most = 20000 - 100 - catalog.SERVER_FD_OVERHEAD
    assert (f.tunable, f.needed) == (False, 60000 + 100 + catalog.SERVER_FD_OVERHEAD)
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
    with tune(findings, proc_sys=root) as tuning:
        assert (root / "net/core/somaxconn").read_text() == "2048"
        assert (root / "net/ipv4/ip_local_port_range").read_text() == "5436 65535"
        assert (root / "net/ipv4/tcp_tw_reuse").read_text() == "1\n"
        assert [c["setting"] for c in tuning.changed] == ["net.core.somaxconn", "net.ipv4.ip_local_port_range"]
        assert tuning.left_alone == [{"setting": "net.ipv4.tcp_tw_reuse", "value": 1, "needed": 2}]
    assert (root / "net/core/somaxconn").read_text() == "128"
    assert (root / "net/ipv4/ip_local_port_range").read_text() == "32768\t60999"


def test_restore_leaves_a_value_someone_else_changed_since(tmp_path):
    root = fake_proc_sys(tmp_path, {"net.core.somaxconn": "128"})
    tuning = tune([Finding("net.core.somaxconn", 128, 2048, "", "")], proc_sys=root)
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
        tune(findings, proc_sys=root)
    assert (root / "net/core/somaxconn").read_text().strip() == "128"


@pytest.mark.needs_host("writes /proc/sys")
@pytest.mark.parametrize("interruption", [None, RuntimeError, KeyboardInterrupt])
def test_tune_raises_the_real_somaxconn_and_restores_it(interruption):
    original = SOMAXCONN.read_text()
    value = int(original)
    expected = pytest.raises(interruption) if interruption else contextlib.nullcontext()
    try:
        with expected, tune([Finding("net.core.somaxconn", value, value + 1, "test", "")]) as tuning:
            assert int(SOMAXCONN.read_text()) == value + 1
            assert tuning.changed[0]["old"] == value and tuning.changed[0]["new"] == value + 1
            if interruption:
                raise interruption("interrupted")
        assert SOMAXCONN.read_text() == original
    finally:
        if SOMAXCONN.read_text() != original:
            SOMAXCONN.write_text(original)


@pytest.mark.needs_host("writes /proc/sys")
def test_tune_never_lowers_the_real_somaxconn():
    original = SOMAXCONN.read_text()
    value = int(original)
    with tune([Finding("net.core.somaxconn", value, value - 1, "test", "")]) as tuning:
        assert SOMAXCONN.read_text() == original
        assert tuning.changed == [] and tuning.left_alone[0]["value"] == value


def test_tune_as_a_user_says_what_to_run(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root.*sysctl -w net.core.somaxconn=2048"):
        tune([Finding("net.core.somaxconn", 128, 2048, "", "sysctl -w net.core.somaxconn=2048")])
    assert tune([Finding("fd_hard_limit", 1, 2, "", "", tunable=False)]).changed == []



# ---- loopback connection tracking -------------------------------------------------------------------------

OUR_RULES = {chain: f'-A {chain} -s 127.0.0.0/8 -d 127.0.0.0/8 {side} lo -m comment --comment '
                    f'"{conntrack.NOTRACK_COMMENT}" -j CT --notrack'
             for chain, side in conntrack.NOTRACK_CHAINS.items()}
NOT_THERE = Path("/nonexistent/iptables")


def loopback(**changes) -> dict:
    """read_loopback_conntrack's answer for a host with conntrack loaded and iptables-nft, loopback tracked."""
    return dict({"conntrack_loaded": True, "tool": "iptables", "backend": "nf_tables", "untracked_chains": [],
                 "tracked": True, "error": None}, **changes)


@pytest.mark.parametrize("chain", list(conntrack.NOTRACK_CHAINS))
def test_an_iptables_rule_counts_only_when_it_untracks_all_loopback_traffic(chain):
    side = conntrack.NOTRACK_CHAINS[chain]
    other = "OUTPUT" if chain == "PREROUTING" else "PREROUTING"
    assert conntrack.iptables_rule_untracks_loopback(OUR_RULES[chain], chain)
    assert not conntrack.iptables_rule_untracks_loopback(OUR_RULES[chain], other)
    assert conntrack.iptables_rule_untracks_loopback(f"-A {chain} {side} lo -j NOTRACK", chain)
    assert conntrack.iptables_rule_untracks_loopback(f"-A {chain} -d 127.0.0.0/8 -j CT --notrack", chain)
    for narrower in (f"-A {chain} {side} lo -p tcp -j CT --notrack",       # TCP only
                     f"-A {chain} ! -s 127.0.0.0/8 -j CT --notrack",        # everything but loopback
                     f"-A {chain} {side} eth0 -j CT --notrack",
                     f"-A {chain} -s 127.0.0.1/32 -j CT --notrack",
                     f"-A {chain} {side} lo -j ACCEPT",
                     f"-P {chain} ACCEPT"):
        assert not conntrack.iptables_rule_untracks_loopback(narrower, chain), narrower


NFT_OURS = """table ip epollbench_notrack {
\tchain prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname "lo" ip saddr 127.0.0.0/8 ip daddr 127.0.0.0/8 notrack
\t}
\tchain output {
\t\ttype filter hook output priority raw; policy accept;
\t\toifname "lo" ip saddr 127.0.0.0/8 ip daddr 127.0.0.0/8 counter packets 12 bytes 720 notrack comment "x"
\t}
}
"""


def test_nft_notrack_rules_count_in_a_hooked_chain_on_the_right_interface():
    assert conntrack.nft_untracked_chains(NFT_OURS) == ["PREROUTING", "OUTPUT"]
    assert conntrack.nft_untracked_chains(NFT_OURS.replace('oifname "lo"', 'iifname "lo"')) == ["PREROUTING"]
    assert conntrack.nft_untracked_chains(NFT_OURS.replace("notrack\n", "tcp dport 80 notrack\n")) == ["OUTPUT"]
    # A regular chain runs only when jumped to: its rules alone exempt nothing.
    regular = "table ip t {\n\tchain c {\n\t\tiifname \"lo\" notrack\n\t}\n}\n"
    assert conntrack.nft_untracked_chains(regular) == []
    # What tune() loads is what nft_untracked_chains recognises.
    assert conntrack.nft_untracked_chains(conntrack.nft_notrack_table(["OUTPUT"])) == ["OUTPUT"]


def test_tracked_loopback_is_a_tunable_finding_with_the_rules_to_add():
    f = preflight.loopback_finding(loopback())
    assert (f.setting, f.value, f.needed, f.tunable) == (preflight.LOOPBACK_CONNTRACK, "tracked", "untracked", True)
    assert "nf_conntrack_max" in f.why and "slower" in f.why
    assert "--tune-host" in f.fix
    for chain, side in conntrack.NOTRACK_CHAINS.items():
        assert f"-t raw -I {chain} {side} lo -s 127.0.0.0/8 -d 127.0.0.0/8 -j CT --notrack" in f.fix
    found = by_setting(preflight.assess(dict(ROOMY, loopback_conntrack=loopback()), 60000, 100, 4))
    assert list(found) == [preflight.LOOPBACK_CONNTRACK]


def test_untracked_or_unloaded_conntrack_is_no_finding():
    assert preflight.loopback_finding(loopback(tracked=False, untracked_chains=["PREROUTING", "OUTPUT"])) is None
    assert preflight.loopback_finding(loopback(conntrack_loaded=False, tracked=False)) is None
    assert preflight.loopback_finding(None) is None


def test_without_iptables_or_nft_the_finding_says_so_and_is_not_tunable():
    state = conntrack.read_loopback_conntrack(True, iptables=NOT_THERE, nft=NOT_THERE)
    assert (state["tool"], state["tracked"]) == (None, True)
    f = preflight.loopback_finding(state)
    assert not f.tunable and "neither iptables nor nft" in f.why and "apt-get install iptables" in f.fix
    assert conntrack.read_loopback_conntrack(False, iptables=NOT_THERE, nft=NOT_THERE)["tracked"] is False


def fake_iptables(tmp_path: Path, version: str, listing: str, code: int = 0) -> Path:
    """An iptables that answers -V and `-t raw -S` as given and logs every other call."""
    script = tmp_path / "iptables"
    script.write_text(f"""#!/bin/sh
case "$*" in
  -V) echo '{version}' ;;
  "-t raw -S") printf '%s' '{listing}'; [ {code} = 0 ] || {{ echo 'Permission denied (you must be root)' >&2; }}
               exit {code} ;;
  *) echo "$*" >> {tmp_path}/calls ;;
esac
""")
    script.chmod(0o755)
    return script


def test_read_loopback_conntrack_names_the_backend_and_finds_the_rules(tmp_path):
    listing = "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n" + OUR_RULES["OUTPUT"] + "\n"
    state = conntrack.read_loopback_conntrack(True, fake_iptables(tmp_path, "iptables v1.8.9 (legacy)", listing))
    assert (state["tool"], state["backend"], state["untracked_chains"], state["tracked"]) == \
        ("iptables", "legacy", ["OUTPUT"], True)
    listing += OUR_RULES["PREROUTING"] + "\n"
    state = conntrack.read_loopback_conntrack(True, fake_iptables(tmp_path, "iptables v1.6.1", listing))
    assert (state["backend"], state["tracked"]) == ("legacy", False)


def test_an_unreadable_raw_table_is_an_unknown_finding_and_tune_adds_nothing(tmp_path):
    iptables = fake_iptables(tmp_path, "iptables v1.8.9 (nf_tables)", "", code=4)
    state = conntrack.read_loopback_conntrack(True, iptables)
    assert state["tracked"] is None and "must be root" in state["error"]
    f = preflight.loopback_finding(state)
    assert f.value == "unknown" and f.tunable and "must be root" in f.why
    with pytest.raises(UserError, match="cannot exempt loopback.*must be root"):
        tune([f], iptables=iptables)
    assert not (tmp_path / "calls").exists()


def test_tune_adds_only_the_missing_chain_and_restore_deletes_only_that(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    iptables = fake_iptables(tmp_path, "iptables v1.8.9 (nf_tables)", f"-P OUTPUT ACCEPT\n{OUR_RULES['OUTPUT']}\n")
    with tune([preflight.loopback_finding(loopback())], iptables=iptables) as tuning:
        calls = (tmp_path / "calls").read_text().splitlines()
        assert calls == [f"-t raw -I PREROUTING -i lo -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "
                         f"{conntrack.NOTRACK_COMMENT} -j CT --notrack"]
        assert [c["setting"] for c in tuning.changed] == [preflight.LOOPBACK_CONNTRACK]
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[1:] == [calls[0].replace(" -I ", " -D ")]


def test_tune_without_a_firewall_tool_fails_clearly(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(UserError, match="neither iptables nor nft"):
        tune([preflight.loopback_finding(loopback())], iptables=NOT_THERE, nft=NOT_THERE)


def raw_rules() -> list[str]:
    return subprocess.run([str(conntrack.IPTABLES), "-t", "raw", "-S"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@contextlib.contextmanager
def clean_raw_table():
    """Skips a test that finds loopback untracked already (it could not see tune add anything); removes any
    rule of ours a failed test left."""
    if conntrack.read_loopback_conntrack(True)["tracked"] is not True:
        pytest.skip("this host already exempts loopback from conntrack")
    existed = nft_raw_table_exists()
    try:
        yield
    finally:
        for chain in conntrack.NOTRACK_CHAINS:
            while OUR_RULES[chain] in raw_rules():
                subprocess.run([str(conntrack.IPTABLES), "-t", "raw", "-D",
                                *conntrack.iptables_notrack_rule(chain)], check=True)
        if existed is False and nft_raw_table_exists():
            Tuning()._drop_raw_table_if_empty()


def nft_raw_table_exists() -> bool | None:
    """Whether nftables has an ip raw table (iptables-nft's); None without nft."""
    if not os.access(conntrack.NFT, os.X_OK):
        return None
    return subprocess.run([str(conntrack.NFT), "list", "table", "ip", "raw"], capture_output=True).returncode == 0


needs_root_and_iptables = pytest.mark.needs_host("changes the host's iptables raw table", tools=["iptables"])


@needs_root_and_iptables
@pytest.mark.parametrize("interruption", [None, RuntimeError, KeyboardInterrupt])
def test_tune_adds_the_real_notrack_rules_once_and_removes_them(interruption):
    with clean_raw_table():
        before, table_before = raw_rules(), nft_raw_table_exists()
        expected = pytest.raises(interruption) if interruption else contextlib.nullcontext()
        finding = preflight.loopback_finding(conntrack.read_loopback_conntrack(True))
        with expected, tune([finding]) as tuning:
            rules = raw_rules()
            assert all(OUR_RULES[chain] in rules for chain in conntrack.NOTRACK_CHAINS)
            assert conntrack.read_loopback_conntrack(True)["tracked"] is False
            change, = tuning.changed
            assert (change["tool"], len(change["undo"])) == ("iptables", 2)
            with tune([finding]) as again:  # idempotent: present already, nothing added
                assert again.changed == [] and again.left_alone[0]["value"] == "untracked"
                assert raw_rules() == rules
            assert raw_rules() == rules, "the inner tune removed nothing it had not added"
            if interruption:
                raise interruption("interrupted")
        assert raw_rules() == before
        assert nft_raw_table_exists() == table_before, "iptables-nft's raw table goes when tune made it come"


@needs_root_and_iptables
def test_tune_never_deletes_a_notrack_rule_it_did_not_add():
    foreign = ["OUTPUT", "-o", "lo", "-j", "CT", "--notrack"]
    with clean_raw_table():
        subprocess.run([str(conntrack.IPTABLES), "-t", "raw", "-I", *foreign], check=True)
        try:
            with tune([preflight.loopback_finding(loopback())]) as tuning:
                assert tuning.changed[0]["undo"] == [[str(conntrack.IPTABLES), "-t", "raw", "-D",
                                                     *conntrack.iptables_notrack_rule("PREROUTING")]]
                assert "-A OUTPUT -o lo -j CT --notrack" in raw_rules()
            assert "-A OUTPUT -o lo -j CT --notrack" in raw_rules()
            assert OUR_RULES["PREROUTING"] not in raw_rules()
        finally:
            subprocess.run([str(conntrack.IPTABLES), "-t", "raw", "-D", *foreign], check=True)


@needs_root_and_iptables
def test_restore_reports_a_rule_someone_else_removed():
    with clean_raw_table():
        tuning = tune([preflight.loopback_finding(loopback())])
        subprocess.run([str(conntrack.IPTABLES), "-t", "raw", "-D", *conntrack.iptables_notrack_rule("OUTPUT")],
                       check=True)
        not_restored, = tuning.restore()
        assert "-D OUTPUT" in not_restored["found"]
        assert not any(OUR_RULES[chain] in raw_rules() for chain in conntrack.NOTRACK_CHAINS)


@pytest.mark.needs_host("changes the host's nftables ruleset", tools=["nft"])
def test_without_iptables_tune_uses_its_own_nft_table_and_deletes_it():
    def table_exists() -> bool:
        return subprocess.run([str(conntrack.NFT), "list", "table", "ip", conntrack.NFT_TABLE],
                              capture_output=True).returncode == 0

    if table_exists():
        pytest.skip(f"nft table ip {conntrack.NFT_TABLE} exists already")
    try:
        with tune([preflight.loopback_finding(loopback(tool="nft"))], iptables=NOT_THERE) as tuning:
            assert table_exists() and tuning.changed[0]["tool"] == "nft"
            assert conntrack.read_loopback_conntrack(True, iptables=NOT_THERE)["tracked"] is False
        assert not table_exists()
    finally:
        if table_exists():
            subprocess.run([str(conntrack.NFT), "delete", "table", "ip", conntrack.NFT_TABLE], check=True)
