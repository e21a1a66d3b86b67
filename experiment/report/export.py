"""A run's points as flat rows for a spreadsheet or a notebook: report/points.csv and `invoke export`.

One row per point file; the columns are the point's place (sweep, variant, server, backend, kernel, level,
repetition; kernel is empty on the host's own, and accelerator is that of the guest a point of --kernels was
measured in: kvm, or tcg for an emulated CPU), what became of it, every figure any sweep measures
(model.FIGURES, empty where the point's sweep does not measure it or it was not measured), who else held the
server's CPUs (third parties' share of them and their longest stretch, empty where not watched), the open
loop's p99 without the third parties' stretches, and the checks' flags that were raised.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields

from .. import model
from ..errors import UserError
from ..model import Point

PLACE = ("id", "sweep", "variant", "server", "backend", "kernel", "accelerator", "level", "repetition", "status",
         "reason", "load", "host_max", "started_at", "ended_at")
FIGURES = tuple(dict.fromkeys(f.name for kind in model.FIGURES.values() for f in fields(kind)))
# Who else held the server's CPUs (model.Point.interference, tail).
OTHERS = ("others_share", "others_longest_ms", "p99_without_others_ms")
COLUMNS = (*PLACE, *FIGURES, *OTHERS, "flags")
FORMATS = ("csv", "json")


def row(point: Point) -> dict:
    figures = asdict(point.figures) if point.figures else {}
    return {"id": point.id, "sweep": point.sweep, "variant": point.variant, "server": point.series.server,
            "backend": point.series.backend, "kernel": point.series.kernel,
            "accelerator": (point.guest or {}).get("accelerator") or "", "level": point.x,
            "repetition": point.repetition, "status": point.status, "reason": point.reason or "",
            "load": point.load or "",
            "host_max": point.host_max, "started_at": point.started_at, "ended_at": point.ended_at or "",
            **{name: figures.get(name) for name in FIGURES}, **_others(point),
            "flags": ";".join(sorted(name for name, on in point.flags.items() if on))}


def _others(point: Point) -> dict:
    server = point.interference.get(model.SERVER_CPUS) if isinstance(point.interference, dict) else None
    kept = point.tail.kept if isinstance(point.tail, model.Tail) else None
    return {"others_share": server.third_party_share if server else None,
            "others_longest_ms": server.longest.ms if server and server.longest else None,
            "p99_without_others_ms": kept.p99 if kept else None}


def to_csv(points: list[Point]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for point in points:
        writer.writerow({k: "" if v is None else v for k, v in row(point).items()})
    return out.getvalue()


def to_json(points: list[Point]) -> str:
    """The point files' records (this schema version), in one JSON array."""
    return json.dumps([point.to_json() for point in points], indent=1) + "\n"


def export(points: list[Point], fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: valid: {', '.join(FORMATS)}")
    return to_csv(points) if fmt == "csv" else to_json(points)
