import os
import shutil
from pathlib import Path

import pytest
import tools

from experiment.bench import native

# Set by `./run clean-room` (experiment/cleanroom.py): an unprivileged container on the host's Docker engine.
CLEAN_ROOM = os.environ.get("EPOLLBENCH_CLEAN_ROOM") == "1"
SECOND_DOCKERD = "starts a second dockerd"
clean_room_skips: list[tuple[str, str]] = []


def pytest_collection_modifyitems(items):
    # The fixture needs the host, so every test that uses it does: the marker follows the fixture.
    for item in items:
        if "second_engine" in item.fixturenames:
            item.add_marker(pytest.mark.needs_host(SECOND_DOCKERD, tools=["dockerd"]))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """needs_host(why, tools=[...]): the one list of what cannot run in the clean room (skipped there and
    listed at the end); elsewhere it needs root and the tools. needs_tool(name, ..., root=False):
    tools.require each. Both run before the test's fixtures."""
    for mark in item.iter_markers("needs_host"):
        if len(mark.args) != 1 or not isinstance(mark.args[0], str):
            raise pytest.UsageError(f"{item.nodeid}: needs_host takes one reason, why the test needs the host")
        why = mark.args[0]
        if CLEAN_ROOM:
            clean_room_skips.append((item.nodeid, why))
            pytest.skip(f"clean room: {why}")
        if os.geteuid() != 0:
            pytest.skip(f"{why}: needs root")
        for name in mark.kwargs.get("tools", ()):
            tools.require(name)
    for mark in item.iter_markers("needs_tool"):
        for name in mark.args:
            tools.require(name)
        if mark.kwargs.get("root") and os.geteuid() != 0:
            pytest.skip(f"runs {', '.join(mark.args)} as root: needs root")


def pytest_terminal_summary(terminalreporter):
    if not CLEAN_ROOM:
        return
    terminalreporter.section(f"clean-room skips: {len(clean_room_skips)} (needs_host, tests/conftest.py)")
    for nodeid, why in clean_room_skips:
        terminalreporter.line(f"{nodeid}: {why}")


@pytest.fixture(scope="session")
def build_dir():
    """The programs under test, compiled natively once per session under AddressSanitizer and UBSan, so that a
    report fails the test (native.Ephttpd.stop); the optimised build, which measurements run, is made too."""
    native.build()
    return native.build("sanitize")


@pytest.fixture(scope="module")
def client():
    """A client of this machine's Docker engine."""
    from experiment.host import engine

    return engine.connect()


@pytest.fixture(scope="session")
def second_engine():
    """A second dockerd on this machine (tests/engines.py), removed with its data at the end."""
    import engines

    engine = engines.start()
    try:
        yield engine
    finally:
        engines.stop(engine)


@pytest.fixture(scope="session")
def rendered_copy(tmp_path_factory):
    """rendered_copy(folder): a copy of a committed run (without its report) rendered, once per session for every
    test that only reads it (test_report, test_model): (the copy, its index.html)."""
    from experiment.report.render import render
    from experiment.run.results import Run

    made: dict = {}

    def rendered(source: Path):
        source = Path(source).resolve()
        if source not in made:
            target = tmp_path_factory.mktemp("rendered") / source.name
            shutil.copytree(source, target, ignore=lambda d, names: ["report"] if Path(d) == source else [])
            run = Run(target)
            made[source] = (run, render(run))
        return made[source]

    return rendered


@pytest.fixture
def guest_cache(tmp_path, monkeypatch):
    """An empty cache of the guests' downloads in the test's folder (XDG_CACHE_HOME): guestcache lays it out."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "epollbench"
