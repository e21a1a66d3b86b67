"""What `./run test` and `./run bench` install before they run: every package a test or the benchmark runs."""

import pytest
import tools

from dev import testenv
from experiment.bench import runner
from experiment.host import machine


class Installed(Exception):
    """Stops runner.main at its install step, with what it asked for."""


def test_every_tool_a_test_requires_is_installed_by_the_test_task():
    """A tool tests/tools.py knows but ./run test does not install would skip on a fresh machine (and fail in
    CI): that was nginx-light, strace, iptables, nftables and git."""
    # docker.io: experiment/host/engine.py installs it when no engine answers.
    installed = set(testenv.TEST_PACKAGES) | {"docker.io"}
    assert {package for _places, package in tools.TOOLS.values()} - installed == set()


def test_bench_installs_what_it_runs_natively_before_anything_else(monkeypatch):
    asked = []

    def ensure(packages, why):
        asked.append((list(packages), why))
        raise Installed

    monkeypatch.setattr(machine, "ensure_packages", ensure)
    monkeypatch.setattr(runner.native, "build", lambda: pytest.fail("native.build ran before ensure_packages"))
    with pytest.raises(Installed):
        runner.main()
    (packages, why), = asked
    assert {"nginx-light", "httperf", "wrk", "gcc", "make", "liburing-dev"} <= set(packages)
    assert why == "./run bench"
