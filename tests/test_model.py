"""The run records' schema: version-1 records upgraded on load, the committed runs rendering the numbers they
rendered before the upgrade existed, and the series that name every line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from experiment import catalog, model
from experiment.catalog import Series
from experiment.errors import UserError
from experiment.report.render import render
from experiment.run.plan import Plan
from experiment.run.results import Run

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted(p.parent for p in [*ROOT.glob("results/reference/*/run.json"),
                                      *ROOT.glob("tests/data/runs/*/run.json")] if not p.parent.is_symlink())
# report.md of each committed run, rendered by the code before schema 2 and the catalog existed.
RENDERS = Path(__file__).parent / "data" / "renders"


def test_series_labels_name_ephttpd_by_backend_and_others_by_server_and_backend():
    assert [Series(k, b).label for k, b in [("ephttpd", "epoll"), ("nginx", "epoll"), ("custom", "own")]] == \
        ["epoll", "nginx/epoll", "custom/own"]
    assert Series("python", "asyncio").slug == "python-asyncio"


def test_every_line_has_its_own_style_and_each_server_keeps_its_backends_colour():
    styles = [Series(kind.name, b).style() for kind in catalog.SERVERS.values() for b in kind.backends]
    assert len({(s["color"], s["marker"], str(s["linestyle"])) for s in styles}) == len(styles)
    assert Series("nginx", "epoll").style()["color"] == Series("ephttpd", "epoll").style()["color"]
    assert Series("nginx", "epoll").style()["marker"] != Series("ephttpd", "epoll").style()["marker"]
    unknown = catalog.UNKNOWN_BACKEND
    for series in (Series("ephttpd", "kqueue"), Series("apache", "epoll")):
        assert series.style() == {"color": unknown.colour, "marker": unknown.marker, "linestyle": unknown.linestyle}


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


@pytest.mark.parametrize("version", [0, 3, None, "2"])
def test_a_schema_this_version_cannot_read_is_refused_in_one_line(version):
    with pytest.raises(UserError, match=r"schema_version .*: use the epollbench version that wrote it") as caught:
        model.upgrade({"schema_version": version}, model.POINT, "x.json")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.name)
def test_a_committed_run_renders_the_numbers_it_rendered_before_the_upgrade(committed, tmp_path):
    assert json.loads((committed / "run.json").read_text())["schema_version"] == 1, "committed runs stay as measured"
    copy = tmp_path / committed.name
    shutil.copytree(committed, copy, ignore=lambda d, names: ["report"] if Path(d) == committed else [])
    index = render(Run(copy))
    rendered = (index.parent / "report.md").read_text().replace(str(copy), "RUN")
    assert rendered == (RENDERS / committed.name / "report.md").read_text()


def test_the_catalog_lists_the_backends_ephttpd_was_built_with(build_dir):
    """ephttpd's backends are defined in C (images/ev/ev.c's table, then its own io_uring-recv loop); the catalog
    repeats their names. Pipetest runs ev.c's alone."""
    listed = subprocess.run([str(build_dir / "ephttpd"), "--list-backends"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert tuple(listed) == catalog.EPHTTPD_BACKENDS
    assert catalog.PIPETEST_BACKENDS == catalog.EV_BACKENDS == tuple(listed[:-1])
    assert set(catalog.SERVERS["ephttpd"].backends) == set(listed)
