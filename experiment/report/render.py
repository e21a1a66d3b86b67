"""The report of a run, and the comparison of two runs: one self-contained HTML page, a markdown summary.

render(run) writes results/<run>/report/: index.html (figures, CSS and data inline; no request leaves the
file, so it opens offline from an attachment), report.md (GitHub markdown linking figures/*.png),
figures/*.png and *.svg, and report.zip (the report with run.json, points/ and raw/). The report is derived
from the points: re-rendering replaces the report folder and never writes anything else in the run.

compare(a, b) writes the same kind of page for two runs with the ratio B/A at each point both measured.

Repetitions of a point (same sweep, variant, backend and x) are grouped: the figures draw their median and
the min-max over the repetitions that succeeded. Data strings (hostnames, command lines) reach the HTML only
through Jinja2 autoescaping and the markdown only through md_escape.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import jinja2

from ..errors import UserError
from ..model import RunRecord
from ..run.results import Run
from . import anatomy, beyond, draw, export, kernels, styles
from .data import EMULATED, SWEEPS, RunData, legend_lines, load, reference
from .page import (
    engines_table,
    flatten,
    headlines,
    host_caps,
    host_limit_rows,
    key_table,
    method,
    notices,
    points_table,
    preflight_notes,
)
from .plots import run_figure_rows
from .summary import SUMMARY_METHOD, summaries
from .text import human, md_escape, number, percent, times

# ---------------------------------------------------------------------------------------------------------
# Writing

@cache
def html_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("experiment.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    _filters(env)
    return env


@cache
def md_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("experiment.report", "templates"), autoescape=False,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=md_escape, keep_trailing_newline=True)
    _filters(env)
    return env


_NUMERIC = re.compile(r"^[-–×+\d.,% ]+(?:\(host max\))?$")


def _filters(env: jinja2.Environment) -> None:
    env.filters.update(human=human, percent=percent, number=number, times=times, colour=styles.colour)
    env.tests["numeric"] = lambda text: bool(_NUMERIC.match(str(text)))


def replace_folder(target: Path, build: Callable[[Path], None]) -> None:
    """Builds a folder beside target and swaps it in, so a failed render leaves the old one whole."""
    if target.exists() and ((target / "run.json").exists() or (target / "points").exists()):
        raise UserError(f"{target} holds a run, not a report: choose another output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
    fresh.chmod(0o755)
    try:
        build(fresh)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / target.name)
            os.replace(fresh, target)
            shutil.rmtree(old)
        else:
            os.replace(fresh, target)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def _zip_time(stamp: str | None) -> tuple[int, int, int, int, int, int]:
    """A fixed timestamp for the zip's entries (the run's start) so the same run zips the same bytes."""
    match = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", stamp or "")
    if not match or int(match.group(1)) < 1980:  # zip's clock starts in 1980
        return (1980, 1, 1, 0, 0, 0)
    year, month, day, hour, minute, second = (int(v) for v in match.groups())
    return (year, month, day, hour, minute, second)


def _write_zip(run: Run, record: RunRecord, report_dir: Path, zip_path: Path) -> None:
    files = [(run.path / "run.json", "run.json")]
    for folder in ("points", "raw"):
        files += [(p, p.relative_to(run.path).as_posix()) for p in sorted((run.path / folder).rglob("*"))
                  if p.is_file()]
    files += [(p, "report/" + p.relative_to(report_dir).as_posix()) for p in sorted(report_dir.rglob("*"))
              if p.is_file() and p != zip_path]
    when = _zip_time(record.started_at)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path, name in files:
            info = zipfile.ZipInfo(f"{run.id}/{name}", date_time=when)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, path.read_bytes())


def epollbench_version() -> str:
    try:
        from importlib.metadata import version
        return version("epollbench")
    except Exception:  # running from a checkout that was never installed
        return "checkout"


def report_context(data: RunData) -> dict:
    """What the report's templates say: the first screen, the notices by kind, the figures (not yet drawn:
    render draws them), the tables, the method and the environment."""
    heads = headlines(data)
    figure_rows = run_figure_rows(data)
    holders, extrapolated = beyond.holders(data), beyond.extrapolated(data)
    walks = beyond.walks_note(data)
    return {
        "run_id": data.run.id,
        "record": data.record,
        "meta": data.metadata,
        "first": summaries(data, {p.name for row in figure_rows for p in row.plots}),
        "headlines": heads,
        "notes": [(text, "method-preflight") for text in preflight_notes(data)] + [(t, "") for t in notices(data)],
        "caps": host_caps(data),
        "limit_rows": host_limit_rows(data),
        "holders": holders,
        "extrapolated": extrapolated,
        "walks": walks,
        "method_texts": {"holders": beyond.HOLDERS_METHOD if holders else "",
                         "extrapolation": beyond.EXTRAPOLATION_METHOD if extrapolated else "",
                         "walks": beyond.WALKS_METHOD if walks else "", "summary": SUMMARY_METHOD},
        "key_table": key_table(data, heads),
        "figure_rows": figure_rows,
        "tables": [points_table(data, s) for s in data.sweeps() if s in SWEEPS],
        "method": method(data),
        "environment": flatten(data.metadata),
        "engines": engines_table(data.metadata),
        "run_record": flatten({k: v for k, v in data.record.to_json().items()
                               if k not in ("metadata", "plan", "cpusets", "limits", "schema_version")}),
        "command_line": shlex.join(str(c) for c in data.record.command_line),
        "reference": reference(),
        "reference_tables": _reference_tables(),
        "colours": legend_lines(),
        "version": epollbench_version(),
        "counts": Counter(p.status for p in data.points),
        "anatomy": anatomy.section(data),
        "kernels": kernels.section(data),
        "emulated": EMULATED if data.emulated else "",
        "issue": False,
    }


def _reference_number(value: float | None) -> str:
    return number(value, 0 if value is None or float(value).is_integer() else 1)


def _reference_tables() -> list[dict]:
    found = []
    for key, block in reference().items():
        if isinstance(block, dict) and "series" in block:
            xs = sorted({int(x) for pairs in block["series"].values() for x, _ in pairs})
            rows = [[name] + [_reference_number(dict((int(x), y) for x, y in pairs).get(x)) for x in xs]
                    for name, pairs in block["series"].items()]
            found.append({"key": key, "metric": block.get("metric", ""), "x": block.get("x", "dead connections"),
                          "xs": [f"{x:,}" for x in xs], "rows": rows, "about": block.get("about", ""),
                          "notes": block.get("notes", "")})
    return found


def render(run: Run) -> Path:
    """Writes run/report/ (index.html, report.md, figures/, points.csv, report.zip) from the points; returns
    index.html."""
    data = load(run)
    target = run.path / "report"
    context = report_context(data)

    def build(folder: Path) -> None:
        for row in context["figure_rows"]:
            row.files = [draw.save(plot, folder / "figures") for plot in row.plots]
        drawn = {f.name: f for row in context["figure_rows"] for f in row.files}
        for first in context["first"]:
            first.file = drawn.get(first.figure)
        for row in context["anatomy"].rows if context["anatomy"] else []:
            row.files = [draw.save(plot, folder / "figures") for plot in row.plots]
        (folder / "index.html").write_text(html_env().get_template("report.html.j2").render(context))
        (folder / "report.md").write_text(md_env().get_template("report.md.j2").render(context))
        (folder / "points.csv").write_text(export.to_csv(data.points))
        _write_zip(run, data.record, folder, folder / "report.zip")

    replace_folder(target, build)
    return target / "index.html"
