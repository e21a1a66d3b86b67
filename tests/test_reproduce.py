"""`invoke reproduce` end to end: real images, real containers, real httperf, on host networking."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import time

import pytest
import tools
from reproducing import finished, invoke, labelled_containers, point_files

from experiment.host import images
from experiment.model import SCHEMA_VERSION
from experiment.run.results import Run

pytestmark = pytest.mark.docker

SMOKE = ["--variants", "up", "--backends", "poll,epoll", "--dead", "0,3000", "--duration", "3",
         "--pipes", "10,1000", "--walks", "stay", "--no-report"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, client):
    """One smoke sweep: UP, poll and epoll, 0 and 3000 dead connections, 3 s points, two pipe sizes."""
    results_dir = tmp_path_factory.mktemp("results")
    code, out, err = finished(invoke(*SMOKE, results_dir=results_dir))
    assert code == 0, f"{out}\n{err}"
    return Run.open(None, results_dir)


ANATOMY_KEYS = ("window_s", "syscalls_per_reply", "syscalls", "context_switches_per_reply", "cpu_share",
                "folded_stacks")
MEMORY_KEYS = ("kernel_bytes_per_dead", "slab_bytes_per_dead", "server_rss_bytes")


@pytest.mark.needs_host("perf watches the server container's processes by their pids, which a container's "
                        "pid namespace does not see")
def test_the_smoke_sweeps_dead_points_carry_the_anatomy_and_polls_scan_grows_with_the_dead(smoke_run):
    """The anatomy is on by default: each dead point has a window of its own with real perf on the server's
    container, its profile folded after the sweep, and slabinfo around deadconn's step."""
    dead = {(p["backend"], p["x"]): p for p in point_files(smoke_run) if p["sweep"] == "dead"}
    reasons = {p["anatomy"]["unavailable"] for p in dead.values() if "unavailable" in p.get("anatomy", {})}
    if reasons:
        tools.missing(f"the anatomy was unavailable: {reasons}")
    for (backend, x), p in dead.items():
        anatomy, memory = p["anatomy"], p["memory"]
        assert all(key in anatomy for key in ANATOMY_KEYS), anatomy
        assert all(key in memory for key in MEMORY_KEYS), memory
        assert sum(anatomy["cpu_share"].values()) == pytest.approx(1.0)
        assert anatomy["samples"] > 0 and anatomy["replies_source"] == "server"
        folded = (smoke_run.path / anatomy["folded_stacks"]).read_text().splitlines()
        assert sum(int(line.rsplit(" ", 1)[1]) for line in folded) == anatomy["samples"]
        assert not (smoke_run.path / "raw" / f"{p['id']}.anatomy" / "perf.data").exists(), "removed once folded"
        # ephttpd sends once per reply (no pipelining under httperf); perf counts on while the server's
        # counter is read through the engine's log stream at each phase's edge, so the per-reply figures are
        # high by what it sent meanwhile (a few % of a 0.5 s phase; natively within 5%: test_anatomy.py)
        assert 1.0 <= anatomy["syscalls"]["sendto"] <= 1.15, anatomy["syscalls"]
        assert anatomy["syscalls"]["recvfrom"] == pytest.approx(anatomy["syscalls"]["sendto"], rel=0.05)
        assert memory["server_rss_bytes"] > 0
        if x:  # the server's own epoll watches: one per dead connection under epoll, none under poll
            assert memory["watches_per_dead"] == (1.0 if backend == "epoll" else 0.0)
            assert memory["dead_levels"] == [0, x]
        else:
            assert memory["kernel_bytes_per_dead"] is None, "the first level adds no dead connection"
    scan = {key: p["anatomy"]["cpu_share"]["readiness_scan"] for key, p in dead.items()}
    assert scan[("poll", 3000)] - scan[("poll", 0)] >= 0.15, scan
    assert abs(scan[("epoll", 3000)] - scan[("epoll", 0)]) < scan[("poll", 3000)] - scan[("poll", 0)], scan
    record = json.loads((smoke_run.path / "run.json").read_text())
    assert record["plan"]["anatomy"] is True
    assert record["metadata"]["syscall_cost"]["seccomp"]["mode"] in ("filter", "disabled")
    assert record["timings"]["anatomy_fold_s"] >= 0


def test_images_are_labelled_and_an_unchanged_tree_reuses_them(client, tmp_path):
    first = images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path)
    second = images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path)
    assert {t: i.id for t, i in first.items()} == {t: i.id for t, i in second.items()}
    for built in first.values():
        labels = client.images.get(built.id).labels
        assert labels["org.epollbench.source-hash"] == images.source_hash()
        assert labels["org.epollbench.git-commit"] == images.git_state()["commit"]
    server = client.containers.run(first["server"].id, ["ephttpd", "--help"], remove=True, network_mode="host")
    assert b"--backend" in server
    version = client.containers.run(first["client"].id, ["httperf", "--version"], remove=True, stderr=True,
                                    network_mode="host")
    assert b"httperf-0.9.0" in version


def test_smoke_sweep_gives_complete_consistent_results(smoke_run, client):
    record = json.loads((smoke_run.path / "run.json").read_text())
    assert record["schema_version"] == SCHEMA_VERSION
    assert record["status"] == "complete" and record["ended_at"]
    meta = record["metadata"]
    assert meta["kernel"] == os.uname().release
    assert meta["fd_hard_limit"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert set(meta["image_ids"]) == {"server", "client"}
    assert meta["git"]["commit"] == images.git_state()["commit"]
    assert record["cpusets"]["up"]["server"] == str(sorted(os.sched_getaffinity(0))[0])

    points = {p["id"]: p for p in point_files(smoke_run)}
    dead = [p for p in points.values() if p["sweep"] == "dead"]
    assert sorted((p["backend"], p["x"]) for p in dead) == [("epoll", 0), ("epoll", 3000),
                                                              ("poll", 0), ("poll", 3000)]
    for p in dead:
        assert p["status"] == "ok", p["reason"]
        assert p["figures"]["replies"] > 0 and p["figures"]["reply_rate"] > 0
        assert p["deadconn"]["held"] == p["x"]
        after = p["server"]["stats_after"]
        assert after["event"] == "snapshot"
        assert after["open"] >= p["x"], "the server holds the dead connections during the point"
        served = after["responses_200"] - p["server"]["stats_before"]["responses_200"]
        assert served == p["figures"]["replies"], "httperf's replies are the server's responses"
        assert (smoke_run.path / p["httperf"]["raw"]).read_text().startswith("httperf")
        assert {"client_saturated", "other_load"} <= set(p["flags"])
    # poll hands the kernel every descriptor each wait: its cost per reply grows with dead connections.
    poll = {p["x"]: p["figures"]["server_cpu_us_per_reply"] for p in dead if p["backend"] == "poll"}
    assert poll[3000] > poll[0]

    pipes = [p for p in points.values() if p["sweep"] == "pipetest"]
    assert sorted((p["backend"], p["x"]) for p in pipes) == [("epoll", 10), ("epoll", 1000),
                                                               ("poll", 10), ("poll", 1000)]
    for p in pipes:
        assert p["status"] == "ok", p["reason"]
        assert p["pipetest"]["result"]["passes"] > 0 and p["figures"]["passes_per_s"] > 0
    assert labelled_containers(client, smoke_run.id) == []


def test_sigint_keeps_finished_points_and_resume_completes_the_run(tmp_path, client):
    args = ["--variants", "up", "--backends", "poll", "--dead", "0,1000,2000", "--duration", "1",
            "--sweeps", "dead", "--no-report"]
    proc = invoke(*args, results_dir=tmp_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob("*/points/*.json")):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    code, out, err = finished(proc, 120)
    run = Run.open(None, tmp_path)

    assert code == 2, err
    assert f"continue with `invoke reproduce --resume {run.id}`" in err
    assert "Traceback" not in err
    assert run.record().status == "interrupted"
    assert labelled_containers(client, run.id) == []
    kept = {p.name: p.read_bytes() for p in run.points_dir.glob("*.json")}
    assert 1 <= len(kept) < 3

    code, out, err = finished(invoke("--resume", run.id, results_dir=tmp_path))
    assert code == 0, err
    assert run.record().status == "complete"
    points = point_files(run)
    assert sorted(p["x"] for p in points) == [0, 1000, 2000]
    assert all(p["status"] == "ok" for p in points), [p["reason"] for p in points]
    assert all((run.points_dir / name).read_bytes() == data for name, data in kept.items())


def test_a_low_fd_limit_skips_polls_levels_beyond_it_and_runs_epoll_past_it_through_holders(tmp_path):
    """Under a 1,500-file limit: poll stops at what one process holds and says why; epoll's whole series runs
    through ephttpd's holders (deadconn on their port, the server's snapshot counting them as theirs), its
    overlapping level measured again without them; pipetest runs both token walks."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1500, 1500))

    proc = invoke("--variants", "up", "--backends", "poll,epoll", "--dead", "0,1000,3000", "--duration", "1",
                  "--pipes", "10,5000", results_dir=tmp_path, preexec_fn=low_limit)
    code, out, err = finished(proc)
    assert code == 0, err
    run = Run.open(None, tmp_path)
    record = run.record()
    assert record.limits["fd_hard_limit"] == 1500
    assert record.limits["dead_holders"] == {"epoll": 4}  # 3000 over 1500 - 16 each: 3, and one for slack
    points = {p["id"]: p for p in point_files(run)}
    poll = {p["x"]: p for p in points.values() if p["sweep"] == "dead" and p["backend"] == "poll"}
    assert poll[0]["status"] == poll[1000]["status"] == "ok"
    assert poll[3000]["status"] == "skipped"
    assert poll[3000]["reason"].startswith("host allows 1500 open files per process")
    assert "no helper processes can hold more for poll" in poll[3000]["reason"]
    epoll = {p["x"]: p for p in points.values() if p["sweep"] == "dead" and p["backend"] == "epoll"
             and not p.get("overlap")}
    assert {x: p["status"] for x, p in epoll.items()} == {0: "ok", 1000: "ok", 3000: "ok"}, \
        {x: p["reason"] for x, p in epoll.items()}
    for x, point in epoll.items():
        assert point["dead_holders"] == 4
        ready, after = point["server"]["ready"], point["server"]["stats_after"]
        deadconn = point["deadconn"]["command"]
        assert deadconn[deadconn.index("--port") + 1] == str(ready["dead_port"]) != str(ready["port"])
        # Every dead connection in the server's epoll set, none of them among the server's own.
        assert after["dead_holders"]["open"] == x and after["dead_holders"]["interest_set"] >= x
        assert after["dead_holders"]["alive"] == 4 and after["open"] <= 100
        assert max(h["open"] for h in after["dead_holders"]["per_holder"]) <= 1500 - 16
    direct = points["dead-up-epoll-r1-d001000-direct"]
    assert (direct["status"], direct.get("dead_holders"), direct["overlap"]) == ("ok", None, True), direct["reason"]
    assert direct["server"]["stats_after"]["open"] >= 1000 and "dead_holders" not in direct["server"]["stats_after"]
    pipes = {(p["backend"], p["walk"], p["x"]): p for p in points.values() if p["sweep"] == "pipetest"}
    assert sorted(pipes) == sorted((b, w, x) for b in ("poll", "epoll") for w in ("stay", "stride")
                                   for x in (10, 5000))
    for backend in ("poll", "epoll"):
        assert "at most 742 pipes" in pipes[(backend, "stride", 5000)]["reason"]
        stay, stride = pipes[(backend, "stay", 10)]["figures"], pipes[(backend, "stride", 10)]["figures"]
        # One token: on its own pipe, or through all ten (17 is prime to 10).
        assert (stay["pipes_visited"], stride["pipes_visited"]) == (1, 10)
        assert pipes[(backend, "stride", 10)]["id"] == f"pipetest-up-{backend}-stride-r1-p000010"
    page = (run.path / "report" / "report.md").read_text()
    assert ("epoll: dead connections held by 4 helper processes in the server's epoll set at every level, because "
            "this host caps a process at 1,500 files") in page
    assert "One level measured both ways, each repetition with its own figures:" in page
    assert re.search(r"\n\| UP \| epoll \| 1,000 \| 1 \| [\d.]+k? \| [\d.]+ \| [\d.]+k? \| [\d.]+ \|\n", page)
    assert "#### Token walks" in page and "figures/pipetest-passes-up-stride.png" in page


@pytest.mark.parametrize(("args", "message"), [
    (["--backends", "kqueue"], "epollbench: --backends 'kqueue': unknown kqueue; valid: select,poll,epoll,"),
    (["--profile", "huge"], "epollbench: --profile 'huge': valid: quick,paper"),
    (["--duration", "soon"], "epollbench: --duration 'soon': give a number"),
    (["--resume", "no-such-run"], "epollbench: no run at no-such-run"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
    code, out, err = finished(invoke(*args, results_dir=tmp_path), 120)
    assert code == 2
    assert err.strip().startswith(message), err
    assert len(err.strip().splitlines()) == 1, err


def test_results_are_never_overwritten(smoke_run):
    point = smoke_run.points()[0]
    written = smoke_run.point_path(point.id).read_bytes()
    point.status, point.reason = "failed", "an attempt to overwrite"
    with pytest.raises(FileExistsError):
        smoke_run.write_point(point)
    assert smoke_run.point_path(point.id).read_bytes() == written

