"""Promises the README and the code make that no other test held them to.

- `--resume` refuses a run whose host, kernel or images changed, in one line naming what changed, and leaves
  the run as it was; a run interrupted before its metadata was taken resumes.
- `compare` names differing hosts and kernels at the top (this machine's, and each engine's), and lists the
  points only one run has.
- The report draws and tabulates the median of a point's repetitions, with their min-max band.
- `reproduce --from-archive` stops at a digest that does not match published.json, before the first point.
- A server of one's own is refused before the first point when something else answers on its port.

The resume, archive and port tests run the real `invoke reproduce` on the real Docker engine; the compare and
report tests work on copies of the runs committed under tests/data/runs/.
"""

from __future__ import annotations

import calendar
import contextlib
import html
import io
import json
import os
import re
import resource
import shutil
import socket
import statistics
import tarfile
import time
import uuid
from pathlib import Path

import docker.errors
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from reproducing import finished, invoke, labelled_containers, point_files

from experiment.host import machine, publish
from experiment.host.images import LABEL, TARGETS, BuiltImage
from experiment.report import comparison
from experiment.report.data import load
from experiment.report.draw import draw
from experiment.report.page import headlines
from experiment.report.plots import run_figure_rows
from experiment.report.render import render
from experiment.report.text import human, md_escape
from experiment.run.containers import LABEL_RUN
from experiment.run.results import Run

RUNS_DIR = Path(__file__).parent / "data" / "runs"
# The fastest real run: one pipetest point of 2 s.
TINY = ["--sweeps", "pipetest", "--variants", "up", "--backends", "epoll", "--pipes", "10", "--walks", "stay",
        "--no-report"]
DEAD_METRICS = {"reply_rate": 0, "server_cpu_us_per_reply": 1, "reply_time_ms": 2}  # figure key: table digits
SLUGS = {"reply_rate": "reply-rate", "server_cpu_us_per_reply": "cpu-per-reply", "reply_time_ms": "reply-time"}


def quiet(_message: str) -> None:
    pass


def copy_run(source: Path, parent: Path) -> Run:
    """A copy of a run's files without its report, to alter and render."""
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / source.name
    shutil.copytree(source, target, ignore=lambda d, names: ["report"] if Path(d) == source else [])
    return Run(target)


def edit_record(run: Run, change) -> None:
    record = json.loads((run.path / "run.json").read_text())
    change(record)
    (run.path / "run.json").write_text(json.dumps(record, indent=2))


def write_point(run: Run, point: dict) -> None:
    run.point_path(point["id"]).write_text(json.dumps(point, indent=2))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def created_containers(client, run: Run) -> list[dict]:
    """The create events of containers labelled as the run's, from the engine's event log."""
    started = calendar.timegm(time.strptime(run.record().started_at, "%Y-%m-%dT%H:%M:%SZ"))
    return list(client.events(since=started - 5, until=int(time.time()) + 1, decode=True,
                              filters={"type": "container", "event": "create", "label": f"{LABEL_RUN}={run.id}"}))


@pytest.fixture(scope="module")
def committed() -> Path:
    runs = sorted(p.parent for p in RUNS_DIR.glob("*/run.json") if not p.parent.is_symlink())
    assert runs, f"no committed run under {RUNS_DIR}"
    return runs[0]


# ---------------------------------------------------------------------------------------------------------
# --resume refuses a changed host, kernel or images


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, client) -> Run:
    """One real run of one pipetest point; tests resume copies of it."""
    results_dir = tmp_path_factory.mktemp("tiny")
    code, out, err = finished(invoke(*TINY, results_dir=results_dir), 600)
    assert code == 0, f"{out}\n{err}"
    run = Run.open(None, results_dir)
    assert [p["status"] for p in point_files(run)] == ["ok"]
    return run


def resume(run: Run, results_dir: Path, preexec_fn=None) -> tuple[int, str, str]:
    return finished(invoke("--resume", str(run.path), results_dir=results_dir, preexec_fn=preexec_fn), 600)


def files_of(run: Run) -> dict[str, bytes]:
    return {str(p.relative_to(run.path)): p.read_bytes() for p in [run.path / "run.json", *run.points_dir.iterdir()]}


WRONG_IMAGE = "sha256:" + "0" * 64


# Each alters a run's recorded metadata as another machine or build would have written it, and returns what
# the refusal must say changed (recorded -> now).
def _other_host(meta):
    meta["hostname"] = "another-host"
    return "hostname: 'another-host' -> " + repr(socket.gethostname())


def _other_kernel(meta):
    meta["kernel"] = "2.5.44"
    return "kernel: '2.5.44' -> " + repr(os.uname().release)


def _other_images(meta):
    meta["image_ids"]["server"] = WRONG_IMAGE
    return "image_ids: {'server': " + repr(WRONG_IMAGE)


@pytest.mark.docker
@pytest.mark.parametrize("change", [_other_host, _other_kernel, _other_images], ids=["host", "kernel", "images"])
def test_resume_refuses_a_run_recorded_on_another_host_kernel_or_images(tiny_run, tmp_path, client, change):
    run = copy_run(tiny_run.path, tmp_path)
    named = []
    edit_record(run, lambda record: named.append(change(record["metadata"])))
    before = files_of(run)

    code, out, err = resume(run, tmp_path)

    assert code == 2, f"{out}\n{err}"
    line = one_line(err)
    assert line.startswith(f"epollbench: cannot resume {run.id}: ") and line.endswith("start a new run instead")
    assert named[0] in line
    assert files_of(run) == before, "a refused resume leaves the run as it was"
    assert labelled_containers(client, run.id) == []


@pytest.mark.docker
def test_resume_refuses_a_lower_open_file_limit_than_the_run_had(tiny_run, tmp_path, client):
    had = tiny_run.record().metadata["fd_hard_limit"]
    lower = 4096
    assert had > lower

    def lower_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, lower))

    run = copy_run(tiny_run.path, tmp_path)
    code, out, err = resume(run, tmp_path, preexec_fn=lower_limit)
    assert code == 2, f"{out}\n{err}"
    assert f"fd_hard_limit: {had} -> {lower}" in one_line(err)
    assert run.record().status == "complete"


@pytest.mark.docker
def test_resume_of_the_same_host_and_images_goes_on(tiny_run, tmp_path, client):
    """The control of the refusals above: the unaltered copy resumes, with nothing left to measure."""
    run = copy_run(tiny_run.path, tmp_path)
    points = {p.name: p.read_bytes() for p in run.points_dir.iterdir()}
    code, out, err = resume(run, tmp_path)
    assert code == 0, f"{out}\n{err}"
    assert f"resuming {run.id}: 1 points already done" in out
    assert {p.name: p.read_bytes() for p in run.points_dir.iterdir()} == points
    assert run.record().status == "complete"


@pytest.mark.docker
def test_a_run_interrupted_before_its_metadata_was_taken_resumes(tiny_run, tmp_path, client):
    """Ctrl-C while the images build leaves a run with no metadata and no point, and says to resume it."""
    run = copy_run(tiny_run.path, tmp_path)
    for point in run.points_dir.iterdir():
        point.unlink()

    def interrupted_early(record):
        for key in ("metadata", "cpusets", "preflight", "limits", "timings"):
            record.pop(key, None)
        record.update(status="interrupted", error=None)

    edit_record(run, interrupted_early)
    code, out, err = resume(run, tmp_path)
    assert code == 0, f"{out}\n{err}"
    assert [(p["id"], p["status"]) for p in point_files(run)] == [("pipetest-up-epoll-r1-p000010", "ok")]
    assert run.record().status == "complete" and run.record().metadata["hostname"] == socket.gethostname()


# ---------------------------------------------------------------------------------------------------------
# compare names differing hosts, and the points only one run has


def compare_pages(run_a: Run, run_b: Run, out: Path) -> tuple[str, str]:
    index = comparison.write(run_a, run_b, out)
    return html.unescape(index.read_text()), (index.parent / "report.md").read_text()


def host_callout(page: str) -> str:
    found = re.search(r"<strong>Not the same host or kernel\.</strong>(.*?)</p>", page, re.S)
    return " ".join(found.group(1).split()) if found else ""


def test_compare_names_a_different_host_kernel_and_cpu_at_the_top(committed, tmp_path):
    run_a, run_b = copy_run(committed, tmp_path / "a"), copy_run(committed, tmp_path / "b")
    was = run_a.record().metadata
    other = {"hostname": "bighost", "kernel": "2.5.44", "cpu_model": "Intel Pentium III", "cpus": 64}
    edit_record(run_b, lambda record: record["metadata"].update(other))

    page, markdown = compare_pages(run_a, run_b, tmp_path / "compare")

    callout = host_callout(page)
    md_callout = next((line for line in markdown.splitlines() if "Not the same host or kernel" in line), "")
    for key, value in other.items():
        assert f"{key} ({was[key]} → {value})" in callout, (key, callout)
        assert f"{md_escape(key)} ({md_escape(was[key])} → {md_escape(value)})" in md_callout
    for key in ("kernel_version", "git", "docker"):
        assert key not in callout, "only what differs is named"


def engine_facts(hostname: str, kernel: str, cpus: int) -> dict:
    """A run's metadata.engines entry as engine.facts records it (the host facts that matter here)."""
    return {"url": f"ssh://{hostname}" if hostname != "vm" else "unix:///var/run/docker.sock",
            "hostname": hostname, "kernel": kernel, "cpu_model": "AMD EPYC", "cpus": cpus,
            "fd_hard_limit": 20000, "boot_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, hostname))}


def test_compare_names_a_different_host_of_the_server_engine(committed, tmp_path):
    """Two runs orchestrated from one machine, the servers on two other hosts: their engines differ."""
    run_a, run_b = copy_run(committed, tmp_path / "a"), copy_run(committed, tmp_path / "b")
    edit_record(run_a, lambda r: r["metadata"].update(engines={"server": engine_facts("lab1", "6.1.0", 8),
                                                               "client": engine_facts("vm", "6.18", 2)}))
    edit_record(run_b, lambda r: r["metadata"].update(engines={"server": engine_facts("lab2", "6.12.0", 8),
                                                               "client": engine_facts("vm", "6.18", 2)}))
    page, markdown = compare_pages(run_a, run_b, tmp_path / "compare")
    callout = host_callout(page)
    assert "engines.server.hostname (lab1 → lab2)" in callout, callout
    assert "engines.server.kernel (6.1.0 → 6.12.0)" in callout
    assert "engines.client" not in callout and "boot_id" not in callout and "url" not in callout
    assert "engines.server.hostname (lab1 → lab2)" in markdown

    # A run recorded before engines were recorded is no other host for want of them.
    plain = copy_run(committed, tmp_path / "plain")
    page, _ = compare_pages(plain, run_b, tmp_path / "compare-plain")
    assert "Not the same host or kernel" not in page
    assert "metadata.engines.server.hostname" in page, "still listed among all the differences"


def test_compare_lists_the_points_only_one_run_has(committed, tmp_path):
    run_a, run_b = copy_run(committed, tmp_path / "a"), copy_run(committed, tmp_path / "b")
    only_a = ["dead-up-poll-r1-d003000", "dead-smp-poll-r1-d000000", "dead-smp-poll-r1-d003000",
              "pipetest-smp-epoll-r1-p000010"]
    only_b = ["dead-up-epoll-r1-d000000", "pipetest-up-poll-r1-p001000"]
    for run, gone in ((run_b, only_a), (run_a, only_b)):
        for point_id in gone:
            run.point_path(point_id).unlink()

    page, markdown = compare_pages(run_a, run_b, tmp_path / "compare")

    compared, left_out = comparison.compared_points(load(run_a), load(run_b))
    points = {p["id"]: p for p in point_files(Run(committed))}

    def label(point_id: str) -> str:
        p = points[point_id]
        return f"{p['sweep']} {p['variant'].upper()} {p['backend']} {p['x']:,}"

    expected = {f"{label(i)}: only in A" for i in only_a} | {f"{label(i)}: only in B" for i in only_b}
    assert expected <= set(left_out)
    measured_by_both = {(p["sweep"], p["variant"], p["backend"], p["x"]) for i, p in points.items()
                        if p["status"] == "ok" and i not in only_a + only_b}
    assert {(c.key[0], c.key[1], c.key[2].label, c.key[3]) for c in compared} == measured_by_both
    for item in expected:
        assert item in page and md_escape(item) in markdown
    # No row of the comparison's tables is a point one run lacks.
    rows = re.findall(r"<tr>\s*<td>(UP|SMP)</td>\s*<td class=\"backend\">.*?</span>(\S+?)</td>\s*"
                      r"<td class=\"num\">([\d,]+)</td>", page, re.S)
    assert {(v, b, int(x.replace(",", ""))) for v, b, x in rows} == {(k[1].upper(), k[2], k[3])
                                                                      for k in measured_by_both}


# ---------------------------------------------------------------------------------------------------------
# The report shows the median of the repetitions and their min-max band

# The other repetitions' figures relative to r1's: the median (r2's) is neither r1, nor the mean, nor an end.
FACTORS = {2: 1.25, 3: 2.0}
# A repetition that failed with figures of its own (httperf errors, say): left out of the median.
FAILED = ("dead-up-epoll", 0, 3)


@pytest.fixture(scope="module")
def repeated(committed, tmp_path_factory) -> tuple[Run, Path]:
    """A committed run with each measured dead point repeated three times, rendered."""
    run = copy_run(committed, tmp_path_factory.mktemp("repeated"))
    edit_record(run, lambda record: record["plan"].update(repeat=3))
    for point in point_files(run):
        if point["sweep"] != "dead":
            continue
        for repetition, factor in FACTORS.items():
            again = json.loads(json.dumps(point))
            again.update(id=point["id"].replace("-r1-", f"-r{repetition}-"), repetition=repetition)
            if point["status"] == "ok":
                again["figures"] = {k: v * factor if k in DEAD_METRICS else v for k, v in point["figures"].items()}
            if (point["id"].rsplit("-r1-", 1)[0], point["x"], repetition) == FAILED:
                again.update(status="failed", reason="httperf counted 7 errors: connrefused 7")
            write_point(run, again)
    return run, render(run)


def expected_groups(run: Run) -> dict[tuple[str, str, int], dict]:
    """(variant, backend, x) -> ok and all repetitions, and per metric the median, low and high of the ok
    ones, from the point files."""
    found: dict[tuple[str, str, int], dict] = {}
    for p in point_files(run):
        if p["sweep"] != "dead":
            continue
        group = found.setdefault((p["variant"], p["backend"], p["x"]), {"ok": 0, "runs": 0, "values": {}})
        group["runs"] += 1
        if p["status"] == "ok":
            group["ok"] += 1
            for metric in DEAD_METRICS:
                group["values"].setdefault(metric, []).append(p["figures"][metric])
    for group in found.values():
        group["median"] = {m: statistics.median(v) for m, v in group["values"].items()}
        group["low"] = {m: min(v) for m, v in group["values"].items()}
        group["high"] = {m: max(v) for m, v in group["values"].items()}
    return found


def points_rows(page: str) -> dict[tuple[str, str, str], list[str]]:
    """The dead sweep's points table (the first one), its rows' cells as text by (variant, backend, x)."""
    table = re.search(r'<table class="points">(.*?)</table>', page, re.S).group(1)
    rows = {}
    for row in re.findall(r'<tr class="\w+">(.*?)</tr>', table, re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
                 for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        rows[tuple(cells[:3])] = cells
    return rows


def test_the_points_table_gives_the_median_and_the_range_of_the_repetitions(repeated):
    run, index = repeated
    rows = points_rows(index.read_text())
    groups = expected_groups(run)
    assert any(g["ok"] == 2 and g["runs"] == 3 for g in groups.values()), "the failed repetition is there"
    measured = 0
    for (variant, backend, x), group in groups.items():
        cells = rows[(variant.upper(), backend, f"{x:,}")]
        assert cells[3] == f"{group['ok']} / {group['runs']}"
        if not group["ok"]:
            continue
        measured += 1
        for n, (metric, digits) in enumerate(DEAD_METRICS.items()):
            median, range_ = cells[6 + 2 * n], cells[7 + 2 * n]
            assert median == f"{group['median'][metric]:,.{digits}f}", (variant, backend, x, metric)
            assert range_ == f"{group['low'][metric]:,.{digits}f} – {group['high'][metric]:,.{digits}f}"
    assert measured >= 4


def test_the_figures_draw_the_median_with_the_min_max_band(repeated):
    run, index = repeated
    data = load(run)
    groups = expected_groups(run)
    plots = {plot.name: plot for row in run_figure_rows(data) for plot in row.plots}
    drawn = 0
    for variant in ("up", "smp"):
        for metric, slug in SLUGS.items():
            plot = plots[f"dead-{slug}-{variant}"]
            fig = draw(plot)
            ax = fig.axes[0]
            lines = {line.get_label(): line for line in ax.get_lines()}
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            for series in plot.series:
                want = sorted((x, g) for (v, b, x), g in groups.items()
                              if (v, b) == (variant, series.label) and g["ok"])
                xs, ys = lines[series.label].get_data()
                assert list(xs) == [x for x, _ in want]
                assert list(ys) == pytest.approx([g["median"][metric] for _, g in want], rel=1e-12)
                colour = to_rgba(series.style["color"], 0.18)
                band = next(c for c in bands if tuple(c.get_facecolor()[0]) == pytest.approx(colour))
                vertices = band.get_paths()[0].vertices
                for x, g in want:
                    at_x = vertices[vertices[:, 0] == x][:, 1]
                    assert min(at_x) == pytest.approx(g["low"][metric], rel=1e-12)
                    assert max(at_x) == pytest.approx(g["high"][metric], rel=1e-12)
                drawn += 1
            assert (index.parent / "figures" / f"{plot.name}.png").is_file()
    assert drawn == 12
    assert "Line: median of 3 repetitions; band: their minimum to maximum." in index.read_text()


def test_the_headline_quotes_the_median_of_the_repetitions(repeated):
    run, index = repeated
    groups = expected_groups(run)
    page = html.unescape(index.read_text())
    markdown = (index.parent / "report.md").read_text()
    heads = [h for h in headlines(load(run)) if h.sweep == "dead"]
    assert {h.variant for h in heads} == {"up", "smp"}
    for head in heads:
        for item in head.items:
            median = groups[(head.variant, item.series.label, item.x)]["median"]["reply_rate"]
            assert item.value == pytest.approx(median, rel=1e-12)
            assert human(median) in head.text
        assert head.text in page
        assert f"\n- {md_escape(head.text)}\n" in markdown


# ---------------------------------------------------------------------------------------------------------
# reproduce --from-archive stops at a digest mismatch before the first point


def tiny_images(client, nonce: str, edition: str, made: list[str]) -> dict[str, BuiltImage]:
    """Two images of one small file with the labels of epollbench's, tagged as this test's (their IDs added to
    made); each edition has other image IDs under the same tags."""
    built = {}
    for target in TARGETS:
        tag = f"epollbench-promises-{nonce}/{target}:tiny"
        labels = {f"{LABEL}.source-hash": "tiny", f"{LABEL}.git-commit": "0" * 40, f"{LABEL}.git-dirty": "false",
                  f"{LABEL}.base-image": "scratch", f"{LABEL}.base-image-id": "none",
                  f"{LABEL}.test-target": target, f"{LABEL}.test-edition": edition}
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, text in (("Dockerfile", "FROM scratch\nCOPY edition /\n"), ("edition", f"{target} {edition}\n")):
                info = tarfile.TarInfo(name)
                info.size = len(text)
                tar.addfile(info, io.BytesIO(text.encode()))
        context.seek(0)
        image, _log = client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, labels=labels)
        made.append(image.id)
        built[target] = BuiltImage(target=target, tag=tag, id=image.id, source_hash="tiny")
    return built


@pytest.fixture(scope="module")
def archive(client, tmp_path_factory):
    """A published archive of two tiny images and its published.json, and an archive of a second edition of
    the same tags; every image removed at the end."""
    nonce = uuid.uuid4().hex[:10]
    folder = tmp_path_factory.mktemp("archive")
    made = []
    try:
        published = tiny_images(client, nonce, "published", made)
        path = folder / "epollbench.tar.gz"
        record = publish.publish(client, published, str(path), say=quiet)
        other = tiny_images(client, nonce, "other", made)  # saved by tag: after the publication, which it retags
        assert {b.id for b in published.values()}.isdisjoint(b.id for b in other.values())
        other_archive = folder / "other.tar.gz"
        publish.save(client, other, other_archive, say=quiet)
        yield path, record, published, other_archive
    finally:
        for image_id in made:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image_id, force=True)


def copy_archive(archive, into: Path) -> tuple[Path, Path]:
    path, record, _published, _other = archive
    shutil.copy(path, into / path.name)
    shutil.copy(record, into / record.name)
    return into / path.name, into / record.name


def refused_before_the_first_point(client, results_dir: Path, archive_path: Path) -> tuple[str, Run]:
    code, out, err = finished(invoke(*TINY, "--from-archive", str(archive_path), results_dir=results_dir), 600)
    assert code == 2, f"{out}\n{err}"
    run = Run.open(None, results_dir)
    assert run.points() == [] and not list(run.raw_dir.iterdir())
    record = run.record()
    assert record.status == "failed" and record.error and record.error in err
    assert not record.metadata, "stopped before anything ran"
    assert labelled_containers(client, run.id) == [] and created_containers(client, run) == []
    return one_line(err), run


@pytest.mark.docker
@pytest.mark.parametrize("field", ["digest", "image_id"])
def test_from_archive_refuses_a_published_json_of_other_digests(client, archive, tmp_path, field):
    path, record_path = copy_archive(archive, tmp_path)
    published = archive[2]
    # The control: the archive as published passes the check.
    obtained, provenance = publish.obtain(client, archive=path, say=quiet)
    assert provenance["verified"] and {t: b.id for t, b in obtained.items()} == {t: b.id for t, b in published.items()}

    record = json.loads(record_path.read_text())
    wrong = "sha256:" + "f" * 64
    record["images"]["server"][field] = wrong
    record_path.write_text(json.dumps(record))

    line, _run = refused_before_the_first_point(client, tmp_path / "results", path)
    assert published["server"].id in line and wrong in line and "the server image" in line
    assert str(record_path) in line


@pytest.mark.docker
def test_from_archive_refuses_an_archive_of_other_images(client, archive, tmp_path):
    path, record_path = copy_archive(archive, tmp_path)
    shutil.copy(archive[3], path)  # the same tags, other images
    line, _run = refused_before_the_first_point(client, tmp_path / "results", path)
    published = json.loads(record_path.read_text())["images"]
    assert published["server"]["image_id"] in line and "is not the published image" in line


# ---------------------------------------------------------------------------------------------------------
# A server of one's own: nothing else may answer on its port


@pytest.mark.docker
def test_a_server_port_something_else_answers_on_is_refused_before_the_first_point(client, tmp_path):
    port = machine.free_port()
    with socket.create_server(("127.0.0.1", port)):
        code, out, err = finished(invoke(
            "--server-image", "epollbench/server:latest", "--server-cmd", "sleep 60", "--server-port", str(port),
            "--sweeps", "dead", "--variants", "up", "--dead", "0", "--duration", "1", "--no-report",
            results_dir=tmp_path), 600)
    assert code == 2, f"{out}\n{err}"
    line = one_line(err)
    assert f"127.0.0.1:{port}" in line and "--server-port" in line
    run = Run.open(None, tmp_path)
    assert run.points() == [] and run.record().status == "failed"
    assert labelled_containers(client, run.id) == [] and created_containers(client, run) == []
