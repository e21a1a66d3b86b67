"""`invoke reproduce` run as a user runs it, for the end-to-end tests (test_reproduce*.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiment import model
from experiment.paths import ROOT
from experiment.run.containers import LABEL_RUN
from experiment.run.results import Run


def invoke(*args: str, results_dir: Path, preexec_fn=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", "reproduce", *args, "--results-dir", str(results_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn, **kwargs)


def finished(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def labelled_containers(client, run_id: str) -> list:
    """Every container, running or not, labelled as part of run_id."""
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


def point_files(run: Run) -> list[dict]:
    """The run's point files as written (the contract for tools that read results), upgraded to this schema."""
    return [model.read_json(path, model.POINT) for path in sorted(run.points_dir.glob("*.json"))]


def run_record(run_id: str, **fields) -> model.RunRecord:
    """A run record for a run folder a test plants: the quick plan, started now, with fields changed."""
    from experiment.run.plan import make_plan
    return model.RunRecord(**{"run_id": run_id, "profile": "quick", "status": "running",
                              "started_at": model.utc_now(), "command_line": [], "plan": make_plan("quick"),
                              **fields})
