"""`invoke reproduce --tune-host` puts the host back: a real run on the real host when it is interrupted
(SIGINT, SIGTERM), and when it is killed outright (SIGKILL), the next `reproduce` does, from the journal the
run keeps (journal.restore_abandoned); the journal's rules are checked on a fake /proc/sys first.

The real runs first make the host need tuning, so that --tune-host changes something: somaxconn below the
server's backlog, loopback traffic tracked (they skip on a host whose own rules exempt loopback). The host's
values are put back whatever happens. The plan is four 2 s pipetest points: the run is still measuring when
the test signals it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reproducing import finished, invoke, labelled_containers, run_record
from test_preflight import OUR_RULES, clean_raw_table, fake_proc_sys, raw_rules

from experiment import catalog, model
from experiment.errors import UserError
from experiment.host import conntrack, preflight, process
from experiment.host.journal import journal_path, restore_abandoned
from experiment.host.preflight import Finding
from experiment.host.tuning import tune
from experiment.run.reproduce import tunes_host
from experiment.run.results import Run

real_host = pytest.mark.needs_host("changes the host's /proc/sys and raw table", tools=["iptables"])

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
# Low enough for the preflight to find (it wants the server's backlog), so --tune-host raises it.
LOW_SOMAXCONN = catalog.LISTEN_BACKLOG // 2
PLAN = ["--tune-host", "--sweeps", "pipetest", "--variants", "up", "--backends", "poll,epoll",
        "--pipes", "10", "--walks", "stay", "--no-report"]
TUNED_WITHIN_S = 120


# ---- the journal, on a fake /proc/sys ----------------------------------------------------------------------

LOW = {"net.core.somaxconn": "128", "net.ipv4.tcp_max_syn_backlog": "128", "fs.nr_open": "1024"}
READ_ONLY_SYSCTL = Path("/proc/sys/kernel/ngroups_max")  # mode 0444
RAISE = [Finding(name, int(value), 2048, "", "") for name, value in LOW.items()]


def gone_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def killed_run(tmp_path: Path, monkeypatch, findings=RAISE) -> tuple[Path, Path]:
    """A fake /proc/sys with LOW's values, and under tmp_path/results a run folder whose tuning raised
    `findings` and was never restored, its process gone: (the fake tree, the journal)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    root = fake_proc_sys(tmp_path / "proc-sys", LOW)
    journal = journal_path(tmp_path / "results" / "run-a")
    tune(findings, proc_sys=root, journal=journal)  # no restore: the process is "killed" here
    record = model.read_json(journal, model.TUNING)
    model.write_json_atomic(journal, dict(record, pid=gone_pid()), overwrite=True)
    return root, journal


def values(root: Path) -> dict[str, str]:
    return {name: (root / name.replace(".", "/")).read_text().strip() for name in LOW}


def test_each_change_is_journalled_before_it_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    root = fake_proc_sys(tmp_path, {"net.core.somaxconn": "128"})
    # A value that reads but cannot be written, even by root: the write of this one fails.
    (root / "net/ipv4").mkdir()
    (root / "net/ipv4/tcp_max_syn_backlog").symlink_to(READ_ONLY_SYSCTL)
    unwritable = Finding("net.ipv4.tcp_max_syn_backlog", 0, int(READ_ONLY_SYSCTL.read_text()) + 1, "", "")
    journal = journal_path(tmp_path / "run")
    with pytest.raises(UserError, match="could not write"):
        tune([RAISE[0], unwritable], proc_sys=root, journal=journal)
    record = model.read_json(journal, model.TUNING)
    assert [(c["setting"], c["applied"]) for c in record["changes"]] == [("net.core.somaxconn", True),
                                                                          ("net.ipv4.tcp_max_syn_backlog", False)]
    assert record["pid"] == os.getpid() and record["restored_at"] and record["restored_by"] == os.getpid()
    assert (root / "net/core/somaxconn").read_text() == "128"
    assert journal_path(tmp_path / "run").name == "tuning.1.json", "a resumed attempt's is another"


def test_a_dead_runs_tuning_goes_back_where_it_is_as_the_run_left_it(tmp_path, monkeypatch):
    root, journal = killed_run(tmp_path, monkeypatch)
    assert values(root) == {name: "2048" for name in LOW}
    (root / "net/ipv4/tcp_max_syn_backlog").write_text("4096")  # someone else's since
    record = model.read_json(journal, model.TUNING)
    record["changes"][2]["applied"] = False  # killed between journal and write: fs.nr_open was never raised
    (root / "fs/nr_open").write_text("1024")
    model.write_json_atomic(journal, record, overwrite=True)

    said = []
    assert restore_abandoned(tmp_path / "results", said.append, proc_sys=root) == [journal]
    assert values(root) == {"net.core.somaxconn": "128", "net.ipv4.tcp_max_syn_backlog": "4096",
                            "fs.nr_open": "1024"}
    about = "tune-host: run run-a ended without restoring the host: "
    assert said == [about + "net.core.somaxconn back to 128 from 2048",
                    about + "left net.ipv4.tcp_max_syn_backlog as it is (4096): it was set to 2048, and has been "
                            "changed since"]
    record = model.read_json(journal, model.TUNING)
    assert record["restored_at"] and record["restored_by"] == os.getpid()
    assert [c["setting"] for c in record["not_restored"]] == ["net.ipv4.tcp_max_syn_backlog"]
    said.clear()
    assert restore_abandoned(tmp_path / "results", said.append, proc_sys=root) == [] and said == []


def test_a_live_runs_journal_is_never_touched_but_a_recycled_pid_is_no_live_run(tmp_path, monkeypatch):
    root, journal = killed_run(tmp_path, monkeypatch, RAISE[:1])
    record = model.read_json(journal, model.TUNING)
    this = {"pid": os.getpid(), "pid_start": process._start_ticks(os.getpid())}
    model.write_json_atomic(journal, dict(record, **this), overwrite=True)
    said = []
    assert restore_abandoned(tmp_path / "results", said.append, proc_sys=root) == [] and said == []
    assert values(root)["net.core.somaxconn"] == "2048"

    model.write_json_atomic(journal, dict(record, pid=os.getpid(), pid_start=this["pid_start"] - 1), overwrite=True)
    elsewhere = tmp_path / "other-results"  # a resumed run named by its folder, outside the results dir
    assert restore_abandoned(elsewhere, said.append, also=[journal.parent], proc_sys=root) == [journal]
    assert values(root)["net.core.somaxconn"] == "128"


def test_a_journal_from_before_a_reboot_is_closed_without_touching_the_host(tmp_path, monkeypatch):
    root, journal = killed_run(tmp_path, monkeypatch, RAISE[:1])
    record = model.read_json(journal, model.TUNING)
    model.write_json_atomic(journal, dict(record, boot_id="another boot"), overwrite=True)
    said = []
    assert restore_abandoned(tmp_path / "results", said.append, proc_sys=root) == []
    assert said == ["tune-host: run run-a ended without restoring the host, but the host has rebooted since, "
                    "which undid it: nothing to restore"]
    assert values(root)["net.core.somaxconn"] == "2048"
    assert model.read_json(journal, model.TUNING)["restored_by"] == "reboot"


def test_a_journal_from_another_namespace_is_left_for_a_reproduce_there(tmp_path, monkeypatch):
    root, journal = killed_run(tmp_path, monkeypatch, RAISE[:1])
    record = model.read_json(journal, model.TUNING)
    model.write_json_atomic(journal, dict(record, namespaces={"pid": 1, "net": 2}), overwrite=True)
    said = []
    assert restore_abandoned(tmp_path / "results", said.append, proc_sys=root) == []
    assert said == [f"tune-host: run run-a tuned the host from another pid or network namespace (a container?): "
                    f"its journal {journal} is left for a reproduce there"]
    assert values(root)["net.core.somaxconn"] == "2048"
    assert model.read_json(journal, model.TUNING)["restored_at"] is None


def test_without_root_a_dead_runs_tuning_is_named_and_left_for_root(tmp_path, monkeypatch):
    root, journal = killed_run(tmp_path, monkeypatch, RAISE[:1])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    said = []
    assert restore_abandoned(tmp_path / "results", said.append, proc_sys=root) == []
    assert said == ["tune-host: run run-a ended without restoring the host (net.core.somaxconn): as root, the next "
                    "`invoke reproduce` (or `invoke clean`) puts it back"]
    assert values(root)["net.core.somaxconn"] == "2048"
    assert model.read_json(journal, model.TUNING)["restored_at"] is None


# ---- a resume tunes as the run was started ------------------------------------------------------------------

@pytest.mark.parametrize(("recorded", "flag", "tunes"), [(True, False, True), (True, True, True),
                                                          (False, True, False), (False, False, False)])
def test_a_resume_tunes_the_host_as_its_run_was_started_whatever_its_flag(recorded, flag, tunes):
    record = run_record("run-a", tune_host=recorded)
    tuned, note = tunes_host(record, flag)
    assert tuned is tunes
    if recorded == flag:
        assert note == ""
    else:
        assert note.startswith(f"run-a was started {'with' if recorded else 'without'} --tune-host: its resume ")
        assert note.endswith("so that all its points are measured on the same host settings")


@pytest.mark.parametrize("flag", [True, False])
def test_a_run_recorded_before_tune_host_was_says_so_and_goes_by_the_flag(flag):
    tuned, note = tunes_host(run_record("run-a"), flag)
    assert tuned is flag
    assert note == ("run-a's run.json does not record whether it was started with --tune-host (it was written "
                    f"before that was recorded): this resume goes by its own flag, {'with' if flag else 'without'} "
                    "--tune-host")


# ---- real runs on the real host --------------------------------------------------------------------------

@contextlib.contextmanager
def host_that_needs_tuning():
    """Loopback tracked and somaxconn at LOW_SOMAXCONN for the test; the raw table and somaxconn as they
    were afterwards. Yields the raw table's rules as the test found them."""
    original = SOMAXCONN.read_text()
    with clean_raw_table():
        try:
            SOMAXCONN.write_text(str(LOW_SOMAXCONN))
            yield raw_rules()
        finally:
            SOMAXCONN.write_text(original)


def host_is_tuned() -> bool:
    rules = raw_rules()
    return (int(SOMAXCONN.read_text()) == catalog.LISTEN_BACKLOG
            and all(OUR_RULES[chain] in rules for chain in conntrack.NOTRACK_CHAINS))


def wait_until_measuring(proc: subprocess.Popen, results_dir: Path, client) -> Run:
    """The run once it has tuned the host and has a container of its own running."""
    deadline = time.monotonic() + TUNED_WITHIN_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        runs = [p.parent for p in results_dir.glob("*/run.json") if not p.parent.is_symlink()]
        if runs and host_is_tuned() and labelled_containers(client, runs[0].name):
            return Run(runs[0])
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the run did not tune the host and start measuring within {TUNED_WITHIN_S} s: "
                         f"{proc.communicate()}")


def journals(run: Run) -> list[dict]:
    """The run's journals, its first attempt's first (tuning.json, then a resume's tuning.1.json, ...)."""
    paths = sorted(run.path.glob("tuning*.json"), key=lambda p: (p.name != "tuning.json", p.name))
    return [model.read_json(path, model.TUNING) for path in paths]


class Started:
    run = None


@contextlib.contextmanager
def cleaned_up(proc, client):
    """The reproduce proc started, killed if it still runs on the way out, and the containers of its run
    (started.run, once known) removed."""
    started = Started()
    try:
        yield started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if started.run is not None:
            with contextlib.suppress(Exception):
                for container in labelled_containers(client, started.run.id):
                    container.remove(force=True)


@contextlib.contextmanager
def killed_tuned_run(results_dir: Path, client):
    """A real reproduce --tune-host killed with SIGKILL while it measures, the host still tuned and its
    containers still there: yields (run, its process, the raw table's rules before it ran)."""
    with host_that_needs_tuning() as rules_before:
        proc = invoke(*PLAN, results_dir=results_dir)
        with cleaned_up(proc, client) as started:
            run = started.run = wait_until_measuring(proc, results_dir, client)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            assert host_is_tuned() and labelled_containers(client, run.id), "a killed run cleans up nothing"
            yield run, proc, rules_before


@pytest.mark.docker
@real_host
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda signum: signum.name)
def test_an_interrupted_run_puts_the_host_back(tmp_path, client, signum):
    with host_that_needs_tuning() as rules_before:
        proc = invoke(*PLAN, results_dir=tmp_path)
        with cleaned_up(proc, client) as started:
            run = started.run = wait_until_measuring(proc, tmp_path, client)
            said = []
            assert restore_abandoned(tmp_path, say=said.append) == [] and said == []
            assert host_is_tuned(), "a live run's tuning is never undone by another process"
            proc.send_signal(signum)
            code, out, err = finished(proc, 120)

        assert code == 2 and "interrupted" in err and "Traceback" not in err, err
        assert run.record().status == "interrupted"
        assert labelled_containers(client, run.id) == []
        assert int(SOMAXCONN.read_text()) == LOW_SOMAXCONN
        assert raw_rules() == rules_before
        journal, = journals(run)
        assert journal["restored_at"] and journal["restored_by"] == journal["pid"] == proc.pid
        assert {c["setting"] for c in journal["changes"]} == {"net.core.somaxconn", preflight.LOOPBACK_CONNTRACK}


@pytest.mark.docker
@real_host
def test_the_next_reproduce_puts_back_what_a_killed_run_changed(tmp_path, client):
    with killed_tuned_run(tmp_path, client) as (run, proc, rules_before):
        code, out, err = finished(invoke("--resume", run.id, "--no-report", results_dir=tmp_path), 300)
        assert code == 0, f"{out}\n{err}"
        assert int(SOMAXCONN.read_text()) == LOW_SOMAXCONN
        assert raw_rules() == rules_before
        restored = [line for line in out.splitlines() if line.startswith(f"tune-host: run {run.id}")]
        assert len(restored) == 1 + len(conntrack.NOTRACK_CHAINS), out
        assert any(f"net.core.somaxconn back to {LOW_SOMAXCONN}" in line for line in restored), restored
        assert run.record().status == "complete"
        assert labelled_containers(client, run.id) == []
        killed, resumed = journals(run)
        assert killed["pid"] == proc.pid and killed["restored_at"] and killed["restored_by"] != proc.pid
        assert resumed["restored_by"] == resumed["pid"] == killed["restored_by"], "the resume tuned and restored"


@pytest.mark.docker
@real_host
def test_a_resume_after_clean_tunes_the_host_again_and_puts_it_back(tmp_path, client):
    """A --tune-host run killed mid-sweep, the host put back by `invoke clean`, then resumed without the flag:
    the points it has left are measured on the tuned host as the first ones were, and the host is put back at
    the end."""
    with killed_tuned_run(tmp_path, client) as (run, proc, rules_before):
        assert run.record().tune_host is True
        cleaning = subprocess.run([sys.executable, "-m", "invoke", "clean", "--results-dir", str(tmp_path),
                                   "--run", run.id], capture_output=True, text=True, timeout=300)
        assert cleaning.returncode == 0, cleaning.stderr
        assert not host_is_tuned() and labelled_containers(client, run.id) == []
        kept = len(run.points())
        resume = invoke("--resume", run.id, "--no-report", results_dir=tmp_path)
        with cleaned_up(resume, client):
            wait_until_measuring(resume, tmp_path, client)  # tuned, with a container of its own
            code, out, err = finished(resume, 300)
        assert code == 0, f"{out}\n{err}"
        assert (f"{run.id} was started with --tune-host: its resume tunes the host as it did (the flag need not "
                "be given again)") in out
        assert int(SOMAXCONN.read_text()) == LOW_SOMAXCONN and raw_rules() == rules_before
        assert run.record().status == "complete" and len(run.points()) == 2 > kept
        killed, resumed = journals(run)
        assert killed["pid"] == proc.pid and killed["restored_at"]
        assert resumed["pid"] == resumed["restored_by"] == resume.pid and resumed["restored_at"]
        assert {c["setting"] for c in resumed["changes"]} == {"net.core.somaxconn", preflight.LOOPBACK_CONNTRACK}
        assert {c["setting"] for c in run.record().tuned} == {"net.core.somaxconn", preflight.LOOPBACK_CONNTRACK}
