"""The dead sweep's orchestration on a fake engine (tests/fakeengine.py): which containers it starts and stops,
what each point records, and how a failing server or deadconn, the host's limit and a resume show up. The
real-Docker end-to-end runs are in test_reproduce*.py."""

from __future__ import annotations

import json

import pytest
from fakeengine import OPENLOAD_OUTPUT, FakeContainers, Script

from experiment import model
from experiment.catalog import Series
from experiment.errors import UserError
from experiment.run import context, dead, openloop, plan, reproduce, results
from experiment.run.progress import Progress

EPOLL = Series("ephttpd", "epoll")
REPLIES = 250000  # tests/data/httperf/epoll-2500calls.txt
CPU_S_PER_POINT = 2.0  # the fake server's cgroup advances 2 s between two readings


def sweep_context(tmp_path, script: Script, dead: str = "0,1000,5000", fd_limit: int = 20000, backends: str = "epoll",
            server: str | None = None, load: str | None = None, rate: str | None = None):
    the_plan = plan.make_plan("quick", sweeps="dead", variants="up", backends=backends, dead=dead, duration=1,
                              server=server, load=load, rate=rate)
    run = results.Run.create(model.RunRecord(run_id=f"test-{tmp_path.name}", profile=the_plan.profile,
                                             status="running", started_at=model.utc_now(), command_line=[],
                                             plan=the_plan), tmp_path)
    events: list = []
    shared: dict = {}
    servers, clients = FakeContainers(script, events, shared), FakeContainers(script, events, shared)
    ctx = context.Context(run, the_plan, servers, clients, "server:test", "client:test",  # type: ignore[arg-type]
                        reproduce.cpusets([0, 1]), fd_limit, Progress(lambda _: None), plan.choices(the_plan))
    ctx.progress.start(total=reproduce.count_points(the_plan, fd_limit), done=0)
    return ctx, events


def points(ctx) -> dict[int, dict]:
    """The point files as written (the contract for tools that read results), by level."""
    files = (json.loads(path.read_text()) for path in sorted(ctx.run.points_dir.glob("*.json")))
    return {p["x"]: p for p in files}


def test_a_series_runs_one_server_and_one_deadconn_and_measures_each_level(tmp_path):
    ctx, events = sweep_context(tmp_path, Script())
    dead.dead_series(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert sorted(found) == [0, 1000, 5000]
    for x, p in found.items():
        assert (p["status"], p["reason"], p["backend"], p["server_kind"], p["load"]) == ("ok", None, "epoll",
                                                                                        "ephttpd", "httperf")
        assert p["schema_version"] == model.SCHEMA_VERSION
        assert p["deadconn"]["held"] == x and p["dead"] == x
        assert p["figures"]["replies"] == REPLIES
        assert p["server"]["cpu_s"] == CPU_S_PER_POINT
        assert p["figures"]["server_cpu_us_per_reply"] == pytest.approx(CPU_S_PER_POINT * 1e6 / REPLIES)
        after, before = p["server"]["stats_after"], p["server"]["stats_before"]
        assert after["responses_200"] > before["responses_200"]
        assert (p["server"]["cpuset"], p["httperf"]["cpuset"]) == ("0", "1")
    started = [e[1] for e in events if e[0] == "run"]
    assert started[:2] == ["server", "deadconn"] and started.count("server") == 1 and started.count("deadconn") == 1
    # One probe and one measurement per level, deadconn grown between levels without reconnecting.
    assert started.count("httperf") >= 2 * 3
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 1000", "grow 4000"]
    assert events[-4:] == [("stop", "deadconn"), ("remove", "deadconn"), ("stop", "server"), ("remove", "server")]
    logs = sorted(p.name for p in ctx.run.raw_dir.iterdir() if p.suffix == ".log")
    assert logs == ["dead-up-epoll-r1.deadconn.log", "dead-up-epoll-r1.server.log"]


def test_levels_above_the_hosts_limit_are_skipped_with_the_reason_and_start_nothing(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000,5000", fd_limit=2000)
    dead.dead_series(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000)] == ["ok", "ok", "skipped"]
    assert "host allows 2000 open files per process" in found[5000]["reason"]
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 1000"]


def test_select_stops_below_fd_setsize_and_says_why(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000,5000", backends="select")
    dead.dead_series(ctx, "up", Series("ephttpd", "select"), 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000)] == ["ok", "skipped", "skipped"]
    assert all("FD_SETSIZE=1024" in found[x]["reason"] for x in (1000, 5000))


def test_a_server_that_does_not_start_fails_every_level_with_its_output(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(server_starts=False))
    dead.dead_series(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert {p["status"] for p in found.values()} == {"failed"}
    assert all("server did not start: ephttpd: io_uring" in p["reason"] for p in found.values())
    assert [e[1] for e in events if e[0] == "run"] == ["server"], "no deadconn or load without a server"


def test_deadconn_failing_at_a_level_fails_that_level_and_the_rest_and_keeps_the_earlier_ones(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(deadconn_fails_at=3000))
    dead.dead_series(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000)] == ["ok", "ok", "failed"]
    assert found[5000]["reason"] == ("deadconn held 3000 of 5000 dead connections: connect: Cannot assign "
                                     "requested address")
    assert ("remove", "server") in events and ("remove", "deadconn") in events


def test_a_server_that_exits_mid_sweep_fails_the_levels_after_it(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(server_exits_at_level=1000))
    dead.dead_series(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert found[0]["status"] == "ok"
    assert found[5000]["status"] == "failed" and "server exited" in found[5000]["reason"]


def test_a_resumed_series_measures_only_the_levels_it_lacks(tmp_path):
    ctx, events = sweep_context(tmp_path, Script())
    dead.dead_series(ctx, "up", EPOLL, 1)
    ctx.run.point_path(points(ctx)[5000]["id"]).unlink()
    events.clear()
    dead.dead_series(ctx, "up", EPOLL, 1)
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 5000"], "straight to the missing level"
    assert sorted(points(ctx)) == [0, 1000, 5000]
    events.clear()
    dead.dead_series(ctx, "up", EPOLL, 1)
    assert events == [], "a complete series starts nothing"


def test_another_servers_points_name_their_server_and_backend_apart(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0", server="python", backends="asyncio")
    dead.dead_series(ctx, "up", Series("python", "asyncio"), 1)
    (point,) = ctx.run.points()
    assert (point.id, point.series) == ("dead-up-python-asyncio-r1-d000000", Series("python", "asyncio"))
    assert point.programs["server"]["command"][:3] == ["pyhttpd", "--backend", "asyncio"]
    (written,) = points(ctx).values()
    assert (written["server_kind"], written["backend"]) == ("python", "asyncio")



# ---------------------------------------------------------------------------------------- the open loop

OPEN_CAPTURED = json.loads(OPENLOAD_OUTPUT)  # tests/data/httperf/openload-epoll.txt: 40,000 replies at 20k/s
WRK_RATE = 40281.30  # tests/data/httperf/wrk-epoll.txt


def open_context(tmp_path, script: Script, **kwargs):
    ctx, events = sweep_context(tmp_path, script, load="open", **kwargs)
    ctx.open_rate = 20000.0
    return ctx, events


def test_an_open_loop_series_runs_openload_at_the_sweeps_rate_and_records_its_percentiles(tmp_path):
    ctx, events = open_context(tmp_path, Script())
    assert ctx.plan.sweeps == ("dead-open",) and ctx.plan.open_variants == ("up",)
    dead.dead_series(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
    found = points(ctx)
    assert sorted(found) == [0, 1000, 5000]
    latency = OPEN_CAPTURED["latency_us"]
    for x, p in found.items():
        assert p["id"] == f"dead-open-up-epoll-r1-d{x:06d}"
        assert (p["sweep"], p["status"], p["load"], p["deadconn"]["held"]) == ("dead-open", "ok", "open", x)
        assert "httperf" not in p and "wrk" not in p
        command = p["openload"]["command"]
        assert command[0] == "openload" and command[command.index("--rate") + 1] == "20000"
        assert command[command.index("--connections") + 1] == "100" and command[command.index("--duration") + 1] == "1"
        f = p["figures"]
        assert (f["offered_rate"], f["replies"], f["errors"]) == (20000.0, 40000, 0)
        assert f["latency_p99_ms"] == pytest.approx(latency["p99"] / 1e3)
        assert f["latency_p50_ms"] == pytest.approx(latency["p50"] / 1e3)
        assert f["latency_p999_ms"] == pytest.approx(latency["p99.9"] / 1e3)
        assert f["uncorrected_p99_ms"] == pytest.approx(OPEN_CAPTURED["uncorrected_latency_us"]["p99"] / 1e3)
        assert f["server_cpu_s"] == CPU_S_PER_POINT
        assert f["server_cpu_us_per_reply"] == pytest.approx(CPU_S_PER_POINT * 1e6 / 40000)
        assert f["server_cpu_busy_pct"] == pytest.approx(100 * CPU_S_PER_POINT / OPEN_CAPTURED["wall_s"], abs=0.01)
        assert (f["lagged"], f["overloaded"]) == (True, False) == (OPEN_CAPTURED["lagged"]["raised"], False)
        assert (p["flags"]["lagged"], p["flags"]["overloaded"]) == (True, False)
        assert "client_saturated" in p["flags"] and "server_saturated" in p["flags"]
        assert (ctx.run.path / p["openload"]["raw"]).read_text().startswith('{"program":"openload"')
        assert model.read_point(ctx.run.point_path(p["id"])).figures == model.OpenFigures(**f)
    started = [e[1] for e in events if e[0] == "run"]
    assert started == ["server", "deadconn", "openload", "openload", "openload"], "no probe: openload's rate is fixed"
    logs = sorted(p.name for p in ctx.run.raw_dir.iterdir() if p.suffix == ".log")
    assert logs == ["dead-open-up-epoll-r1.deadconn.log", "dead-open-up-epoll-r1.server.log"]


def test_openloads_flags_reach_the_points_flags_and_an_overloaded_point_stands(tmp_path):
    script = Script(openload_at={
        0: {"lagged/raised": False},
        1000: {"lagged/raised": True, "lagged/late_sends": 12},
        5000: {"lagged/raised": False, "overloaded/raised": True, "overloaded/achieved_share": 0.5,
               "achieved_rate": 10000.0, "latency_us/p99": 900000.0, "errors/timeout": 4, "errors/unsent": 100}})
    ctx, _ = open_context(tmp_path, script)
    dead.dead_series(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
    found = points(ctx)
    assert [(found[x]["flags"]["lagged"], found[x]["flags"]["overloaded"]) for x in (0, 1000, 5000)] == \
        [(False, False), (True, False), (False, True)]
    overloaded = found[5000]
    assert overloaded["status"] == "ok", "the server's overload is the measurement, not a failure"
    assert overloaded["figures"]["latency_p99_ms"] == 900.0 and overloaded["figures"]["errors"] == 104
    assert overloaded["figures"]["achieved_share"] == 0.5


@pytest.mark.parametrize(("change", "exit_code", "reason"), [
    ({"errors/connect": 3, "errors/timeout": 1}, 0, "openload counted 3 errors: connect 3"),
    ({"non_2xx": 7}, 0, "openload counted 7 errors: non_2xx 7"),
    ({"replies": 0}, 0, "no replies (0 openload errors)"),
    ({}, 1, "openload exited with 1"),
])
def test_an_open_loop_point_fails_on_the_servers_errors_or_openloads_exit(tmp_path, change, exit_code, reason):
    ctx, _ = open_context(tmp_path, Script(openload_at={1000: change}, openload_exit=exit_code), dead="1000")
    dead.dead_series(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
    (point,) = points(ctx).values()
    assert (point["status"], point["reason"]) == ("failed", reason)


def test_unreadable_openload_output_fails_the_point_with_its_last_line(tmp_path):
    ctx, _ = open_context(tmp_path, Script(openload_output="openload: connect: Connection refused\n"), dead="0")
    dead.dead_series(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
    (point,) = points(ctx).values()
    assert point["status"] == "failed"
    assert point["reason"].startswith("openload output unreadable (exit code 0): not openload output")
    assert point["reason"].endswith("openload: connect: Connection refused")


def test_the_offered_rate_is_its_share_of_the_lowest_capacity_probed_by_wrk_at_0_dead(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), backends="poll,epoll", load="open", rate="0.5x")
    said: list[str] = []
    rate = openloop.offered_rate(ctx, None, said.append)
    assert rate["rate"] == pytest.approx(WRK_RATE / 2, abs=0.1) and rate["share"] == 0.5
    assert rate["capacity"] == {"up/poll": WRK_RATE, "up/epoll": WRK_RATE} and rate["lowest"] == "up/poll"
    assert rate["probe"]["load"] == "wrk" and rate["requested"] == "0.5x"
    runs = [e for e in events if e[0] == "run"]
    assert [e[1] for e in runs] == ["server", "wrk", "server", "wrk"], "one fresh server per line, no deadconn"
    assert [e[2][2] for e in runs if e[1] == "server"] == ["poll", "epoll"]
    wrk_script = next(e[2] for e in runs if e[1] == "wrk")[2]
    assert "--connections 100 --duration 2s" in wrk_script
    assert events.count(("remove", "server")) == 2
    assert "lowest capacity at 0 dead (up/poll" in said[0]
    events.clear()
    assert openloop.offered_rate(ctx, rate, said.append) == rate and events == [], "a resumed run probes nothing"


def test_an_offered_rate_in_requests_per_second_needs_no_probe(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), load="open", rate="30000")
    rate = openloop.offered_rate(ctx, None, lambda _: None)
    assert (rate["rate"], rate["share"], rate["probe"]) == (30000.0, None, None)
    assert events == []


def test_a_probe_that_measures_no_line_is_one_line_asking_for_a_rate(tmp_path):
    ctx, _ = sweep_context(tmp_path, Script(wrk_output="no wrk here"), load="open")
    with pytest.raises(UserError, match=r"measured no line \(up/epoll: wrk output unreadable .*\): give --rate "
                                        r"in requests/s instead of a share"):
        openloop.offered_rate(ctx, None, lambda _: None)
