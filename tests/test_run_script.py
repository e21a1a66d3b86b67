"""`./run`, the entry point a new user types first: what it says where Python's venv is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stub(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def test_without_python3_venv_a_non_root_user_gets_the_one_line_fix(tmp_path):
    """Debian's python3 lacks ensurepip until python3-venv is installed; `python3 -m venv` then dies with
    Python's own multi-line message. ./run must say the fix in one line instead, before touching .venv."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "run", checkout / "run")
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "python3", 'case "$*" in *ensurepip*) exit 1;; esac; echo "python3 $*" >> "$CALLS"; exit 0')
    stub(bin_dir, "id", "echo 1000")
    for tool in ("sh", "cmp", "cat", "cp", "dirname", "echo", "command"):
        if (found := shutil.which(tool)) and tool != "command":
            os.symlink(found, bin_dir / tool)
    calls = tmp_path / "calls"
    proc = subprocess.run(["sh", str(checkout / "run"), "--list"], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bin_dir), "CALLS": str(calls)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "epollbench: Python's venv module is missing: run `sudo apt-get install python3-venv`"]
    assert not calls.exists()  # no venv was attempted
    assert not (checkout / ".venv").exists()


def test_nothing_a_build_or_a_run_writes_is_tracked():
    """A tracked file that .gitignore names (egg-info, build output, results) is rewritten by `pip install -e`
    or a run, and every run afterwards is recorded as git dirty."""
    tracked_but_ignored = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
                                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert [p for p in tracked_but_ignored if not p.startswith("results/reference/")] == []
