"""The progress a run shows: an ETA that skipped points do not make optimistic, and the image build's steps."""

from __future__ import annotations

import pytest

from experiment.catalog import Series
from experiment.host.images import BuildSteps
from experiment.model import PIPETEST, PipeFigures, Point, utc_now
from experiment.run import plan, runlog
from experiment.run.plan import count_points
from experiment.run.progress import Progress, clock_text, eta_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def point(n: int, status: str = "ok") -> Point:
    return Point(id=f"p{n}", sweep=PIPETEST, variant="up", series=Series("ephttpd", "epoll"), repetition=1, x=n,
                 host_max=False, started_at=utc_now(), status=status,
                 reason="host allows 20000 open files" if status != "ok" else None,
                 figures=PipeFigures(passes_per_s=1000.0, elapsed_s=2.0, events_per_wait=1.0) if status == "ok"
                 else None)


def test_eta_is_the_time_measured_over_its_expectation_times_what_is_left():
    assert eta_s(30.0, 3, 5) == 50.0
    assert eta_s(12.0, 4, 0) == 0.0
    assert eta_s(0.0, 0, 7) is None, "nothing measured yet: nothing to go by"
    with pytest.raises(ValueError):
        eta_s(-1.0, 1, 1)
    with pytest.raises(ValueError):
        eta_s(1.0, 1, -1)
    assert clock_text(None) == "-:--:--" and clock_text(3725.4) == "1:02:05" and clock_text(-3) == "0:00:00"


def test_with_expectations_the_eta_weighs_each_point_left_by_what_is_expected_of_it():
    clock = Clock()
    progress = Progress(lambda _: None, clock=clock)
    # A 15-second dead point and three 3-second pipetest points expected; the first point took 30 s: twice its
    # expectation, so the rest should too. Unweighted, the mean point (30 s) times 3 left would say 90 s.
    progress.start(total=4, done=0, expected={"p1": 15.0, "p2": 3.0, "p3": 3.0, "p4": 3.0})
    assert progress.eta() is None
    clock.now += 30
    progress.advance(point(1))
    assert progress.eta() == pytest.approx(2 * 9)
    clock.now += 3
    progress.advance(point(2))  # 33 s for 18 expected
    assert progress.eta() == pytest.approx(33 / 18 * 6)
    assert progress.bar.tasks[0].fields["eta_at"] == pytest.approx(clock.now + 33 / 18 * 6)


def test_skipped_points_count_neither_in_the_mean_nor_in_what_is_left():
    clock = Clock()
    progress = Progress(lambda _: None, clock=clock)
    # 10 points, 4 of which the plan skips (levels above the host's fd limit).
    progress.start(total=10, done=0, to_skip=4)
    assert progress.eta() is None
    clock.now += 10
    progress.advance(point(1))
    assert progress.eta() == 10 * 5  # 10 s a point, 10 - 1 done - 4 to skip = 5 left
    progress.advance(point(2, "skipped"))
    progress.advance(point(3, "skipped"))
    # Counted as points like the others, two instant skips would have made it 10 s / 3 points * 7 left = 23 s.
    assert progress.eta() == 10 * 5
    clock.now += 20
    progress.advance(point(4))
    assert progress.eta() == 15 * 4  # (10 + 20) / 2 a point, 10 - 4 done - 2 to skip = 4 left
    clock.now += 6
    progress.advance(point(5, "failed"))  # a failed point took its time
    assert progress.eta() == 12 * 3
    progress.advance(point(6, "skipped"))
    progress.advance(point(7, "skipped"))
    assert progress.eta() == 12 * 3
    task = progress.bar.tasks[0]
    assert task.completed == 7 and task.fields["eta_at"] == clock.now + 36


def test_a_resumed_run_starts_from_its_recorded_points():
    clock = Clock()
    progress = Progress(lambda _: None, clock=clock)
    progress.start(total=8, done=5, to_skip=1)
    clock.now += 4
    progress.advance(point(6))
    assert progress.eta() == 4 * 1  # 8 - 6 done - 1 to skip


def test_every_point_goes_to_the_run_log_with_its_eta(tmp_path):
    clock = Clock()
    with runlog.capture():
        runlog.attach(tmp_path)
        progress = Progress(lambda _: None, clock=clock)
        progress.start(total=3, done=0, to_skip=1)
        clock.now += 65
        progress.advance(point(1))
        progress.advance(point(2, "skipped"))
    lines = (tmp_path / "logs" / runlog.HARNESS_LOG).read_text().splitlines()
    assert "[1/3] p1: last: 1,000 passes/s (ETA 0:01:05)" in lines
    assert "[2/3] p2: skipped: host allows 20000 open files (ETA 0:01:05)" in lines


def test_the_plan_counts_the_points_it_will_skip():
    the_plan = plan.make_plan("quick", sweeps="dead,pipetest", variants="up,smp", backends="select,epoll",
                              dead="0,1000,50000", pipes="10,5000", repeat=2)
    # Under 20,000 open files: select skips 1,000 and 50,000 dead (FD_SETSIZE); epoll reaches 50,000 through
    # holders and measures 1,000 once more without them; pipetest runs both walks, select skipping 5,000 pipes.
    assert count_points(the_plan, 20000) == (3 + 4 + (2 + 2) * 2) * 2 * 2
    assert count_points(the_plan, 20000, skipped=True) == (2 + 0 + 1 * 2) * 2 * 2


def test_the_build_says_each_step_that_runs_and_how_many_came_from_the_cache():
    said: list[str] = []
    steps = BuildSteps("server", said.append)
    for chunk in ["Step 1/6 : ARG BASE_IMAGE\n", "Step 2/6 : FROM $BASE_IMAGE AS build\n", " ---> 1a2b\n",
                  "Step 3/6 : COPY images /src\n ---> Using cache\n ---> 3c4d\n", "Step 4/6 : RUN ma",
                  "ke -C /src\n", " ---> Running in 5e6f\n", "cc -O2 ...\n", " ---> 7a8b\n", "Step 5/6 : COPY x /y\n",
                  " ---> 9c0d\n", "Step 6/6 : LABEL a=b\n", " ---> Running in 1e2f\n", "Successfully built 3a4b\n"]:
        steps.feed(chunk)
    steps.done()
    assert said == ["server: Step 4/6 : RUN make -C /src", "server: Step 5/6 : COPY x /y",
                    "server: built: 2 steps ran, 1 came from the layer cache"]
