"""The run measures its lines in plan.planned()'s order, which the dry run, the point count and the ETA go by
too: on the fake engine (tests/fakeengine.py), every point written by the run's sweep loop, checked against
planned(), over the dead sweep, both pipetest walks and the open loop, repeated, in two variants."""

from __future__ import annotations

from fakeengine import FakeContainers, Script, without_quiet_window

from experiment import model
from experiment.run import context, plan, results, steps
from experiment.run.progress import Progress

FD_LIMIT = 2000  # poll's and the open loop's 5,000 skipped, epoll's through holders with its direct 1,000


def run_context(tmp_path, events: list) -> context.Context:
    """A run of dead, pipetest and dead-open in UP and SMP, twice, its offered rate probed by wrk."""
    the_plan = plan.make_plan("quick", sweeps="dead,pipetest,dead-open", variants="up,smp", backends="poll,epoll",
                              dead="1000,5000", pipes="10,1000", repeat=2, duration=1, rate="0.5x",
                              anatomy=False)
    run = results.Run.create(model.RunRecord(run_id=f"test-{tmp_path.name}", profile=the_plan.profile,
                                             status="running", started_at=model.utc_now(), command_line=[],
                                             plan=the_plan), tmp_path)
    shared: dict = {}
    servers, clients = FakeContainers(Script(), events, shared), FakeContainers(Script(), events, shared)
    ctx = context.Context(run, the_plan, servers, clients, "server:test", "client:test",  # type: ignore[arg-type]
                          steps.cpusets([0, 1]), FD_LIMIT, Progress(lambda _: None), plan.choices(the_plan))
    ctx.progress.start(total=plan.count_points(the_plan, FD_LIMIT), done=0)
    return ctx


def test_the_run_writes_each_planned_line_whole_and_in_planned_order(tmp_path, monkeypatch):
    events: list = []
    written: list[tuple[str, int]] = []  # each point's id, and how many wrk runs had started by then
    write_point = results.Run.write_point

    def recording(run: results.Run, point: model.Point) -> None:
        written.append((point.id, sum(e[:2] == ("run", "wrk") for e in events)))
        write_point(run, point)

    monkeypatch.setattr(results.Run, "write_point", recording)
    without_quiet_window(monkeypatch)  # each point's quiet window before its load orders nothing
    ctx = run_context(tmp_path, events)
    steps.measure_lines(ctx, lambda _: None)

    lines = plan.planned(ctx.plan, FD_LIMIT)
    assert {line.sweep for line in lines} == {model.DEAD, model.PIPETEST, model.DEAD_OPEN}
    assert {line.series.walk for line in lines if line.sweep == model.PIPETEST} == {"stay", "stride"}
    line_of = {line.point_id(level): n for n, line in enumerate(lines) for level in line.levels}
    ids = [point_id for point_id, _ in written]
    assert len(ids) == len(set(ids)) == len(line_of) and set(ids) == set(line_of), "every planned point, once"
    order = [line_of[point_id] for point_id in ids]
    assert order == sorted(order), "each line's points in one block, the lines in planned() order"
    probes = sum(e[:2] == ("run", "wrk") for e in events)
    assert probes == 2 * len(ctx.plan.open_variants) and written[0][1] == probes, \
        "the open loop's capacity probe runs whole before the first point"
    status = {point.id: point.status for point in ctx.run.points()}
    assert status["dead-up-poll-r2-d005000"] == status["pipetest-smp-epoll-stride-r2-p001000"] == model.SKIPPED
    assert status["dead-smp-epoll-r2-d001000-direct"] == status["dead-open-smp-epoll-r2-d001000"] == model.OK

