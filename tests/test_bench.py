"""The building blocks of `invoke bench` measure what they say; the numbers themselves are never asserted."""

import os

import pytest

from experiment import bench


@pytest.fixture
def cpus():
    return bench.Cpus()


@pytest.mark.parametrize("server", ["ephttpd", "nginx"])
def test_a_point_counts_every_server_process_and_the_loads_replies(build_dir, cpus, server, monkeypatch):
    if server == "nginx" and not (os.access(bench.NGINX, os.X_OK) and os.geteuid() == 0):
        pytest.fail("nginx needs Debian's nginx-light and root (./run test installs it)")
    monkeypatch.setattr(bench, "LOAD_SECONDS", 2)
    point = bench._point(cpus, server, "epoll", 300, "wrk")

    assert point["replies"] > 0 and point["errors"] == 0
    # nginx serves from its worker, not its master: a CPU time of zero would mean the worker was missed.
    assert point["server_cpu_s"] > 0
    assert point["cpu_us_per_reply"] == pytest.approx(point["server_cpu_s"] * 1e6 / point["replies"])
    assert (point["server"], point["backend"], point["dead"], point["load"]) == (server, "epoll", 300, "wrk")


def test_server_processes_are_pinned_to_the_server_cpu(build_dir, cpus):
    with bench.ephttpd(cpus, "epoll", workers=2) as (_port, pids):
        assert len(pids) == 3, "the parent and its two workers"
        assert all(os.sched_getaffinity(pid) == cpus.server for pid in pids)
