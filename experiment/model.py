"""The records a run folder holds (run.json and points/<id>.json), their schema's history, and the one
upgrade path from every earlier version to this one.

History of schema_version:
  1 (2026-11-27): a point's "backend" held the series label ("epoll", "nginx/epoll") and a dead point of a
    server other than ephttpd named its backend in "mechanism"; the plan's "series" were labels too, and a
    plan before several servers could run had one "server" and no "series".
  2 (2026-11-30): a point's "backend" is the event backend alone, its "server_kind" the server ("ephttpd",
    "python", "nginx", "custom"; dead points only), and no label is stored to be parsed back: the plan's
    "series" are {"server", "backend"} objects. tuning.json (--tune-host's journal) is unchanged.

A record is upgraded when it is read (upgrade()), never rewritten on disk: the committed runs stay as they
were measured. A record of a later version than this one is refused, never misread.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .catalog import DEFAULT_SERVER, Series
from .errors import UserError

SCHEMA_VERSION = 2
# The records of a run folder: run.json, points/<id>.json, and tuning.json (what --tune-host changed).
RUN, POINT, TUNING = "run", "point", "tuning"


def upgrade(data: dict, kind: str, where: object) -> dict:
    """data (a run record or a point, as `kind` says) in this version's form. where names the file in errors."""
    version = data.get("schema_version")
    if version == SCHEMA_VERSION:
        return data
    if version not in _STEPS:
        raise UserError(f"{where} has schema_version {version!r}; this epollbench reads {SCHEMA_VERSION} and "
                        f"upgrades {', '.join(map(str, sorted(_STEPS)))}: use the epollbench version that wrote it")
    while version != SCHEMA_VERSION:
        data = _STEPS[version][kind](dict(data))
        version = data["schema_version"] = version + 1
    return data


def _label_to_series(label: str) -> Series:
    """A version-1 series label: the backend alone for ephttpd, else server/backend."""
    server, _, backend = label.rpartition("/")
    return Series(server or DEFAULT_SERVER, backend)


def _run_1_to_2(record: dict) -> dict:
    plan = dict(record.get("plan") or {})
    if plan:
        servers = [plan.pop("server")] if "server" in plan else list(plan.get("servers") or [DEFAULT_SERVER])
        plan["servers"] = servers
        labels = plan.get("series") or []
        if labels:
            series = [_label_to_series(label) for label in labels]
        else:  # before several servers: the one server ran the plan's backends (ephttpd's when it was ephttpd)
            series = [Series(servers[0], b) for b in plan.get("backends") or []]
            if servers[0] != DEFAULT_SERVER:
                plan["backends"] = []
        plan["series"] = [{"server": s.server, "backend": s.backend} for s in series]
        record["plan"] = plan
    return record


def _point_1_to_2(point: dict) -> dict:
    if "mechanism" in point:
        point["backend"] = point.pop("mechanism")
    elif point.get("sweep") == "dead":
        series = _label_to_series(point["backend"])
        point["backend"] = series.backend
        point.setdefault("server_kind", series.server)
    return point


_STEPS = {1: {RUN: _run_1_to_2, POINT: _point_1_to_2, TUNING: lambda journal: journal}}


def series_of(point: dict) -> Series:
    """The line a (version-2) point belongs to: pipetest's points are ephttpd's event library's backends."""
    return Series(point.get("server_kind") or DEFAULT_SERVER, point["backend"])


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json_atomic(path: Path, data: dict, overwrite: bool = False) -> None:
    """Writes data to path through a temporary file and rename; refuses to replace a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: results are never overwritten")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, kind: str) -> dict:
    """A run record or a point (kind: RUN, POINT or TUNING) in this version's form."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: not a JSON object")
    return upgrade(data, kind, path)
