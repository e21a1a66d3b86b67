"""The run records' schema: version-1 records upgraded on load, the committed runs rendering the numbers they
rendered before the upgrade existed, and the series that name every line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiment import catalog, model
from experiment.catalog import Series
from experiment.errors import UserError
from experiment.model import Plan
from experiment.report.data import SWEEPS, Metric

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted(p.parent for p in [*ROOT.glob("results/reference/*/run.json"),
                                      *ROOT.glob("tests/data/runs/*/run.json"),
                                      *ROOT.glob("tests/data/kernels/*/run.json"),
                                      *ROOT.glob("tests/data/previous/*/run.json")] if not p.parent.is_symlink())
# report.md of committed runs as rendered when they were committed (the schema-1 runs by the code before schema 2
# and the catalog existed): a refactoring or a layout change shows here as a diff.
RENDERS = Path(__file__).parent / "data" / "renders"


def test_series_labels_name_ephttpd_by_backend_and_others_by_server_and_backend():
    assert [Series(k, b).label for k, b in [("ephttpd", "epoll"), ("nginx", "epoll"), ("custom", "own")]] == \
        ["epoll", "nginx/epoll", "custom/own"]
    assert Series("python", "asyncio").slug == "python-asyncio"


def test_a_version_1_plan_of_several_servers_upgrades_to_series():
    record = {"schema_version": 1, "plan": {**Plan(profile="quick", sweeps=("dead",), variants=("up",),
                                                   backends=("epoll",), dead=(0,), pipes=(), repeat=1,
                                                   duration_s=1).to_dict(),
                                           "servers": ["ephttpd", "nginx"], "series": ["epoll", "nginx/epoll"]}}
    upgraded = model.upgrade(record, model.RUN, "run.json")
    assert upgraded["schema_version"] == model.SCHEMA_VERSION
    assert Plan.from_dict(upgraded["plan"]).series == (Series("ephttpd", "epoll"), Series("nginx", "epoll"))


@pytest.mark.parametrize("old, servers, series, backends", [
    ({"backends": ["poll", "epoll"]}, ["ephttpd"], [("ephttpd", "poll"), ("ephttpd", "epoll")], ["poll", "epoll"]),
    ({"server": "nginx", "backends": ["epoll"]}, ["nginx"], [("nginx", "epoll")], []),
])
def test_a_version_1_plan_from_before_several_servers_upgrades(old, servers, series, backends):
    plan = model.upgrade({"schema_version": 1, "plan": dict(old)}, model.RUN, "run.json")["plan"]
    assert plan["servers"] == servers and plan["backends"] == backends
    assert [(s["server"], s["backend"]) for s in plan["series"]] == series


@pytest.mark.parametrize("point, kind, backend", [
    ({"sweep": "dead", "backend": "nginx/epoll", "server_kind": "nginx", "mechanism": "epoll"}, "nginx", "epoll"),
    ({"sweep": "dead", "backend": "poll"}, "ephttpd", "poll"),  # before other servers existed
    ({"sweep": "pipetest", "backend": "epoll-et"}, None, "epoll-et"),
])
def test_a_version_1_point_names_its_backend_and_server_apart(point, kind, backend):
    upgraded = model.upgrade({"schema_version": 1, **point}, model.POINT, "point.json")
    assert (upgraded.get("server_kind"), upgraded["backend"]) == (kind, backend)
    assert "mechanism" not in upgraded


@pytest.mark.parametrize("version", [0, 4, None, "2"])
def test_a_schema_this_version_cannot_read_is_refused_in_one_line(version):
    with pytest.raises(UserError, match=r"schema_version .*: use the epollbench version that wrote it") as caught:
        model.upgrade({"schema_version": version}, model.POINT, "x.json")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.name)
def test_every_committed_point_reads_into_a_point_and_writes_back_the_same_record(committed):
    for path in sorted((committed / "points").glob("*.json")):
        record = model.read_json(path, model.POINT)
        point = model.Point.from_json(record, path)
        assert point.to_json() == record
        if point.ok:
            assert isinstance(point.figures, model.FIGURES[point.sweep])
        elif point.status == model.SKIPPED:
            assert point.figures is None


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.name)
def test_a_committed_run_record_reads_into_a_run_record_and_writes_back_the_same_record(committed):
    record = model.read_json(committed / "run.json", model.RUN)
    run = model.read_run(committed / "run.json")
    assert run.plan.series and run.plan.levels(model.DEAD) == tuple(record["plan"]["dead"])
    written = json.loads(json.dumps({k: v for k, v in run.to_json().items() if k in record or v}))
    plan = written.pop("plan")
    assert written == {k: v for k, v in record.items() if k != "plan"}
    assert {k: plan[k] for k in record["plan"]} == record["plan"], "fields from after this run take defaults"


def test_a_run_record_with_a_field_this_version_does_not_know_is_refused_in_one_line(tmp_path):
    record = model.read_json(COMMITTED[0] / "run.json", model.RUN)
    written = tmp_path / "run.json"
    written.write_text(json.dumps({**record, "hostname": "x"}))
    with pytest.raises(UserError, match=r"run.json does not match the run schema of version 3 at \$: "
                                        r".*'hostname' was unexpected"):
        model.read_run(written)


def test_a_point_file_with_a_field_this_version_does_not_know_is_refused_in_one_line(tmp_path):
    path = next((COMMITTED[0] / "points").glob("dead-*.json"))
    record = model.read_json(path, model.POINT)
    for changed in ({**record, "throttled": True}, {**record, "figures": {**record["figures"], "rate": 1.0}}):
        written = tmp_path / path.name
        written.write_text(json.dumps(changed))
        with pytest.raises(UserError, match=r"does not match the point schema of version 3 at "
                                            r"\$(\.figures)?: .*(throttled|rate)") as caught:
            model.read_point(written)
        assert "\n" not in str(caught.value)


def test_a_metric_names_a_figure_its_sweep_measures():
    assert {m.key for s in SWEEPS.values() for m in s.metrics} <= {f for s in model.SWEEPS for f in
                                                                   model.figure_names(s)}
    with pytest.raises(ValueError, match="cpu_per_reply is not a figure the dead sweep measures"):
        Metric(model.DEAD, "cpu_per_reply", "", "", "", "", 0)


@pytest.mark.parametrize("committed", [p for p in COMMITTED if (RENDERS / p.name).exists()], ids=lambda p: p.name)
def test_a_committed_run_renders_the_numbers_it_rendered_before_the_upgrade(committed, rendered_copy):
    version = json.loads((committed / "run.json").read_text())["schema_version"]
    assert version <= model.SCHEMA_VERSION, "committed runs stay as measured"
    copy, index = rendered_copy(committed)  # a copy rendered once for the session (tests/conftest.py)
    rendered = (index.parent / "report.md").read_text().replace(str(copy.path), "RUN")
    assert rendered == (RENDERS / committed.name / "report.md").read_text()


def test_the_catalog_lists_the_backends_ephttpd_was_built_with(build_dir):
    """ephttpd's backends are defined in C (images/ev/ev.c's table, then its own io_uring-recv loop); the catalog
    repeats their names. Pipetest runs ev.c's alone."""
    listed = subprocess.run([str(build_dir / "ephttpd"), "--list-backends"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert tuple(listed) == catalog.EPHTTPD_BACKENDS
    assert catalog.PIPETEST_BACKENDS == catalog.EV_BACKENDS == tuple(listed[:-1])
    assert set(catalog.SERVERS["ephttpd"].backends) == set(listed)


@pytest.mark.parametrize("kind", [model.RUN, model.POINT])
def test_the_published_schemas_are_the_models(kind):
    """schemas/*.schema.json are made by `invoke schemas` from the model: a field added there must reach them."""
    assert json.loads((ROOT / "schemas" / f"{kind}.schema.json").read_text()) == model.json_schema(kind)


def test_a_point_whose_field_has_the_wrong_type_is_refused_in_one_line_naming_it(tmp_path):
    path = next((COMMITTED[0] / "points").glob("dead-*.json"))
    record = model.read_json(path, model.POINT)
    written = tmp_path / path.name
    written.write_text(json.dumps({**record, "figures": {**record["figures"], "replies": "many"}}))
    with pytest.raises(UserError, match=r"does not match the point schema of version 3 at \$\.figures") as caught:
        model.read_point(written)
    assert "\n" not in str(caught.value)


def test_an_anatomy_without_syscall_counts_records_why_and_one_with_them_leaves_the_key_out(tmp_path):
    path = next((COMMITTED[0] / "points").glob("dead-*.json"))
    point = model.read_point(path)
    why = "tracefs is not mounted, and mounting it needs root: sudo mount -t tracefs nodev /sys/kernel/tracing"
    measured = model.AnatomyFigures(window_s=1.0, syscalls_per_reply=None, syscalls={}, context_switches_per_reply=0.5,
                                    context_switches={"voluntary": 0.5, "involuntary": 0.0},
                                    cpu_share={"user": 1.0}, folded_stacks=None, replies={"counting": 10},
                                    samples=100, syscalls_unavailable=why)
    for anatomy, key in ((measured, True), (model.AnatomyFigures(**{**measured.__dict__, "syscalls_unavailable": None,
                                                                   "syscalls_per_reply": 4.0}), False)):
        point.anatomy = anatomy
        record = point.to_json()
        assert ("syscalls_unavailable" in record["anatomy"]) is key
        written = tmp_path / f"{key}.json"
        written.write_text(json.dumps(record))
        assert model.read_point(written).anatomy == anatomy
