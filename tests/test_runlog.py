"""A run's own log (logs/harness.log: what the terminal showed), its record of any exception that ended it
(run.json's status and error, the traceback in logs/), and the lock it holds while it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from reproducing import finished, invoke, run_record

from experiment import pipeline
from experiment.errors import UserError
from experiment.host import engine
from experiment.run import runlog
from experiment.run.results import Run

TINY = ["--sweeps", "pipetest", "--variants", "up", "--backends", "epoll", "--pipes", "10", "--duration", "1",
        "--no-report", "--walks", "stay"]


def test_what_is_printed_before_the_run_folder_exists_is_logged_once_it_does(tmp_path, capsys):
    with runlog.capture():
        print("before")
        print("to stderr", file=sys.stderr)
        runlog.attach(tmp_path)
        print("after")
        runlog.log_only("for the log alone")
        runlog.attach(tmp_path)  # again: nothing written twice
    out, err = capsys.readouterr()
    assert out == "before\nafter\n" and err == "to stderr\n"
    assert (tmp_path / "logs/harness.log").read_text() == "before\nto stderr\nafter\nfor the log alone\n"
    print("not a run's")
    assert "not a run's" not in (tmp_path / "logs/harness.log").read_text()


def test_an_unexpected_exception_is_recorded_with_its_traceback(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the engine's answer made no sense")

    monkeypatch.setattr(engine, "connect", broken)
    with pytest.raises(RuntimeError):
        pipeline.reproduce(*[], sweeps="pipetest", variants="up", backends="epoll", pipes="10", no_report=True,
                           results_dir=str(tmp_path))
    run = Run.open(None, tmp_path)
    record = run.record().to_json()
    assert record["status"] == "failed" and record["ended_at"]
    assert record["error"] == "RuntimeError: the engine's answer made no sense"
    traceback = (run.path / record["error_traceback"]).read_text()
    assert traceback.startswith("Traceback (most recent call last):") and "in broken" in traceback
    assert traceback.rstrip().endswith("RuntimeError: the engine's answer made no sense")
    log = (run.logs_dir / runlog.HARNESS_LOG).read_text()
    assert f"results: {run.path}" in log and "RuntimeError: the engine's answer made no sense" in log
    assert run.running() is False, "the lock goes with the run"


def test_a_user_error_is_recorded_and_logged_as_the_terminal_shows_it(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise UserError("no Docker engine answers at tcp://192.0.2.1:2376: start it there, or check the URL")

    monkeypatch.setattr(engine, "connect", refused)
    with pytest.raises(UserError):
        pipeline.reproduce(sweeps="pipetest", variants="up", backends="epoll", pipes="10", no_report=True,
                           results_dir=str(tmp_path))
    run = Run.open(None, tmp_path)
    assert run.record().error.startswith("no Docker engine answers at tcp://192.0.2.1:2376")
    assert (run.path / run.record().error_traceback).read_text().startswith("Traceback")
    assert "epollbench: no Docker engine answers" in (run.logs_dir / runlog.HARNESS_LOG).read_text()


def test_a_run_held_by_one_process_is_running_to_another_and_cannot_be_resumed_there(tmp_path):
    run = Run.create(run_record("held"), tmp_path)
    assert run.running() is False
    run.hold()
    other = subprocess.run([sys.executable, "-c", "import sys; from experiment.run.results import Run; "
                            f"r = Run.open({str(run.path)!r}); print(r.running()); r.hold()"],
                           capture_output=True, text=True, timeout=60)
    assert other.stdout == "True\n" and "run held is running in another process" in other.stderr
    run.release()
    assert run.running() is False
    (run.path / "run.lock").unlink()
    assert run.running() is None, "a run recorded before runs held locks: cannot tell"


@pytest.mark.docker
def test_everything_a_run_prints_is_in_its_log(tmp_path, client):
    code, out, err = finished(invoke(*TINY, results_dir=tmp_path), 600)
    assert code == 0, f"{out}\n{err}"
    run = Run.open(None, tmp_path)
    log = (run.logs_dir / runlog.HARNESS_LOG).read_text().splitlines()
    for line in (out + err).splitlines():
        if line.strip():
            assert line in log, f"{line!r} was printed but not logged"
    assert sum(line.startswith("[1/1] pipetest-up-epoll-") for line in log) == 1
    assert any(line.startswith("server: built: ") for line in log)
    assert run.record().harness["pid"] > 0 and run.running() is False
