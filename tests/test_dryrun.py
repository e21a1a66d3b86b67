"""`invoke reproduce --dry-run`: the plan's points, skips and time, without building or starting anything, and
the same point count as the real run."""

from __future__ import annotations

import re

import pytest
from reproducing import finished, invoke

from experiment.run import dryrun, plan
from experiment.run.containers import LABEL_RUN
from experiment.run.plan import count_points
from experiment.run.results import Run

TINY = ["--sweeps", "dead,pipetest", "--variants", "up", "--backends", "epoll", "--dead", "0,1000,5000",
        "--pipes", "10,5000", "--duration", "1"]


def test_a_dry_run_lists_each_lines_levels_and_why_it_skips_some(tmp_path):
    the_plan = plan.make_plan("quick", backends="select,epoll", variants="up", dead="0,1000,5000")
    said: list[str] = []
    count = dryrun.describe(the_plan, tmp_path, said.append, fd_limit=1500)
    assert count == count_points(the_plan, 1500)
    text = "\n".join(said)
    assert "dead UP select: 0; skips 1,000, 5,000 (select watches descriptors below FD_SETSIZE=1024" in text
    # epoll's set takes dead connections from helper processes past one process's files: the whole line
    # runs through them, and its overlapping level once more without
    assert "dead UP epoll (dead connections held by 5 helper processes): 0, 1,000, 1,000 (direct), 5,000" in text
    assert "pipetest UP epoll (stride): 10, 100; skips 1,000, 10,000 (host allows 1500 open files" in text
    # In the run's order (plan.planned): a backend's walks one after the other, repetition by repetition
    assert [row.split(":")[0] for row in said if row.startswith("pipetest")] == [
        "pipetest UP select (stay)", "pipetest UP select (stride)", "pipetest UP epoll (stay)",
        "pipetest UP epoll (stride)"]
    assert f"points: {count} (" in text and "expected wall time:" in text and "from the plan's durations" in text
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


def test_an_estimate_grows_with_the_duration_and_the_repetitions():
    short = plan.make_plan("quick", duration=5)
    assert dryrun.estimate_s(plan.make_plan("quick", duration=10), 20000) > dryrun.estimate_s(short, 20000)
    assert dryrun.estimate_s(plan.make_plan("quick", duration=5, repeat=2), 20000) > dryrun.estimate_s(short, 20000)


@pytest.mark.docker
def test_a_dry_runs_point_count_is_the_real_runs_and_it_starts_nothing(tmp_path, client):
    ours = {"label": LABEL_RUN}
    before = {c.id for c in client.containers.list(all=True, filters=ours)}
    code, out, err = finished(invoke(*TINY, "--dry-run", results_dir=tmp_path), 120)
    assert code == 0, err
    assert {c.id for c in client.containers.list(all=True, filters=ours)} <= before and not any(tmp_path.iterdir())
    promised = int(re.search(r"^points: (\d+) ", out, re.M).group(1))
    code, out, err = finished(invoke(*TINY, "--no-report", results_dir=tmp_path), 600)
    assert code == 0, err
    run = Run.open(None, tmp_path)
    assert len(run.points()) == promised
    code, out, err = finished(invoke(*TINY, "--dry-run", results_dir=tmp_path), 120)
    assert re.search(rf"expected wall time: .* as the last run of this plan here took \({run.id}\)", out), out
