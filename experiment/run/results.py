"""The result set of a run: results/<UTC timestamp>-<host>-<profile>/ with run.json and one file per point.

Layout of a run folder (schema_version: model.SCHEMA_VERSION):
  run.json              run-level record: plan, metadata captured at start, status, start/end times
  points/<id>.json      one measured, failed or skipped point each, written atomically, never overwritten
  raw/<id>.*            raw outputs (httperf text, ephttpd and deadconn JSON lines, pipetest JSON)
  logs/                 image builds, dockerd, mmdebstrap
  tuning.json           what --tune-host changed on the host, written before each change, and when it was
                        put back (tuning.N.json: a resumed attempt's; journal.restore_abandoned)
  run.lock              held (flock) by the process running the run, as long as it runs: `invoke clean` tells
                        a run that is not running by it, whatever way its process ended
  report/               written by `invoke report`

Records are read through model.upgrade: an older schema_version is upgraded in memory, a newer one refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import model
from ..errors import UserError
from ..model import write_json_atomic
from ..paths import RESULTS

LATEST = "latest"
LOCK = "run.lock"
# The run lock's open descriptor per run folder this process holds (the lock lives as long as it is open).
_held: dict[Path, int] = {}


def new_run_id(profile: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "host"
    return f"{stamp}-{host}-{profile}"


@dataclass
class Run:
    """A run folder on disk."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def points_dir(self) -> Path:
        return self.path / "points"

    @property
    def raw_dir(self) -> Path:
        return self.path / "raw"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @classmethod
    def create(cls, run_record: model.RunRecord, results_dir: Path = RESULTS) -> Run:
        run_id = run_record.run_id
        path = results_dir / run_id
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise UserError(f"{path} exists already: results are never overwritten; "
                            f"wait a second or use --resume {run_id}") from None
        run = cls(path)
        for sub in (run.points_dir, run.raw_dir, run.logs_dir):
            sub.mkdir()
        (path / LOCK).touch()
        write_json_atomic(path / "run.json", run_record.to_json())
        _point_latest_at(results_dir, run_id)
        return run

    @classmethod
    def open(cls, name: str | Path | None, results_dir: Path = RESULTS) -> Run:
        """An existing run by folder path, by id under results/, or results/latest when name is None."""
        candidates = [Path(name)] if name else []
        if name and not Path(name).is_absolute():
            candidates.append(results_dir / name)
        if not name:
            candidates.append(results_dir / LATEST)
        for path in candidates:
            if (path / "run.json").is_file():
                return cls(path.resolve())
        known = sorted(p.name for p in results_dir.glob("*/run.json") for p in [p.parent])
        hint = f"known runs: {', '.join(known[-5:])}" if known else "run `invoke reproduce` first"
        raise UserError(f"no run at {name or results_dir / LATEST}: {hint}")

    def record(self) -> model.RunRecord:
        return model.read_run(self.path / "run.json")

    def hold(self) -> None:
        """Takes the run's lock (an flock on run.lock) until release() or the end of this process, however it
        ends: the kernel drops the lock with the process. A run another process holds is a UserError."""
        if self.path in _held:
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"run {self.id} is running in another process (it holds {self.path / LOCK}): "
                            "wait for it to end, or stop it") from None
        _held[self.path] = fd

    def release(self) -> None:
        fd = _held.pop(self.path, None)
        if fd is not None:
            os.close(fd)  # drops the lock

    def running(self) -> bool | None:
        """Whether a process holds the run's lock (this one included); None for a run without run.lock (one
        recorded before runs held locks)."""
        if self.path in _held:
            return True
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def recorded_version(self) -> object:
        """The schema_version run.json was written with (record() upgrades it)."""
        try:
            return json.loads((self.path / "run.json").read_text()).get("schema_version")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None

    def update_record(self, **changes) -> None:
        """run.json with the named fields of model.RunRecord changed."""
        write_json_atomic(self.path / "run.json", replace(self.record(), **changes).to_json(), overwrite=True)

    def point_path(self, point_id: str) -> Path:
        return self.points_dir / f"{point_id}.json"

    def has_point(self, point_id: str) -> bool:
        return self.point_path(point_id).exists()

    def write_point(self, point: model.Point) -> None:
        write_json_atomic(self.point_path(point.id), point.to_json())

    def update_point(self, point: model.Point) -> None:
        """Rewrites a point written earlier in this run: only to complete it (the anatomy's CPU shares,
        folded after the sweep); a measured figure is never changed."""
        write_json_atomic(self.point_path(point.id), point.to_json(), overwrite=True)

    def points(self) -> list[model.Point]:
        return [model.read_point(p) for p in sorted(self.points_dir.glob("*.json"))]

    def raw_path(self, name: str) -> Path:
        """A path under raw/ that does not exist yet (a retried point gets a numbered name)."""
        path = self.raw_dir / name
        n = 1
        while path.exists():
            stem, dot, ext = name.partition(".")
            path = self.raw_dir / f"{stem}.{n}{dot}{ext}"
            n += 1
        return path


def _point_latest_at(results_dir: Path, run_id: str) -> None:
    link = results_dir / LATEST
    tmp = results_dir / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id)
    os.replace(tmp, link)
