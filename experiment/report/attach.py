"""An issue-ready export of a run: results/<run>/attach/ with issue.md (to paste as an issue's or a comment's
body; the first screen's tables first, each naming its figure where it belongs), the first screen's figures as
PNGs (to drag in there), and report.zip.

GitHub refuses an issue body over 65,536 characters and an attachment over 25 MB: issue.md is cut to fit (the
points table goes first, then the notices; the first screen and the key numbers stay) and the zip's size is checked.
Nothing is sent from here: `attach` prints the `gh` command that would post issue.md.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..run.results import Run
from .data import RunData, load
from .plots import run_figure_rows
from .render import md_env, render, report_context
from .summary import summaries

BODY_LIMIT = 65_536  # characters GitHub accepts in an issue's or a comment's body
ATTACHMENT_LIMIT = 25 * 1024 * 1024  # bytes GitHub accepts for one attached file
FOLDER = "attach"


@dataclass(frozen=True)
class Attachment:
    folder: Path
    issue_md: Path
    figures: list[Path]
    zip_path: Path
    gh_commands: list[str]


def key_figures(data: RunData) -> list[str]:
    """The names of the figures that matter most: the first screen's, one per variant (summary.key_figure: the
    dead sweep's reply rate relative to 0 dead, or its server CPU per reply where the client saturated)."""
    return [s.figure for s in summaries(data, {p.name for row in run_figure_rows(data) for p in row.plots})]


def environment_line(data: RunData) -> str:
    meta = data.metadata
    server_image = (meta.get("image_ids") or {}).get("server") or "–"
    commit = (meta.get("git") or {}).get("commit") or "–"
    dirty = " (dirty)" if (meta.get("git") or {}).get("dirty") else ""
    fd_limit = data.record.limits.get("fd_hard_limit") or meta.get("fd_hard_limit") or "–"
    return (f"kernel {meta.get('kernel', '–')}, {meta.get('cpu_model', '–')}, {meta.get('cpus', '–')} CPUs, "
            f"fd limit {fd_limit}, server image {server_image[:19]}, git {commit[:12]}{dirty}")


def attach(run: Run) -> Attachment:
    """Renders the run's report, then writes its attach/ folder; refuses a zip GitHub would not take."""
    index = render(run)
    report_dir = index.parent
    data = load(run)
    folder = run.path / FOLDER
    if folder.exists():
        shutil.rmtree(folder)  # derived from the report alone, like the report folder
    folder.mkdir()
    figures = []
    for name in key_figures(data):
        source = report_dir / "figures" / f"{name}.png"
        if source.exists():
            figures.append(Path(shutil.copy2(source, folder / source.name)))
    zip_path = Path(shutil.copy2(report_dir / "report.zip", folder / "report.zip"))
    if zip_path.stat().st_size > ATTACHMENT_LIMIT:
        raise UserError(f"{zip_path} is {zip_path.stat().st_size / 2**20:.1f} MB, over GitHub's 25 MB for one "
                        f"file: attach issue.md and the figures, and put report.zip elsewhere, or leave raw/ out "
                        f"of it (zip -d {zip_path.name} '{run.id}/raw/*')")
    context = {**report_context(data), "issue": True, "environment_line": environment_line(data),
               "command": shlex.join(str(c) for c in data.record.command_line),
               "figures": [f.name for f in figures], "zip_name": zip_path.name}
    text = _fit(context)
    issue_md = folder / "issue.md"
    issue_md.write_text(text)
    files = " ".join(shlex.quote(str(p)) for p in [*figures, zip_path])
    gh = [f"gh issue create --title {shlex.quote('epollbench: ' + run.id)} --body-file {shlex.quote(str(issue_md))}",
          f"gh issue comment NUMBER --body-file {shlex.quote(str(issue_md))}",
          f"then drag in: {files}"]
    return Attachment(folder, issue_md, figures, zip_path, gh)


# What issue.md leaves out, in turn, to stay within BODY_LIMIT: the points tables, then the notices.
CUTS: dict[str, dict[str, object]] = {"tables": {"tables": []},
        "notices": {"notes": [], "caps": [], "limit_rows": [], "holders": None, "extrapolated": None, "walks": None}}


def _fit(context: dict) -> str:
    """issue.md within BODY_LIMIT: first without the points table, then without the notices, saying so."""
    template = md_env().get_template("issue.md.j2")
    for cut in ((), ("tables",), ("tables", "notices")):
        shown = {**context, **{k: v for name in cut for k, v in CUTS[name].items()}, "cut": cut}
        text = template.render(shown)
        if len(text) <= BODY_LIMIT:
            return text
    raise UserError(f"issue.md stays over GitHub's {BODY_LIMIT:,} characters even without tables and notices: "
                    "attach report.md instead")
