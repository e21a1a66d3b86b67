"""The dead sweep's orchestration on a fake engine (tests/fakeengine.py): which containers it starts and stops,
what each point records, and how a failing server or deadconn, the host's limit and a resume show up. The
real-Docker end-to-end runs are in test_reproduce*.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from fakeengine import OPENLOAD_OUTPUT, FakeContainers, Script, without_quiet_window

from experiment import anatomy, model
from experiment.catalog import Series
from experiment.errors import UserError
from experiment.report import beyond, page
from experiment.report import data as report_data
from experiment.report.text import human
from experiment.run import (
    context,
    dead,
    durations,
    instruments,
    openloop,
    plan,
    results,
    seccomp,
    servers,
    steps,
)
from experiment.run.progress import Progress
from experiment.run.results import Run

EPOLL = Series("ephttpd", "epoll")
REPLIES = 250000  # tests/data/httperf/epoll-2500calls.txt
CPU_S_PER_POINT = 2.0  # the fake server's cgroup advances 2 s between two readings


@pytest.fixture(autouse=True)
def no_quiet_window(monkeypatch):
    without_quiet_window(monkeypatch)


def sweep_context(tmp_path, script: Script, dead: str = "0,1000,5000", fd_limit: int = 20000, backends: str = "epoll",
            server: str | None = None, perf: anatomy.Instruments | None = None, sweeps: str = "dead",
            pipes: str | None = None, load: str | None = None, rate: str | None = None):
    the_plan = plan.make_plan("quick", sweeps=sweeps, variants="up", backends=backends, dead=dead, duration=1,
                              server=server, anatomy=perf is not None, pipes=pipes, load=load, rate=rate)
    run = results.Run.create(model.RunRecord(run_id=f"test-{tmp_path.name}", profile=the_plan.profile,
                                             status="running", started_at=model.utc_now(), command_line=[],
                                             plan=the_plan), tmp_path)
    events: list = []
    shared: dict = {}
    servers, clients = FakeContainers(script, events, shared), FakeContainers(script, events, shared)
    ctx = context.Context(run, the_plan, servers, clients, "server:test", "client:test",  # type: ignore[arg-type]
                        steps.cpusets([0, 1]), fd_limit, Progress(lambda _: None), plan.choices(the_plan),
                        anatomy=perf)
    ctx.progress.start(total=plan.count_points(the_plan, fd_limit), done=0)
    return ctx, events


def run_line(ctx, variant: str, series: Series, repetition: int, sweep: str = model.DEAD) -> None:
    """The plan's line of that sweep, variant, series and repetition, through the dead sweep."""
    line, = [line for line in plan.planned(ctx.plan, ctx.fd_limit) if (line.sweep, line.variant, line.series,
                                                                        line.repetition) == (sweep, variant, series,
                                                                                             repetition)]
    dead.dead_series(ctx, line)


def points(ctx) -> dict[int, dict]:
    """The point files as written (the contract for tools that read results), by level."""
    files = (json.loads(path.read_text()) for path in sorted(ctx.run.points_dir.glob("*.json")))
    return {p["x"]: p for p in files}


def test_a_series_runs_one_server_and_one_deadconn_and_measures_each_level(tmp_path):
    ctx, events = sweep_context(tmp_path, Script())
    run_line(ctx, "up", EPOLL, 1)
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
        assert p["server"]["seccomp"] == seccomp.profile_name()
    started = [e[1] for e in events if e[0] == "run"]
    assert started[:2] == ["server", "deadconn"] and started.count("server") == 1 and started.count("deadconn") == 1
    # One probe and one measurement per level, deadconn grown between levels without reconnecting.
    assert started.count("httperf") >= 2 * 3
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 1000", "grow 4000"]
    assert events[-4:] == [("stop", "deadconn"), ("remove", "deadconn"), ("stop", "server"), ("remove", "server")]
    logs = sorted(p.name for p in ctx.run.raw_dir.iterdir() if p.suffix == ".log")
    assert logs == ["dead-up-epoll-r1.deadconn.log", "dead-up-epoll-r1.server.log"]


def test_levels_above_the_hosts_limit_are_skipped_with_the_reason_and_start_nothing(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000,5000", fd_limit=2000, backends="poll")
    run_line(ctx, "up", Series("ephttpd", "poll"), 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000)] == ["ok", "ok", "skipped"]
    assert "host allows 2000 open files per process" in found[5000]["reason"]
    assert "no helper processes can hold more for poll: poll(2) hands the kernel" in found[5000]["reason"]
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 1000"]
    assert all("--dead-holders" not in e[2] for e in events if e[:2] == ("run", "server"))


def test_an_epoll_series_past_the_hosts_limit_runs_whole_through_holders_and_measures_the_overlap_directly(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000,5000", fd_limit=2000)
    run_line(ctx, "up", EPOLL, 1)
    found = {(p["x"], p.get("overlap", False)): p for p in points(ctx).values()} | {
        (p["x"], True): p for p in (json.loads(f.read_text()) for f in ctx.run.points_dir.glob("*-direct.json"))}
    assert {k: p["status"] for k, p in found.items()} == {(0, False): "ok", (1000, False): "ok", (5000, False): "ok",
                                                          (1000, True): "ok"}
    # 5000 over holders of 2000 - 16 descriptors each: 3, and one for slack; every level of the line has them.
    assert [found[(x, False)]["dead_holders"] for x in (0, 1000, 5000)] == [4, 4, 4]
    direct = found[(1000, True)]
    assert (direct["id"], "dead_holders" in direct) == ("dead-up-epoll-r1-d001000-direct", False)
    servers = [e[2] for e in events if e[:2] == ("run", "server")]
    deadconns = [e[2] for e in events if e[:2] == ("run", "deadconn")]
    assert len(servers) == len(deadconns) == 2
    with_holders, without = servers
    port = int(with_holders[with_holders.index("--port") + 1])
    assert with_holders[-4:] == ("--dead-holders", "4", "--dead-port", "0")
    assert "--dead-holders" not in without
    # deadconn targets the holders' port (the listening line's dead_port), then the direct server's own.
    assert deadconns[0][deadconns[0].index("--port") + 1] == str(port + 1)
    assert deadconns[1][deadconns[1].index("--port") + 1] == without[without.index("--port") + 1]
    for x in (1000, 5000):
        point = found[(x, False)]
        assert point["server"]["ready"]["dead_port"] == port + 1
        # The dead connections are the holders', never the server's own.
        held = point["server"]["stats_before"]["dead_holders"]
        assert (held["open"], point["server"]["stats_before"]["open"]) == (x, 0)
        command = point["httperf"]["command"]
        assert command[command.index("--port") + 1] == str(port), "the active load on the server's own port"
    assert direct["server"]["stats_before"]["open"] == 1000 and "dead_holders" not in direct["server"]["stats_before"]
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 1000", "grow 4000", "grow 1000"]
    logs = sorted(p.name for p in ctx.run.raw_dir.iterdir() if p.suffix == ".log")
    assert logs == ["dead-up-epoll-r1-direct.deadconn.log", "dead-up-epoll-r1-direct.server.log",
                    "dead-up-epoll-r1.deadconn.log", "dead-up-epoll-r1.server.log"]
    ctx.run.point_path(found[(1000, True)]["id"]).unlink()
    events.clear()
    run_line(ctx, "up", EPOLL, 1)
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 1000"], "a resume measures the missing overlap alone"


def test_a_level_the_holders_do_not_all_hold_fails_with_their_count(tmp_path, monkeypatch):
    monkeypatch.setattr(dead, "HOLDERS_SETTLE_S", 0.3)
    ctx, events = sweep_context(tmp_path, Script(holders_short_by=7), dead="0,1000,5000", fd_limit=2000)
    run_line(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert found[0]["status"] == "ok"
    assert found[1000]["status"] == found[5000]["status"] == "failed"
    assert found[5000]["reason"].startswith("the holders hold 993 of 1000 dead connections after 0.3 s")


def test_select_stops_below_fd_setsize_and_says_why(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000,5000", backends="select")
    run_line(ctx, "up", Series("ephttpd", "select"), 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000)] == ["ok", "skipped", "skipped"]
    assert all("FD_SETSIZE=1024" in found[x]["reason"] for x in (1000, 5000))


def test_a_server_that_does_not_start_fails_every_level_with_its_output(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(server_starts=False))
    run_line(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert {p["status"] for p in found.values()} == {"failed"}
    assert all("server did not start: ephttpd: io_uring" in p["reason"] for p in found.values())
    assert [e[1] for e in events if e[0] == "run"] == ["server"], "no deadconn or load without a server"


def test_deadconn_failing_at_a_level_fails_that_level_and_the_rest_and_keeps_the_earlier_ones(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(deadconn_fails_at=3000))
    run_line(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000)] == ["ok", "ok", "failed"]
    assert found[5000]["reason"] == ("deadconn held 3000 of 5000 dead connections: connect: Cannot assign "
                                     "requested address")
    assert ("remove", "server") in events and ("remove", "deadconn") in events


def test_a_server_that_exits_mid_sweep_fails_the_levels_after_it(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(server_exits_at_level=1000))
    run_line(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert found[0]["status"] == "ok"
    assert found[5000]["status"] == "failed" and "server exited" in found[5000]["reason"]


@pytest.mark.parametrize(("script", "first_failed", "reason"), [
    (Script(server_starts=False), 0, "server did not start: ephttpd: io_uring: io_uring_setup: Operation not "
                                     "permitted"),
    (Script(deadconn_starts=False), 0, 'deadconn did not start: deadconn: socket: Too many open files | '
                                       '{"event": "failed", "held": 0, "reason": "socket: Too many open files"}'),
    (Script(deadconn_fails_at=3000), 5000, "deadconn held 3000 of 5000 dead connections: connect: Cannot assign "
                                           "requested address"),
    (Script(deadconn_silent_at=0), 1000, 'deadconn held None of 1000 dead connections: no answer: '
                                         '{"event": "ready", "held": 0} | deadconn: still connecting'),
    (Script(server_exits_at_level=1000), 5000, 'server exited: {"event": "listening", "port": '),
], ids=["server-does-not-start", "deadconn-does-not-start", "deadconn-fails-a-step", "deadconn-silent-at-a-step",
        "server-exits"])
def test_a_failure_fails_its_level_and_every_later_one_with_its_reason_and_stops_what_started(tmp_path, script,
                                                                                             first_failed, reason):
    ctx, events = sweep_context(tmp_path, script, dead="0,1000,5000,10000")
    run_line(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert [found[x]["status"] for x in (0, 1000, 5000, 10000)] == [
        "ok" if x < first_failed else "failed" for x in (0, 1000, 5000, 10000)]
    failed = [found[x]["reason"] for x in (0, 1000, 5000, 10000) if x >= first_failed]
    assert all(r.startswith(reason) for r in failed) and len(set(failed)) == 1, failed
    started = [e[1] for e in events if e[0] == "run" and e[1] in ("server", "deadconn")]
    assert events[-2 * len(started):] == [e for role in reversed(started) for e in (("stop", role), ("remove", role))]


def test_something_already_answering_on_the_servers_port_fails_every_level_and_starts_nothing(tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setattr(servers, "tcp_connects", lambda address, port, timeout=1.0: True)
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000", server="nginx")
    run_line(ctx, "up", Series("nginx", "epoll"), 1)
    found = points(ctx)
    assert {p["status"] for p in found.values()} == {"failed"}
    (reason,) = {p["reason"] for p in found.values()}
    assert re.fullmatch(rf"something already answers on {re.escape(ctx.server_address)}:\d+ before the server "
                        "started: stop it, or run the server on another port", reason), reason
    assert events == []


def test_a_server_with_holders_that_names_no_port_for_them_fails_its_line_and_the_direct_level_still_runs(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(names_dead_port=False), dead="0,1000,5000", fd_limit=2000)
    run_line(ctx, "up", EPOLL, 1)
    found = {p.id: p for p in ctx.run.points()}
    through_holders = [found[f"dead-up-epoll-r1-d{x:06d}"] for x in (0, 1000, 5000)]
    assert {p.status for p in through_holders} == {"failed"}
    assert all(re.fullmatch(r"the server started with 4 holders named no dead-connection port: "
                            r"\{'event': 'listening', 'port': \d+\}", p.reason or "") for p in through_holders)
    assert found["dead-up-epoll-r1-d001000-direct"].status == "ok"
    assert [e[1] for e in events if e[0] == "run"][:2] == ["server", "server"], "no deadconn for the holders' line"


def test_a_resumed_series_measures_only_the_levels_it_lacks(tmp_path):
    ctx, events = sweep_context(tmp_path, Script())
    run_line(ctx, "up", EPOLL, 1)
    ctx.run.point_path(points(ctx)[5000]["id"]).unlink()
    events.clear()
    run_line(ctx, "up", EPOLL, 1)
    assert [e[2] for e in events if e[0] == "stdin"] == ["grow 5000"], "straight to the missing level"
    assert sorted(points(ctx)) == [0, 1000, 5000]
    events.clear()
    run_line(ctx, "up", EPOLL, 1)
    assert events == [], "a complete series starts nothing"


def test_another_servers_points_name_their_server_and_backend_apart(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0", server="python", backends="asyncio")
    run_line(ctx, "up", Series("python", "asyncio"), 1)
    (point,) = ctx.run.points()
    assert (point.id, point.series) == ("dead-up-python-asyncio-r1-d000000", Series("python", "asyncio"))
    assert point.programs["server"]["command"][:3] == ["pyhttpd", "--backend", "asyncio"]
    (written,) = points(ctx).values()
    assert (written["server_kind"], written["backend"]) == ("python", "asyncio")


# ---- the kernel cost anatomy -------------------------------------------------------------------------------

def test_without_perf_every_measured_point_records_the_anatomy_unavailable_with_the_reason(tmp_path):
    reason = "perf is not installed: apt-get install linux-perf"
    ctx, events = sweep_context(tmp_path, Script(), perf=anatomy.Instruments(None, reason))
    run_line(ctx, "up", EPOLL, 1)
    found = points(ctx)
    assert {p["status"] for p in found.values()} == {"ok"}
    for p in found.values():
        assert p["anatomy"] == {"unavailable": reason}
        # slabinfo needs the server's processes: a scripted server has none on this machine
        assert p["memory"] == {"unavailable": instruments.NO_PROCESS}
        assert isinstance(model.Point.from_json(p, "point").anatomy, model.Unavailable)
    assert ctx.run.record().plan.anatomy is True


def test_with_perf_a_server_without_a_process_here_records_why_and_starts_no_window_load(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), perf=anatomy.Instruments("/usr/bin/perf"))
    run_line(ctx, "up", EPOLL, 1)
    for p in points(ctx).values():
        assert p["anatomy"] == {"unavailable": instruments.NO_PROCESS}
        assert p["memory"] == {"unavailable": instruments.NO_PROCESS}
    off, off_events = sweep_context(tmp_path / "off", Script())
    run_line(off, "up", EPOLL, 1)
    assert [e[1] for e in events if e[0] == "run"] == [e[1] for e in off_events if e[0] == "run"], \
        "the same containers as without the anatomy: no window load for a window that cannot open"


class StandInWindow:
    """anatomy.start's stand-in: perf is not run, the counter is read at each phase's edges as the window reads
    it, and the window counts 3 system calls and 1 context switch per reply."""

    def __init__(self, instruments, pids, out_dir: Path):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)

    def measure(self, replies, seconds: float = 1.0):
        edges = [replies() for _ in range(4)]
        self.counted = (edges[1] - edges[0], edges[3] - edges[2])
        return self

    def close(self) -> None:
        pass

    def finish(self) -> anatomy.Anatomy:
        profiled, counted = self.counted
        counts = anatomy.Counts(0.5, counted, {"epoll_wait": counted}, 3 * counted, counted, counted, 0)
        return anatomy.Anatomy(counts, anatomy.Profile(0.5, profiled, self.out_dir / "perf.data"))


def test_the_window_runs_its_load_beside_deadconn_and_interrupts_it_starting_no_container(tmp_path, monkeypatch):
    """With a process to watch (this one, standing for the server's) and perf stood in for: each point's window
    runs a second httperf in deadconn's container (docker exec), opening its connections fast, and interrupts
    it; the sweep starts exactly the containers it starts without the anatomy."""
    monkeypatch.setattr(instruments, "server_pids", lambda ctx, managed: ([os.getpid()], ""))
    monkeypatch.setattr(instruments.anatomy, "start", StandInWindow)
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000", perf=anatomy.Instruments("/usr/bin/perf"))
    run_line(ctx, "up", EPOLL, 1)
    off, off_events = sweep_context(tmp_path / "off", Script(), dead="0,1000")
    run_line(off, "up", EPOLL, 1)
    assert [e[1] for e in events if e[0] == "run"] == [e[1] for e in off_events if e[0] == "run"]
    execs = [e for e in events if e[0] == "exec"]
    assert [(role, command[0]) for _, role, command in execs] == [("deadconn", "httperf")] * 2
    assert all(command[command.index("--rate") + 1] == str(instruments.CONNECTION_RATE) for *_, command in execs)
    assert [e for e in events if e[0] == "signal exec"] == [("signal exec", "deadconn", "INT")] * 2
    for p in points(ctx).values():
        assert p["status"] == "ok", p
        assert p["anatomy"]["replies_source"] == instruments.SERVER_COUNT and p["anatomy"]["wall_s"] is not None
        assert p["anatomy"]["replies"] == {"counting": 1000, "profile": 1000}  # the fake's counter: +1000 a read
        assert p["anatomy"]["syscalls_per_reply"] == 3.0


def test_a_remote_server_records_why_perf_and_slabinfo_cannot_see_it(tmp_path):
    remote = anatomy.prepare(local=False)
    ctx, events = sweep_context(tmp_path, Script(), perf=remote)
    ctx.server_local = False
    run_line(ctx, "up", EPOLL, 1)
    for p in points(ctx).values():
        assert p["anatomy"] == {"unavailable": remote.reason}
        assert p["memory"] == {"unavailable": instruments.REMOTE}


def test_no_anatomy_records_nothing_of_it(tmp_path):
    ctx, events = sweep_context(tmp_path, Script())
    assert ctx.run.record().plan.anatomy is False
    run_line(ctx, "up", EPOLL, 1)
    for p in points(ctx).values():
        assert "anatomy" not in p and "memory" not in p
        assert model.Point.from_json(p, "point").anatomy is None
    assert not list(ctx.run.raw_dir.glob("*.anatomy"))


def test_an_anatomy_entry_with_an_unknown_field_is_refused_in_one_line(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0", perf=anatomy.Instruments(None, "no perf"))
    run_line(ctx, "up", EPOLL, 1)
    (p,) = points(ctx).values()
    p["anatomy"] = {"window_s": 1.0, "cpu_shares": {}}
    with pytest.raises(model.UserError, match="is not a point this epollbench wrote: .*cpu_shares"):
        model.Point.from_json(p, "point.json")


def test_pipetest_runs_each_walk_of_the_plan_and_records_the_walk_and_the_visits(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), sweeps="pipetest", pipes="10,1000")
    steps.measure_lines(ctx, lambda _: None)
    commands = [e[2] for e in events if e[:2] == ("run", "pipetest")]
    assert [(c[c.index("--walk") + 1], c[c.index("--pipes") + 1]) for c in commands] == [
        ("stay", "10"), ("stay", "1000"), ("stride", "10"), ("stride", "1000")]
    found = {p.id: p for p in ctx.run.points()}
    assert sorted(found) == ["pipetest-up-epoll-r1-p000010", "pipetest-up-epoll-r1-p001000",
                             "pipetest-up-epoll-stride-r1-p000010", "pipetest-up-epoll-stride-r1-p001000"]
    stride = found["pipetest-up-epoll-stride-r1-p001000"]
    assert (stride.walk, stride.series.label, stride.figures.pipes_visited) == ("stride", "epoll (stride)", 1000)
    stay = json.loads(ctx.run.point_path("pipetest-up-epoll-r1-p001000").read_text())
    assert (stay["walk"], stay["figures"]["pipes_visited"], stay["figures"]["visits_max"]) == ("stay", 1, 9)
    events.clear()
    steps.measure_lines(ctx, lambda _: None)
    assert events == [], "a resume finds every walk's points"


def test_the_plans_expected_seconds_name_exactly_the_points_the_sweeps_measure(tmp_path):
    # Holders, their direct overlap, a skipped level, both walks: each measured point is one the ETA expected.
    ctx, _ = sweep_context(tmp_path, Script(), dead="0,1000,5000", fd_limit=2000, backends="select,epoll",
                           sweeps="dead,pipetest", pipes="10,1000")
    expected = durations.expected_seconds(ctx.plan, ctx.fd_limit)
    ctx.progress.start(total=plan.count_points(ctx.plan, ctx.fd_limit), done=0, expected=expected)
    steps.measure_lines(ctx, lambda _: None)
    measured = {p.id for p in ctx.run.points() if p.status != model.SKIPPED}
    assert measured == set(expected) and "dead-up-epoll-r1-d001000-direct" in measured
    assert ctx.progress.eta() == 0.0, "every expectation was used up by its point"
    # A dead line's first level starts its server, later ones open their step of dead connections.
    first, step = expected["dead-up-epoll-r1-d000000"], expected["dead-up-epoll-r1-d005000"]
    assert first == pytest.approx(durations.point_s(ctx.plan, model.DEAD) + durations.SERIES_START_S)
    assert step == pytest.approx(durations.point_s(ctx.plan, model.DEAD) + 4000 / durations.OPENED_PER_S)


def test_the_report_of_a_holders_series_says_who_held_them_and_compares_the_overlap(tmp_path):
    ctx, events = sweep_context(tmp_path, Script(), dead="0,1000,5000", fd_limit=2000, backends="poll,epoll")
    ctx.run.update_record(limits={"fd_hard_limit": 2000, "max_dead": {"poll": 1500, "epoll": 5000},
                                  "dead_holders": {"epoll": 4}})
    for series in (Series("ephttpd", "poll"), EPOLL):
        run_line(ctx, "up", series, 1)
    data = report_data.load(ctx.run)
    assert [p.id for p in data.overlaps] == ["dead-up-epoll-r1-d001000-direct"]
    assert len(data.groups[("dead", "up", EPOLL, 1000)].points) == 1, "the direct point is not a repetition"
    held = beyond.holders(data)
    assert held is not None and held.intro.startswith(
        "epoll: dead connections held by 4 helper processes in the server's epoll set at every level, because this "
        "host caps a process at 2,000 files")
    (row,) = held.rows  # the repetition's own point through the holders beside its direct one
    through = data.groups[("dead", "up", EPOLL, 1000)].points[0].figures
    direct = data.overlaps[0].figures
    assert (row["variant"], row["series"], row["x"], row["repetition"]) == ("UP", EPOLL, "1,000", 1)
    assert (row["through_rate"], row["through_cpu"]) == ("21.9k", f"{through.server_cpu_us_per_reply:.2f}")
    assert (row["direct_rate"], row["direct_cpu"]) == (human(direct.reply_rate),
                                                       f"{direct.server_cpu_us_per_reply:.2f}")
    caps = page.host_caps(data)
    assert caps[0].startswith("This host allows 2000 open files per process: one server process holds at most "
                              "1,500 dead connections; epoll reached 5,000 through helper processes")
    (limit,) = page.host_limit_rows(data)
    assert (limit["sweep"], limit["lines"], limit["at"], limit["more"]) == ("dead", "poll", "1,500 dead connections",
                                                                           True)
    assert limit["why"].startswith("host allows 2000 open files per process: at most ") and ";" not in limit["why"]
    (why,) = page.limit_reasons(data)
    assert why["line"] == "poll" and "no helper processes can hold more for poll" in why["reason"]
    assert beyond.extrapolations(data) == [], "two measured levels are too few for a fit"


def test_a_stopped_lines_extrapolation_is_a_least_squares_line_with_its_residuals():
    run = Run(Path(__file__).resolve().parent / "data" / "previous" / "20261128T002856Z-vm-paper")
    extended = {(e.variant, e.series.label): e for e in beyond.extrapolations(report_data.load(run))}
    assert ("up", "select") not in extended, "FD_SETSIZE stops select for good"
    poll = extended[("up", "poll")]
    assert poll.xs == [0, 1000, 5000, 10000, 19500] and poll.to_x == 60000
    assert sum(poll.residuals) == pytest.approx(0, abs=1e-9)
    assert sum(r * x for r, x in zip(poll.residuals, poll.xs, strict=True)) == pytest.approx(0, abs=1e-6)
    assert poll.value == pytest.approx(poll.intercept + poll.slope * 60000)
    row = poll.row()
    assert (row["line"], row["fit"], row["value"]) == ("UP poll", "2.40 + 6.242", f"{poll.value:.1f}")
    low, high = min(poll.residuals), max(poll.residuals)
    assert row["residuals"] == f"{low:+.2f} to {high:+.2f}".replace("-", "−") and high == pytest.approx(4.75, abs=5e-3)
    told = beyond.extrapolated(report_data.load(run))
    assert told is not None and told.top == 60000
    assert told.intro.startswith("poll, epoll, epoll-et, io_uring, aio-poll stop at the host's cap; their server CPU")
    assert told.intro.endswith("Beside it, 2002: poll on SMP answered 414.5 replies/s at 60,000.")



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
    run_line(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
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
        assert (f["late_share"], f["lagged_p99"], f["lagged_p999"]) == (0.229358, True, True)
        assert (p["flags"]["lagged"], p["flags"]["overloaded"]) == (True, False)
        assert (p["flags"]["lagged_p99"], p["flags"]["lagged_p999"]) == (True, True)
        assert "client_saturated" in p["flags"] and "server_saturated" in p["flags"]
        assert (ctx.run.path / p["openload"]["raw"]).read_text().startswith('{"program":"openload"')
        assert model.read_point(ctx.run.point_path(p["id"])).figures == model.OpenFigures(**f)
    started = [e[1] for e in events if e[0] == "run"]
    assert started == ["server", "deadconn", "openload", "openload", "openload"], "no probe: openload's rate is fixed"
    logs = sorted(p.name for p in ctx.run.raw_dir.iterdir() if p.suffix == ".log")
    assert logs == ["dead-open-up-epoll-r1.deadconn.log", "dead-open-up-epoll-r1.server.log"]


def lag(raised: bool, p99: bool = False, p999: bool = False, late_share: float = 0.0) -> dict:
    """openload's lagged object changed: any late send, and whether they were enough to move p99, p99.9."""
    return {"lagged/raised": raised, "lagged/p99": p99, "lagged/p99.9": p999, "lagged/late_share": late_share}


def test_openloads_flags_reach_the_points_flags_and_an_overloaded_point_stands(tmp_path):
    """Late sends at 1000 too few to move a percentile (12 of 40,000), at 5000 enough for p99.9 alone."""
    script = Script(openload_at={
        0: lag(False),
        1000: {**lag(True, late_share=0.0003), "lagged/late_sends": 12},
        5000: {**lag(True, p999=True, late_share=0.005), "overloaded/raised": True,
               "overloaded/achieved_share": 0.5, "achieved_rate": 10000.0, "latency_us/p99": 900000.0,
               "errors/timeout": 4, "errors/unsent": 100}})
    ctx, _ = open_context(tmp_path, script)
    run_line(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
    found = points(ctx)
    names = ("lagged", "lagged_p99", "lagged_p999", "overloaded")
    assert [tuple(found[x]["flags"][n] for n in names) for x in (0, 1000, 5000)] == \
        [(False, False, False, False), (True, False, False, False), (True, False, True, True)]
    assert [found[x]["figures"]["late_share"] for x in (0, 1000, 5000)] == [0.0, 0.0003, 0.005]
    assert [found[x]["figures"]["lagged_p999"] for x in (0, 1000, 5000)] == [False, False, True]
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
    run_line(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
    (point,) = points(ctx).values()
    assert (point["status"], point["reason"]) == ("failed", reason)


def test_unreadable_openload_output_fails_the_point_with_its_last_line(tmp_path):
    ctx, _ = open_context(tmp_path, Script(openload_output="openload: connect: Connection refused\n"), dead="0")
    run_line(ctx, "up", EPOLL, 1, model.DEAD_OPEN)
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
