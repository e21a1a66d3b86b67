"""The report and the comparison, rendered from the real runs committed under tests/data/runs/.

Expected numbers are computed here from the point files themselves, never copied from a render.
The browser test loads the page in headless Chromium with no network and checks that nothing is fetched,
nothing errs and every figure is drawn.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from experiment import catalog, model
from experiment.catalog import Series
from experiment.errors import UserError
from experiment.host import checks
from experiment.report import attach, comparison, export, kernels, styles
from experiment.report.data import FLAG_TEXT, load
from experiment.report.page import flatten, headlines, missing_levels, notices
from experiment.report.plots import run_figure_rows
from experiment.report.render import render
from experiment.report.summary import summaries
from experiment.report.text import human, md_escape, percent, times
from experiment.run.results import Run

RUNS_DIR = Path(os.environ.get("EPOLLBENCH_TEST_RUNS", Path(__file__).parent / "data" / "runs"))
RUNS = sorted(p.parent for p in RUNS_DIR.glob("*/run.json") if not p.parent.is_symlink())
needs_runs = pytest.mark.skipif(
    not RUNS, reason=f"no committed run under {RUNS_DIR}: a small real run is committed there by the sweep's author")
MAIN_METRIC = {"dead": "reply_rate", "pipetest": "passes_per_s"}
METRICS = {"dead": ("reply_rate", "server_cpu_us_per_reply", "reply_time_ms"), "pipetest": ("passes_per_s",)}
SCRIPT = '<script>alert("x")</script>'


def copy_run(source: Path, parent: Path) -> Run:
    """The run's files without any report: tests render copies, never the committed run."""
    target = parent / source.name
    shutil.copytree(source, target, ignore=lambda d, names: ["report"] if Path(d) == source else [])
    return Run(target)


def read_points(run: Run) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.points_dir.glob("*.json"))]


def write_point(run: Run, point: dict) -> None:
    run.point_path(point["id"]).write_text(json.dumps(point, indent=2))


def medians(points: list[dict]) -> dict[tuple, dict[str, float]]:
    """(sweep, variant, backend, x) -> metric -> median over the ok repetitions, from the point files."""
    values: dict[tuple, dict[str, list[float]]] = {}
    for p in points:
        if p["status"] != "ok":
            continue
        for metric in METRICS[p["sweep"]]:
            value = (p.get("figures") or {}).get(metric)
            if isinstance(value, int | float):
                values.setdefault((p["sweep"], p["variant"], p["backend"], p["x"]), {}).setdefault(metric, []) \
                    .append(value)
    return {key: {m: statistics.median(v) for m, v in by_metric.items()} for key, by_metric in values.items()}


def expected_figures(points: list[dict]) -> set[str]:
    slugs = {"reply_rate": "reply-rate", "server_cpu_us_per_reply": "cpu-per-reply",
             "reply_time_ms": "reply-time", "passes_per_s": "passes"}
    names = set()
    for (sweep, variant, _, _), by_metric in medians(points).items():
        names |= {f"{sweep}-{slugs[m]}-{variant}" for m in by_metric}
        if MAIN_METRIC[sweep] in by_metric:
            names.add(f"{sweep}-normalised-{variant}")
    return names


def tree_digest(run: Run) -> dict[str, str]:
    """Every file of the run outside report/, with its content hash."""
    return {str(p.relative_to(run.path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.path.rglob("*")) if p.is_file() and "report" not in p.relative_to(run.path).parts}


@pytest.fixture(scope="module", params=RUNS or [None], ids=lambda p: p.name if p else "none")
def rendered(request, rendered_copy) -> tuple[Run, Path]:
    """A copy of each committed run, rendered once for the read-only tests."""
    if request.param is None:
        pytest.skip(f"no committed run under {RUNS_DIR}: a small real run is committed there by the sweep's author")
    return rendered_copy(request.param)


# ---------------------------------------------------------------------------------------------------------
# Without run data: the number formats the headline relies on

def test_human_numbers_keep_three_significant_digits():
    assert [human(v) for v in (31712, 60000, 414.5, 86, 0.5, 1_023_392, 999.96, 0)] == \
        ["31.7k", "60.0k", "414", "86.0", "0.50", "1.02M", "1.00k", "0"]


def test_percent_keeps_small_shares_visible():
    assert [percent(r) for r in (0.53, 1.0, 0.021, 0.00099)] == ["53%", "100%", "2.1%", "0.099%"]


def test_markdown_escape_makes_markup_literal():
    escaped = md_escape(f"{SCRIPT} | *x* [l](u) a&b")
    assert escaped == '&lt;script&gt;alert("x")&lt;/script&gt; \\| \\*x\\* \\[l\\](u) a&amp;b'


def test_every_line_has_its_own_style_and_each_server_keeps_its_backends_colour():
    assert set(styles.BACKENDS) == set(catalog.BACKENDS)
    assert set(styles.SERVERS) == set(catalog.SERVERS) - {catalog.DEFAULT_SERVER}
    found = [styles.style(Series(kind.name, b)) for kind in catalog.SERVERS.values() for b in kind.backends]
    assert len({(s["color"], s["marker"], str(s["linestyle"])) for s in found}) == len(found)
    assert styles.style(Series("nginx", "epoll"))["color"] == styles.style(Series("ephttpd", "epoll"))["color"]
    assert styles.style(Series("nginx", "epoll"))["marker"] != styles.style(Series("ephttpd", "epoll"))["marker"]
    unknown = styles.UNKNOWN
    for series in (Series("ephttpd", "kqueue"), Series("apache", "epoll")):
        assert styles.style(series) == {"color": unknown.colour, "marker": unknown.marker,
                                        "linestyle": unknown.linestyle}


def test_a_backends_lines_on_several_kernels_keep_its_colour_and_marker_and_take_each_kernels_dash():
    names = ("6.1", "7.2")
    found = {(b, k): styles.style(Series("ephttpd", b, "", k), names) for b in ("poll", "epoll") for k in names}
    for b in ("poll", "epoll"):
        own = styles.style(Series("ephttpd", b))
        assert {(s["color"], s["marker"]) for (line, _), s in found.items() if line == b} == \
            {(own["color"], own["marker"])}
    assert len({(s["color"], s["marker"], str(s["linestyle"])) for s in found.values()}) == len(found)
    assert [styles.kernel_dash(k, names)[0] for k in names] == ["solid", "dashed"]


def test_the_catalog_imports_nothing_of_the_report_that_styles_its_lines():
    script = "import sys, experiment.catalog; print(sorted(m for m in sys.modules if m.startswith('experiment.')))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "experiment.catalog" in loaded and "experiment.report" not in loaded


# ---------------------------------------------------------------------------------------------------------
# Rendered from the committed runs

@needs_runs
def test_headline_numbers_equal_the_data(rendered):
    run, index = rendered
    points = read_points(run)
    expected = medians(points)
    page = index.read_text()
    data = load(run)
    heads = headlines(data)
    sweeps_variants = {(p["sweep"], p["variant"]) for p in points if p["status"] == "ok"}
    assert {(h.sweep, h.variant) for h in heads} == sweeps_variants
    for head in heads:
        metric = MAIN_METRIC[head.sweep]
        # The level: the largest x measured by every backend, leaving out a backend the host stopped
        # earlier than the others (its higher levels skipped); that one is quoted at its own last level.
        measured, attempted, skipped = {}, {}, {}
        for p in points:
            if (p["sweep"], p["variant"]) == (head.sweep, head.variant):
                into = skipped if p["status"] == "skipped" else attempted
                into[p["backend"]] = max(into.get(p["backend"], 0), p["x"])
        for (sweep, variant, backend, x), by_metric in expected.items():
            if (sweep, variant) == (head.sweep, head.variant) and metric in by_metric:
                measured.setdefault(backend, {})[x] = by_metric[metric]
        top = max(attempted[b] for b in measured)
        full = [b for b in measured if attempted[b] == top or skipped.get(b, -1) < attempted[b]]
        assert head.x == max(set.intersection(*(set(measured[b]) for b in full)))
        assert {i.series.label for i in head.items} == set(measured)
        for item in head.items:
            at = head.x if item.series.label in full else max(measured[item.series.label])
            base_x = min(measured[item.series.label])
            assert (item.x, item.base_x) == (at, base_x)
            assert item.value == pytest.approx(measured[item.series.label][at], rel=1e-12)
            assert item.base == pytest.approx(measured[item.series.label][base_x], rel=1e-12)
            assert human(measured[item.series.label][at]) in head.text
            assert percent(measured[item.series.label][at] / measured[item.series.label][base_x]) in head.text
        assert f"{head.x:,}" in head.text
        assert html.escape(head.text, quote=False) in page


@needs_runs
def test_the_first_screen_quotes_each_lines_numbers_at_the_level_it_reached(rendered):
    run, index = rendered
    points = read_points(run)
    expected = medians(points)
    data = load(run)
    firsts = summaries(data, {p.stem for p in (index.parent / "figures").glob("*.png")})
    assert [s.variant for s in firsts] == [v for v in ("up", "smp") if any(p["variant"] == v for p in points)]
    page = html.unescape(index.read_text())
    for first in firsts:
        dead = {(b, x): m for (sweep, v, b, x), m in expected.items() if (sweep, v) == ("dead", first.variant)}
        ok = [p for p in points if (p["sweep"], p["variant"], p["status"]) == ("dead", first.variant, "ok")]
        levels = {(p["backend"], p["x"]) for p in ok}
        saturated = {(p["backend"], p["x"]) for p in ok if (p.get("flags") or {}).get(checks.CLIENT_SATURATED)}
        slug = "cpu-per-reply" if len(saturated) > len(levels) / 2 else "normalised"
        assert first.figure == f"dead-{slug}-{first.variant}"
        drawn = base64.b64encode((index.parent / "figures" / f"{first.figure}.png").read_bytes()).decode()
        assert re.search(rf'<div class="first" id="summary-{first.variant}">\s*<figure class="key">\s*'
                         rf'<img src="data:image/png;base64,{re.escape(drawn)}"', index.read_text())
        for row in first.rows:
            xs = sorted(x for b, x in dead if b == row.series.label)
            top, base = dead[(row.series.label, xs[-1])], dead[(row.series.label, xs[0])]
            assert row.cells["reached"].text == f"{xs[-1]:,}"
            assert row.cells["rate"].text == human(top["reply_rate"])
            assert row.cells["share"].text == percent(top["reply_rate"] / base["reply_rate"])
            assert row.cells["cpu"].text == f"{top['server_cpu_us_per_reply']:.1f}"
        assert 1 <= len(first.prose) <= 3
        assert " ".join(first.prose) in page and first.title in page
    # The summary comes before every notice and figure row on the page and in report.md.
    markdown = (index.parent / "report.md").read_text()
    assert markdown.index("| backend |") < min(markdown.index(h) for h in ("### Figures", "### Key numbers"))
    assert index.read_text().index('class="summary"') < index.read_text().index('id="notices"')


@needs_runs
def test_every_figure_is_present(rendered):
    run, index = rendered
    names = expected_figures(read_points(run))
    assert names
    page = index.read_text()
    markdown = (index.parent / "report.md").read_text()
    folder = index.parent / "figures"
    assert {p.stem for p in folder.glob("*.png")} == names
    assert {p.stem for p in folder.glob("*.svg")} == names
    for name in names:
        assert (folder / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        svg = ET.parse(folder / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg")
        assert "<dc:date>" not in (folder / f"{name}.svg").read_text()
        assert re.search(rf'<figure id="fig-{re.escape(name)}">\s*<img src="data:image/png;base64,', page)
        assert f"](figures/{name}.png)" in markdown


@needs_runs
def test_page_requests_nothing_from_outside(rendered):
    _, index = rendered
    page = index.read_text()
    for attribute, value in re.findall(r'\b(src|href|action|srcset|poster|data)\s*=\s*"([^"]*)"', page):
        if attribute == "src":
            assert value.startswith("data:image/png;base64,"), value[:80]
        else:
            assert value.startswith("#") or value in ("report.md", "report.zip"), (attribute, value)
    assert "<script" not in page.lower()
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page


@needs_runs
def test_table_lists_every_point_and_the_host_cap(rendered):
    run, index = rendered
    points = read_points(run)
    page = html.unescape(index.read_text())
    record = json.loads((run.path / "run.json").read_text())
    for p in points:
        if p["status"] != "ok":
            assert p["reason"] and p["reason"] in page
    for (sweep, _variant, backend, x), by_metric in medians(points).items():
        main = by_metric.get(MAIN_METRIC[sweep])
        if main is not None:
            assert f"{main:,.0f}" in page, (sweep, backend, x)
    if any(p["status"] == "skipped" for p in points):
        fd_limit = record.get("limits", {}).get("fd_hard_limit") or record["metadata"]["fd_hard_limit"]
        assert f"This host allows {fd_limit} open files per process" in page
    for key, value in flatten(record["metadata"]):
        assert key in page and value in page


@needs_runs
def test_zip_bundles_report_and_raw_results(rendered):
    run, index = rendered
    with zipfile.ZipFile(index.parent / "report.zip") as bundle:
        names = set(bundle.namelist())
        assert bundle.read(f"{run.id}/run.json") == (run.path / "run.json").read_bytes()
    expected = {f"{run.id}/run.json", f"{run.id}/report/index.html", f"{run.id}/report/report.md",
                f"{run.id}/report/points.csv"}
    expected |= {f"{run.id}/{p.relative_to(run.path).as_posix()}" for folder in ("points", "raw")
                 for p in (run.path / folder).rglob("*") if p.is_file()}
    expected |= {f"{run.id}/report/figures/{p.name}" for p in (index.parent / "figures").iterdir()}
    assert names == expected


@needs_runs
def test_data_strings_are_escaped(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    record = json.loads((run.path / "run.json").read_text())
    record["metadata"]["hostname"] = SCRIPT
    record["command_line"] = ["invoke", "reproduce", SCRIPT]
    (run.path / "run.json").write_text(json.dumps(record))
    with_commands = [p for p in read_points(run) if any((p.get(k) or {}).get("command") for k in model.PROGRAMS)]
    point = with_commands[0]
    part = next(k for k in model.PROGRAMS if k in point)
    point[part]["command"] = [*point[part]["command"], SCRIPT]
    write_point(run, point)
    index = render(run)
    page = index.read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert page.count(SCRIPT) == 0 and html.unescape(page).count(SCRIPT) >= 3  # host, command line, command
    markdown = (index.parent / "report.md").read_text()
    assert "<script" not in markdown
    assert md_escape(SCRIPT) in markdown
    compared = comparison.write(run, run, tmp_path / "compare")
    assert "<script" not in compared.read_text().lower()
    assert "<script" not in (compared.parent / "report.md").read_text()


@needs_runs
def test_failed_and_skipped_points_render_with_reasons(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    points = read_points(run)
    ok = [p for p in points if p["status"] == "ok"]
    # A copy whose committed run lacks one kind gets it by marking a measured repetition so.
    for status in ("failed", "skipped"):
        if not any(p["status"] == status for p in points):
            victim = ok.pop()
            victim.update(status=status, reason=f"{status} here by the test: {SCRIPT}", figures=None)
            write_point(run, victim)
    index = render(run)
    page = index.read_text()
    assert "<script" not in page.lower()
    for p in read_points(run):
        if p["status"] in ("failed", "skipped"):
            assert p["reason"] in html.unescape(page)
            assert p["id"] in page
    assert re.search(r'<tr class="(failed|partial)">', page)
    assert re.search(r"\d+ points? failed: ", page)


@needs_runs
def test_rerendering_replaces_the_report_and_leaves_results_alone(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    before = tree_digest(run)
    first = render(run)
    first_bytes = first.read_bytes(), (first.parent / "report.zip").read_bytes()
    (first.parent / "stale.txt").write_text("left from an older render")
    second = render(run)
    assert tree_digest(run) == before
    assert not (second.parent / "stale.txt").exists()
    assert (second.read_bytes(), (second.parent / "report.zip").read_bytes()) == first_bytes
    assert not [p for p in run.path.iterdir() if p.name.startswith(".report")]


@needs_runs
def test_loader_rejects_an_unknown_schema_version(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    record = json.loads((run.path / "run.json").read_text())
    (run.path / "run.json").write_text(json.dumps({**record, "schema_version": 99}))
    with pytest.raises(UserError, match="schema_version 99"):
        render(run)
    assert not (run.path / "report").exists()
    (run.path / "run.json").write_text(json.dumps(record))
    point = read_points(run)[0]
    write_point(run, {**point, "schema_version": 99})
    with pytest.raises(UserError, match="schema_version 99"):
        load(run)


@needs_runs
def test_compare_gives_the_ratios_the_data_implies(tmp_path):
    run_a = copy_run(RUNS[0], tmp_path / "a")
    run_b = copy_run(RUNS[1] if len(RUNS) > 1 else RUNS[0], tmp_path / "b")
    index = comparison.write(run_a, run_b, tmp_path / "compare")
    a, b = medians(read_points(run_a)), medians(read_points(run_b))
    common = {k for k in set(a) & set(b) if MAIN_METRIC[k[0]] in a[k] and MAIN_METRIC[k[0]] in b[k]}
    compared, left_out = comparison.compared_points(load(run_a), load(run_b))
    labelled = [(c, (c.key[0], c.key[1], c.key[2].label, c.key[3])) for c in compared]  # as the files key them
    assert {key for _, key in labelled} == common
    page = html.unescape(index.read_text())
    for c, key in labelled:
        for metric in METRICS[key[0]]:
            if metric in a[key] and metric in b[key]:
                ratio = b[key][metric] / a[key][metric]
                assert c.ratio(metric) == pytest.approx(ratio, rel=1e-12)
                assert times(ratio) in page
    every = {(p["sweep"], p["variant"], p["backend"], p["x"]) for run in (run_a, run_b) for p in read_points(run)}
    neither = [re.match(r"(\d+) points? measured by neither run", s) for s in left_out]
    assert sum(int(m.group(1)) if m else 1 for m in neither) == len(every - common)
    assert (index.parent / "report.md").exists()
    assert {p.suffix for p in (index.parent / "figures").iterdir()} == {".png", ".svg"}
    if run_a.record().metadata.get("kernel") != run_b.record().metadata.get("kernel"):
        assert "Not the same host or kernel" in page


# ---------------------------------------------------------------------------------------------------------
# In a real browser, offline

@pytest.fixture
def chromium():
    """Debian's chromium, which ./run test installs (tools.require: a failure without it under CI)."""
    import devtools
    import tools

    tools.require("chromium")
    return devtools


@pytest.mark.browser
def test_page_loads_offline_in_chromium(chromium, rendered, tmp_path):
    run, index = rendered
    compared = comparison.write(run, run, tmp_path / "compare")
    with chromium.Chromium(tmp_path / "chromium") as browser:
        loads = [browser.load(index), browser.load(compared), browser.load(index, media="print")]
    for page_load in loads:
        assert page_load.failed == []
        assert page_load.errors == []
        assert [u for u in page_load.requests if not u.startswith("data:")] == [page_load.url]
        assert page_load.figures
        for figure in page_load.figures:
            assert figure["tag"] == "img" and figure["decoded"], figure
            assert figure["width"] > 100 and figure["height"] > 50, figure
        assert page_load.screenshot.startswith(b"\x89PNG")
        (tmp_path / f"screenshot-{loads.index(page_load)}.png").write_bytes(page_load.screenshot)
    assert {f["id"] for f in loads[0].figures if f["id"]} == {f"fig-{n}" for n in expected_figures(read_points(run))}


# Where the first figure and the first summary table lie on the page, in CSS pixels from its top-left corner.
FIRST_SCREEN_JS = """
(() => {
  const box = e => {
    if (!e) return null;
    const r = e.getBoundingClientRect();
    return {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left + scrollX, right: r.right + scrollX,
            width: r.width, height: r.height};
  };
  const figure = document.querySelector('figure img');
  const table = document.querySelector('table');
  const frame = table && table.closest('.wide');
  return {figure: box(figure), figureInSummary: !!(figure && figure.closest('#summary')),
          decoded: !!(figure && figure.complete && figure.naturalWidth > 0),
          table: box(table), tableIsSummary: !!(table && table.classList.contains('summary')),
          tableClipped: !!(frame && frame.scrollWidth > frame.clientWidth + 1),
          viewport: {width: innerWidth, height: innerHeight}};
})()
"""


@pytest.mark.browser
def test_the_first_screen_shows_the_key_figure_and_the_summary_table(chromium, rendered_copy, tmp_path):
    """The paper reference opened at 1280 x 800: its first figure (at least 600 px wide) and its first summary
    table lie wholly within the first screen, before anything else the page says."""
    paper = next(p for p in REFERENCE_RUNS if p.name.endswith("-paper"))
    _run, index = rendered_copy(paper)
    with chromium.Chromium(tmp_path / "chromium") as browser:
        page = browser.load(index, width=1280, height=800, expression=FIRST_SCREEN_JS)
    (tmp_path / "first-screen.png").write_bytes(page.screenshot)
    assert page.failed == [] and page.errors == []
    boxes = page.evaluated
    assert boxes["viewport"] == {"width": 1280, "height": 800}
    assert boxes["figureInSummary"] and boxes["decoded"] and boxes["tableIsSummary"], boxes
    figure, table = boxes["figure"], boxes["table"]
    assert figure["width"] >= 600, figure
    for box in (figure, table):
        assert box["top"] >= 0 and box["bottom"] <= 800, (box, boxes)
        assert box["left"] >= 0 and box["right"] <= 1280, (box, boxes)
    assert not boxes["tableClipped"], "the summary table is wider than its column: part of it is scrolled away"


@needs_runs
@pytest.mark.parametrize("flag, notice", [(checks.CPU_THROTTLED, "throttled during the measurement"),
                                          (checks.CPU_FREQUENCY_CHANGED, "CPU clock moved")])
def test_a_point_flag_the_checks_record_reaches_the_notices_and_the_headline(tmp_path, flag, notice):
    run = copy_run(RUNS[0], tmp_path)
    points = read_points(run)
    dead = [p for p in points if p["status"] == "ok" and p["sweep"] == "dead"]
    for point in dead:  # the flag as checks.py records it, on every point a headline quotes
        point.setdefault("flags", {})[flag] = True
        write_point(run, point)
    data = load(run)
    assert any(notice in text for text in notices(data))
    quoted = [h for h in headlines(data) if h.sweep == "dead"]
    assert quoted and all(FLAG_TEXT[flag] in h.text for h in quoted)


REFERENCE_RUNS = sorted(p.parent for p in (Path(__file__).resolve().parent.parent / "results" / "reference")
                        .glob("*/run.json"))


@pytest.mark.parametrize("committed", REFERENCE_RUNS, ids=lambda p: p.name)
def test_a_complete_run_has_no_planned_point_without_a_result(committed):
    """The plan's own lines (plan.planned) decide what was planned: quick's open loop runs on UP alone, and a
    run's holders series have their direct overlap level."""
    data = load(Run(committed))
    assert data.record.status == "complete"
    assert missing_levels(data) == []
    assert not [n for n in notices(data) if "no result" in n]


@pytest.mark.parametrize("committed", REFERENCE_RUNS, ids=lambda p: p.name)
def test_where_the_client_saturated_everywhere_the_first_figure_is_server_cpu_per_reply(committed):
    """Every dead point of the reference runs has the client saturated: their reply rate is the client's limit,
    so each variant's first figure is the server's CPU per reply, and poll is the line that collapsed."""
    data = load(Run(committed))
    firsts = summaries(data, {p.name for row in run_figure_rows(data) for p in row.plots})
    assert [s.figure for s in firsts] == [f"dead-cpu-per-reply-{v}" for v in data.variants("dead")]
    for first in firsts:
        assert first.figure_note.startswith("Server CPU per reply: the client saturated at ")
        collapsed = next(s for s in first.prose if s.startswith("Collapsed: "))
        assert collapsed.startswith(("Collapsed: poll, ", "Collapsed: poll on ")) and "epoll" not in collapsed
        flat = first.prose[0]
        assert flat.startswith("Flat: ") and not re.search(r"(?<![\w-])poll\b", flat), "poll is never flat"
        # Under emulation (the run over kernels) epoll's cost grows ×1.26–1.39 to 10,000: in between, not flat.
        assert "epoll" in flat or data.kernels() != [""]


@needs_runs
def test_a_point_file_that_is_gone_is_said_to_have_no_result(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    gone = next(p for p in read_points(run) if p["sweep"] == "dead" and p["status"] == "ok" and p["x"] > 0)
    run.point_path(gone["id"]).unlink()
    label = f"dead {gone['variant'].upper()} {gone['backend']} {gone['x']:,}"
    assert missing_levels(load(run)) == [label]
    assert f"1 planned point has no result: {label}." in notices(load(run))


@needs_runs
def test_the_csv_has_one_row_per_point_with_its_figures_and_flags(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    render(run)
    rows = list(csv.DictReader((run.path / "report" / "points.csv").open()))
    files = {p["id"]: model.upgrade(p, model.POINT, p["id"]) for p in read_points(run)}
    assert sorted(r["id"] for r in rows) == sorted(files)
    for r in rows:
        point = files[r["id"]]
        assert (r["sweep"], r["variant"], r["backend"], int(r["level"])) == (point["sweep"], point["variant"],
                                                                            point["backend"], point["x"])
        for name, value in point["figures"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert float(r[name]) == pytest.approx(value), (r["id"], name)
            else:
                assert r[name] == ("" if value is None else str(value)), (r["id"], name)
        assert (r["flags"].split(";") if r["flags"] else []) == sorted(k for k, on in point["flags"].items() if on)
    assert export.export(Run(run.path).points(), "csv") == (run.path / "report" / "points.csv").read_text()
    assert [p["id"] for p in json.loads(export.export(Run(run.path).points(), "json"))] == sorted(files)
    with pytest.raises(UserError, match="--format 'xml': valid: csv, json"):
        export.export([], "xml")


@needs_runs
def test_attach_writes_an_issue_body_under_githubs_limit_beside_the_figures_it_names(tmp_path, monkeypatch):
    run = copy_run(RUNS[-1], tmp_path)
    made = attach.attach(run)
    text = made.issue_md.read_text()
    assert len(text) <= attach.BODY_LIMIT
    data = load(run)
    assert all(h.text.replace("_", "\\_") in text for h in headlines(data))
    assert attach.environment_line(data).replace("_", "\\_") in text and "**Command:**" in text
    named = re.findall(r"`([\w.-]+\.png)`", text)
    assert named and set(named) == {p.name for p in made.figures}
    # The first screen comes first: each variant's key figure named above its table, before any notice.
    first_table = text.index("| backend |")
    assert text.index(f"**Figure:** `{made.figures[0].name}`") < first_table
    assert first_table < text.index("### Key numbers")
    assert "### Notices" not in text or first_table < text.index("### Notices")
    assert all((made.folder / name).read_bytes() == (run.path / "report" / "figures" / name).read_bytes()
               for name in named)
    assert made.zip_path.stat().st_size < attach.ATTACHMENT_LIMIT and zipfile.is_zipfile(made.zip_path)
    assert any(str(made.issue_md) in line and line.startswith("gh issue create") for line in made.gh_commands)
    # Over the limit, the points tables go first and the body says so.
    monkeypatch.setattr(attach, "BODY_LIMIT", len(text) - 1)
    shorter = attach.attach(run).issue_md.read_text()
    assert len(shorter) < len(text) and "Left out to stay under GitHub's body limit: tables" in shorter


# ---------------------------------------------------------------------------------------------------------
# Where the time goes (the kernel cost anatomy)

SHARES = {"poll": {0: 0.15, 3000: 0.5}, "epoll": {0: 0.05, 3000: 0.05}}


def with_anatomy(run: Run, unavailable_at: str | None = None) -> list[dict]:
    """The committed run as if measured with the anatomy: its plan says so and every measured dead point gets
    made-up anatomy and memory entries in the points' format (model.AnatomyFigures, model.MemoryFigures)."""
    record = json.loads((run.path / "run.json").read_text())
    record["plan"]["anatomy"] = True
    (run.path / "run.json").write_text(json.dumps(record))
    changed = []
    for p in read_points(run):
        if p["sweep"] != "dead" or p["status"] != "ok":
            continue
        readiness = SHARES.get(p["backend"], {}).get(p["x"], 0.3)
        shares = {"readiness_scan": readiness, "wait_sched": 0.05, "tcp_receive": 0.1, "tcp_send": 0.8 - readiness,
                  "syscall_entry": 0.02, "user": 0.02, "other": 0.01}
        p["anatomy"] = {"window_s": 1.0, "syscalls_per_reply": 2.25,
                        "syscalls": {"recvfrom": 1.0, "sendto": 1.0, "epoll_wait" if "epoll" in p["backend"] else
                                     "poll": 0.2, "other": 0.05},
                        "context_switches_per_reply": 0.01, "context_switches": {"voluntary": 0.004,
                                                                                 "involuntary": 0.006},
                        "cpu_share": shares, "folded_stacks": f"raw/{p['id']}.anatomy/stacks.folded",
                        "replies": {"counting": 20000, "profile": 25000}, "samples": 400, "replies_source": "server",
                        "wall_s": 3.5}
        p["memory"] = {"server_rss_bytes": 4 * 2**20} if p["x"] == 0 else {
            "server_rss_bytes": 5 * 2**20, "kernel_bytes_per_dead": 7600.0,
            "slab_bytes_per_dead": {"TCP": 4700.0, "filp": 380.0, "eventpoll_epi": 128.0},
            "slab_objects_per_dead": {"TCP": 2.0, "eventpoll_epi": 1.0}, "watches_per_dead": 1.0,
            "mechanism_bytes_per_dead": 128.0, "merged_caches": {}, "scope": "system-wide", "dead_levels": [0, p["x"]]}
        if unavailable_at == p["id"]:
            p["anatomy"] = {"unavailable": f"perf refused here by the test: {SCRIPT}"}
        write_point(run, p)
        changed.append(p)
    return changed


@needs_runs
def test_where_the_time_goes_shows_the_cpu_split_syscalls_and_memory_the_points_imply(tmp_path):
    run = copy_run(RUNS[0], tmp_path)
    points = with_anatomy(run)
    index = render(run)
    page, md = html.unescape(index.read_text()), (index.parent / "report.md").read_text()
    for text in (page, md):
        assert "Where the time goes" in text
        assert "in a window of their own after each point's headline measurement" in text
    for p in points:
        cost = p["figures"]["server_cpu_us_per_reply"]
        scan = f"{p['anatomy']['cpu_share']['readiness_scan'] * cost:,.2f}"
        row = f"| {p['variant'].upper()} | {p['backend']} | {p['x']:,} | {cost:,.1f} | {scan} |"
        assert row in md, row
    # syscalls and context switches per reply, and the memory per dead connection at every step
    assert "| 2.250 | 1.000 | 1.000 | 0.200 | 0.000 | 0.050 | 0.0100 | 0.0040 | 0.0060 | 20,000 |" in md
    assert re.search(r"\| 3,000 \(from 0\) \| 7,600 \| 2\.00 \| 1\.00 \| 1\.00 \| 128 \| 5\.0 \|", md)
    figures = {p.name for p in (index.parent / "figures").iterdir()}
    variants = {p["variant"] for p in points}
    assert {f"dead-anatomy-cpu-{v}.png" for v in variants} | {"dead-anatomy-memory.png"} <= figures
    for name in [f"dead-anatomy-cpu-{v}" for v in variants] + ["dead-anatomy-memory"]:
        assert f"](figures/{name}.png)" in md and f'id="fig-{name}"' in page
        ET.parse(index.parent / "figures" / f"{name}.svg")


@needs_runs
def test_a_point_without_the_anatomy_says_why_and_a_run_before_it_says_it_predates_it(rendered_copy, tmp_path):
    run = copy_run(RUNS[0], tmp_path / "one")
    victim = next(p for p in read_points(run) if p["sweep"] == "dead" and p["status"] == "ok")
    with_anatomy(run, unavailable_at=victim["id"])
    index = render(run)
    page = index.read_text()
    assert "<script" not in page.lower()
    assert f"perf refused here by the test: {SCRIPT}" in html.unescape(page)
    assert "perf refused here by the test" in (index.parent / "report.md").read_text()

    _as_committed, index = rendered_copy(RUNS[0])
    md = (index.parent / "report.md").read_text()
    assert "**Where the time goes:** Anatomy unavailable: this run predates the kernel cost anatomy" in md
    before = copy_run(RUNS[0], tmp_path / "two")
    record = json.loads((before.path / "run.json").read_text())
    record["plan"]["anatomy"] = False
    (before.path / "run.json").write_text(json.dumps(record))
    md = (render(before).parent / "report.md").read_text()
    assert "**Where the time goes:** Anatomy not measured: the run was started with --no-anatomy." in md


# ---------------------------------------------------------------------------------------------------------
# compare's rule: a change only beyond noise, never at a disturbed point

PAIRS = Path(__file__).parent / "data" / "pairs"
REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
# The paper reference run before its re-run in results/reference (schema 1), an hour after the quick one.
PAPER_2026_11_28 = Path(__file__).parent / "data" / "previous" / "20261128T002856Z-vm-paper"


def test_two_runs_of_one_tree_on_a_busy_host_show_no_change_and_say_they_were_disturbed(tmp_path):
    """Two runs of one commit and images, three repetitions each, while other jobs shared the two CPUs: the
    reply rates differ by up to 7x, and every point is flagged other load, so nothing is called a change."""
    a, b = (load(Run(p)) for p in sorted((PAIRS / "same-tree").iterdir()))
    assert a.metadata["git"] == b.metadata["git"] and a.metadata["image_ids"] == b.metadata["image_ids"]
    compared, _ = comparison.compared_points(a, b)
    assert len(compared) == 4 and max(c.ratio("reply_rate") for c in compared) > 2
    (headline,) = comparison.compare_headline(compared)
    assert headline.startswith("Reply rate: no change at any of 4 common points")
    assert "4 of them were measured disturbed" in headline
    assert all(c.verdict("reply_rate").disturbed for c in compared)


def test_the_committed_quick_and_paper_runs_differ_at_one_point_beyond_both_ranges(tmp_path):
    quick, paper = (load(Run(p)) for p in (REFERENCE / "20261127T235918Z-vm-quick", PAPER_2026_11_28))
    compared, _ = comparison.compared_points(quick, paper)
    changed = [c for c in compared if c.verdict("reply_rate").change]
    assert [(c.key[1], c.key[2].label, c.key[3]) for c in changed] == [("up", "poll", 0)]
    (c,) = changed
    assert max(c.group_a.values("reply_rate")) < min(c.group_b.values("reply_rate"))
    (headline,) = comparison.compare_headline(compared)
    assert headline.startswith("Reply rate: changed at 1 of 10 common points") and "poll UP at 0 dead" in headline
    page = html.unescape(comparison.write(Run(REFERENCE / "20261127T235918Z-vm-quick"), Run(PAPER_2026_11_28),
                                          tmp_path / "cmp").read_text())
    assert "(within noise)" in page and headline in page


def test_with_one_repetition_the_noise_allowance_decides_and_bad_allowances_are_one_line_errors():
    run = load(Run(RUNS[0])) if RUNS else None
    if run is None:
        pytest.skip("no committed test runs")
    compared, _ = comparison.compared_points(run, run)
    verdicts = [c.verdict("reply_rate") for c in compared if c.key[0] == "dead"]
    assert verdicts and not any(v.change for v in verdicts if v), "B/A = 1 is no change"
    assert {v.rule for v in verdicts if v and not v.disturbed} <= {"one repetition: B/A within ±15%"}
    assert comparison.noise_fraction(None) == comparison.NOISE and comparison.noise_fraction("0.1") == 0.1
    for bad in ("1.5", "-0.1", "lots"):
        with pytest.raises(UserError, match=r"--noise .*: give a fraction from 0 to below 1"):
            comparison.noise_fraction(bad)


# ---------------------------------------------------------------------------------------------------------
# A run over kernels (--kernels): a real run in TCG guests on 6.1 and 7.2, one repetition per point

KERNELS_RUN = Path(__file__).parent / "data" / "kernels" / "20261207T031916Z-vm-quick"
DISTURBING = (checks.OTHER_LOAD, checks.CPU_THROTTLED, checks.CPU_FREQUENCY_CHANGED)


@pytest.fixture(scope="module")
def kernels_rendered(rendered_copy) -> tuple[Run, Path]:
    return rendered_copy(KERNELS_RUN)


def kernel_points(run: Run) -> dict[tuple, dict]:
    """(sweep, variant, backend, kernel, x) -> the point file, each measured once in this run."""
    found = {(p["sweep"], p["variant"], p["backend"], p["kernel"], p["x"]): p for p in read_points(run)}
    assert len(found) == len(read_points(run)) and all(p["repetition"] == 1 for p in found.values())
    return found


def test_a_run_over_kernels_shows_each_kernels_median_and_its_ratio_to_the_first_by_compares_rule(kernels_rendered):
    run, index = kernels_rendered
    record = json.loads((run.path / "run.json").read_text())
    first, other = record["plan"]["kernels"]
    points = kernel_points(run)
    markdown = (index.parent / "report.md").read_text()
    section = markdown[markdown.index("### Kernels"):markdown.index("### Notices")]
    assert 'id="kernels"' in index.read_text() and '<a href="#kernels">Kernels</a>' in index.read_text()
    changed = []
    for (sweep, variant, backend, kernel, x), a in points.items():
        if kernel != first:
            continue
        b = points[(sweep, variant, backend, other, x)]
        a_value, b_value = (p["figures"][MAIN_METRIC[sweep]] for p in (a, b))
        ratio = b_value / a_value
        disturbed = any(p["flags"].get(flag) for p in (a, b) for flag in DISTURBING)
        change = not disturbed and abs(ratio - 1) > 0.15  # one repetition: beyond ±15%
        shown = f"**{times(ratio)}**" if change else f"{times(ratio)} ({'disturbed' if disturbed else 'within noise'})"
        row = f"| {variant.upper()} | {md_escape(backend)} | {x:,} | {a_value:,.0f} | {b_value:,.0f} | {shown} |"
        assert row in section, row
        changed += [(sweep, backend, variant, x)] if change else []
    assert changed, "the committed run has changes to name"
    headline = next(line for line in section.splitlines() if line.startswith("**By compare's rule"))
    for sweep in ("dead", "pipetest"):
        count = sum(1 for c in changed if c[0] == sweep)
        assert (f"at {count} of 4 points" in headline) == bool(count)
    assert all(f"{backend} {variant.upper()} at {x:,}" in headline for _, backend, variant, x in changed)
    assert f"- {headline.strip('*')}" in markdown, "the headline leads the key numbers too"


def test_a_run_over_kernels_lists_the_kernels_as_their_guests_recorded_them(kernels_rendered):
    run, index = kernels_rendered
    meta = json.loads((run.path / "run.json").read_text())["metadata"]
    markdown = (index.parent / "report.md").read_text()
    for name, kernel in meta["kernels"].items():
        guests = [g for g in meta["guests"].values() if g["kernel"]["spec"] == kernel["spec"]]
        vcpus = ", ".join(str(v) for v in sorted({g["vcpus"] for g in guests}))
        accelerators = ", ".join(sorted({g["accelerator"] for g in guests}))
        cells = [name, kernel["release"], kernel["version"], kernel["suite"], kernel["flavour"],
                 kernel["vmlinuz_sha256"][:12], accelerators, vcpus]
        row = "| " + " | ".join(md_escape(c) for c in cells) + " |"
        assert row in markdown, row
    assert "Accelerator tcg: KVM failed" in markdown
    assert missing_levels(load(run)) == []


def test_an_emulated_run_labels_every_figure_and_table_block(kernels_rendered):
    run, index = kernels_rendered
    page, markdown = index.read_text(), (index.parent / "report.md").read_text()
    label = "emulated (TCG): compare these kernels with each other, not with native runs"
    sections = dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>', page, re.S))
    for name in ("summary", "kernels", "figures", "key", "points"):
        assert label in sections[name], name
    for heading in ("### UP", "### Kernels", "### Figures", "### Key numbers"):
        start = markdown.index(heading)
        end = markdown.find("\n### ", start + len(heading))
        assert label in markdown[start:end], heading
    for svg in (index.parent / "figures").glob("*.svg"):
        assert f"<!-- {label} -->" in svg.read_text(), svg.name


def test_a_run_over_kernels_draws_a_line_per_kernel_and_backend_named_for_both(kernels_rendered):
    run, index = kernels_rendered
    data = load(run)
    expected = {f"{backend} on {kernel}" for backend in data.plan.backends for kernel in data.plan.kernel_names()}
    for row in run_figure_rows(data):
        for plot in row.plots:
            lines = [s for s in plot.series if not s.reference]
            assert {s.label for s in lines} == expected, plot.name
            assert len({(s.style["color"], s.style["marker"], str(s.style["linestyle"])) for s in lines}) == len(lines)
            svg = (index.parent / "figures" / f"{plot.name}.svg").read_text()
            assert all(f"<!-- {label} -->" in svg for label in expected), plot.name
    assert "One colour and marker per backend, one dash pattern per kernel: 6.1 solid, 7.2 dashed." in \
        (index.parent / "report.md").read_text()


def test_kernels_whose_guests_ran_under_different_accelerators_are_said_to_before_the_headline(tmp_path):
    run = copy_run(KERNELS_RUN, tmp_path)
    for point in read_points(run):
        if point["kernel"] == "7.2":
            write_point(run, {**point, "guest": {**point["guest"], "accelerator": "kvm"}})
    record = json.loads((run.path / "run.json").read_text())
    for guest in record["metadata"]["guests"].values():
        guest["accelerator"] = "kvm" if guest["kernel"]["spec"] == "7.2" else guest["accelerator"]
    (run.path / "run.json").write_text(json.dumps(record))
    found = kernels.section(load(run))
    assert found is not None
    assert found.headline.startswith("The kernels' guests ran under different accelerators (6.1 under tcg; 7.2 "
                                     "under kvm): a ratio between them measures the accelerators as much as the "
                                     "kernels. By compare's rule, against 6.1")
    assert kernels.section(load(Run(KERNELS_RUN))).headline.startswith("By compare's rule, against 6.1")


@needs_runs
def test_a_run_on_its_hosts_kernel_has_no_kernels_section_and_no_emulation_label(rendered):
    run, index = rendered
    page, markdown = index.read_text(), (index.parent / "report.md").read_text()
    assert 'id="kernels"' not in page and "### Kernels" not in markdown
    assert "emulated (TCG)" not in page and "emulated (TCG)" not in markdown
    assert all(not plot.note for row in run_figure_rows(load(run)) for plot in row.plots)


@needs_runs
def test_the_csv_names_each_points_kernel_and_accelerator(kernels_rendered, rendered):
    for run, _ in (kernels_rendered, rendered):
        files = {p["id"]: p for p in read_points(run)}
        rows = list(csv.DictReader((run.path / "report" / "points.csv").open()))
        assert sorted(r["id"] for r in rows) == sorted(files)
        for r in rows:
            point = files[r["id"]]
            assert r["kernel"] == (point.get("kernel") or "")
            assert r["accelerator"] == ((point.get("guest") or {}).get("accelerator") or "")
    assert {r["accelerator"] for r in csv.DictReader((kernels_rendered[0].path / "report" / "points.csv").open())} \
        == {"tcg"}
    records = json.loads(export.export(kernels_rendered[0].points(), "json"))
    assert all(r["kernel"] in ("6.1", "7.2") and r["guest"]["accelerator"] == "tcg" for r in records)


@needs_runs
def test_compare_refuses_runs_whose_points_must_not_share_a_line(tmp_path):
    guests = copy_run(KERNELS_RUN, tmp_path / "kernels")
    native = copy_run(RUNS[0], tmp_path / "native")
    with pytest.raises(UserError, match=r"ran in guests on kernels 6\.1, 7\.2 and \S+ on its host's own kernel: "
                                        r"compare runs of the same --kernels") as caught:
        comparison.write(guests, native, tmp_path / "compare")
    assert "\n" not in str(caught.value)

    others = copy_run(KERNELS_RUN, tmp_path / "others")
    record = json.loads((others.path / "run.json").read_text())
    record["plan"]["kernels"] = ["6.1", "6.12"]
    (others.path / "run.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"on kernels 6\.1, 7\.2 and \S+ in guests on kernels 6\.1, 6\.12"):
        comparison.write(guests, others, tmp_path / "compare")

    under_kvm = copy_run(KERNELS_RUN, tmp_path / "kvm")
    for point in read_points(under_kvm):
        write_point(under_kvm, {**point, "guest": {**point["guest"], "accelerator": "kvm"}})
    with pytest.raises(UserError, match=r"guests ran under tcg and \S+'s under kvm"):
        comparison.write(guests, under_kvm, tmp_path / "compare")
    assert not (tmp_path / "compare").exists()

    page = comparison.write(guests, copy_run(KERNELS_RUN, tmp_path / "again"), tmp_path / "compare").read_text()
    assert "emulated (TCG): compare these kernels with each other" in page
    assert "each kernel in its dash pattern (6.1 solid, 7.2 dashed)" in page
