"""The open-loop sweep in the report: a run measured by the dead sweep's own code on the fake engine
(tests/fakeengine.py), openload's captured output changed per level so that poll's p99 breaks and epoll's does
not, and the generator lags a little at 1000 and more at 5000; its figures, headline, key numbers, notices
and markdown."""

from __future__ import annotations

import json

import pytest
from fakeengine import FakeContainers, Script, without_quiet_window

from experiment import model
from experiment.catalog import Series
from experiment.host import checks
from experiment.report.data import load
from experiment.report.page import BREAK_FACTOR, headlines, host_caps, notices
from experiment.report.plots import run_figure_rows
from experiment.report.render import render
from experiment.run import context, dead, plan, results, steps
from experiment.run.progress import Progress

POLL, EPOLL = Series("ephttpd", "poll"), Series("ephttpd", "epoll")
# p99 in ms by dead connections: poll's passes 10x its 0-dead value at 5000 (overloaded there), epoll's never.
P99_MS = {POLL: {0: 2.0, 1000: 5.0, 5000: 30.0}, EPOLL: {0: 2.0, 1000: 2.5, 5000: 3.0}}
P50_MS = 0.5
RATE = 20000.0
# openload's lag by dead connections (lagged: raised, p99, p99.9): a few late sends at 1000, which move no
# percentile; at 5000, enough to move p99.9 for poll and p99 for epoll. Only epoll's is the headline's business.
LAG = {POLL: {1000: (True, False, False), 5000: (True, False, True)},
       EPOLL: {1000: (True, False, False), 5000: (True, True, True)}}


def script_for(series: Series) -> Script:
    at = {}
    for x, p99 in P99_MS[series].items():
        over = series == POLL and x == 5000
        raised, p99_lag, p999_lag = LAG[series].get(x, (False, False, False))
        at[x] = {"latency_us/p99": p99 * 1e3, "latency_us/p50": P50_MS * 1e3, "lagged/raised": raised,
                 "lagged/p99": p99_lag, "lagged/p99.9": p999_lag, "overloaded/raised": over,
                 "achieved_rate": RATE / 2 if over else RATE}
    return Script(openload_at=at)


@pytest.fixture
def open_run(tmp_path, monkeypatch) -> results.Run:
    return measured(tmp_path, monkeypatch)


def measured(tmp_path, monkeypatch, fd_limit: int = 20000) -> results.Run:
    # The host the tests share is busy: its real check would flag other load at random.
    monkeypatch.setattr(checks.LoadSnapshot, "other_load", lambda self, threshold_pct=0: False)
    without_quiet_window(monkeypatch)
    the_plan = plan.make_plan("quick", sweeps="dead", variants="up", backends="poll,epoll", dead="0,1000,5000",
                              duration=1, load="open")
    run = results.Run.create(model.RunRecord(run_id="test-open", profile="quick", status="complete",
                                             started_at=model.utc_now(), command_line=[], plan=the_plan), tmp_path)
    run.update_record(open_rate={"rate": RATE, "requested": "0.5x", "share": 0.5,
                                 "capacity": {"up/poll": 41000.0, "up/epoll": 40000.0}, "lowest": "up/epoll",
                                 "probe": {"load": "wrk", "duration_s": 2.0, "connections": 100, "dead": 0,
                                           "failed": {}}})
    events: list = []
    shared: dict = {}
    servers, clients = FakeContainers(Script(), events, shared), FakeContainers(Script(), events, shared)
    ctx = context.Context(run, the_plan, servers, clients, "server:test", "client:test",  # type: ignore[arg-type]
                          steps.cpusets([0, 1]), fd_limit, Progress(lambda _: None), plan.choices(the_plan))
    ctx.open_rate = RATE
    ctx.progress.start(total=plan.count_points(the_plan, fd_limit), done=0)
    run.update_record(limits={"fd_hard_limit": fd_limit, "max_dead_open": {
        s.label: plan.max_dead(fd_limit, s.backend, the_plan.open_connections) for s in the_plan.series}})
    for series in (POLL, EPOLL):
        servers.script = clients.script = script_for(series)
        line, = [line for line in plan.planned(the_plan, fd_limit)
                 if line.sweep == model.DEAD_OPEN and line.series == series]
        dead.dead_series(ctx, line)
    return run


def test_the_headline_names_where_each_lines_p99_first_exceeds_ten_times_its_0_dead_value(open_run):
    """It names the generator only at epoll's 5000, where openload's late sends could have moved p99: not at
    poll's, whose late sends could have moved p99.9 alone."""
    data = load(open_run)
    (head,) = [h for h in headlines(data) if h.sweep == model.DEAD_OPEN]
    items = {i.series: i for i in head.items}
    assert (items[POLL].broke, items[POLL].x, items[EPOLL].broke, items[EPOLL].x) == (True, 5000, False, 5000)
    breaks = next(x for x, v in P99_MS[POLL].items() if v > BREAK_FACTOR * P99_MS[POLL][0])
    assert head.text == (
        f"UP, open loop at 20.0k requests/s: poll's p99 first exceeded 10× its 0-dead value (2.00 ms) at {breaks:,} "
        "dead connections (30.00 ms; server overloaded): the server's CPU busy; epoll's p99 never exceeded 10× its "
        "0-dead value (2.00 ms) up to 5,000 dead connections (3.00 ms, ×1.50; generator lagged for p99).")
    said = " ".join(notices(data))
    assert "At 1 of 6 open-loop points the server did not keep up with the offered rate" in said
    assert "At 1 of 6 open-loop points the generator lagged on 1% or more of its sends" in said
    assert "At 2 of 6 open-loop points the generator lagged on 0.1% or more of its sends" in said
    assert said.count("generator") == 2, "late sends that move no percentile are not the generator's doing"


def test_the_figures_draw_p99_with_p50_thinner_on_a_log_axis_and_the_servers_cpu_busy(open_run):
    rows = {row.plots[0].name: row for row in run_figure_rows(load(open_run))}
    assert set(rows) == {"dead-open-latency-up", "dead-open-cpu-busy-up", "dead-open-cpu-per-reply-up",
                         "dead-open-achieved-rate-up"}, "no 2002 comparison for the open loop"
    (latency,) = rows["dead-open-latency-up"].plots
    assert latency.logy
    assert [(s.label, s.thin) for s in latency.series] == [("poll p99", False), ("epoll p99", False),
                                                           ("poll p50", True), ("epoll p50", True)]
    assert latency.series[0].medians == pytest.approx(list(P99_MS[POLL].values()))
    assert latency.series[2].medians == pytest.approx([P50_MS] * 3)
    (busy,) = rows["dead-open-cpu-busy-up"].plots
    expected = [json.loads(p.read_text())["figures"]["server_cpu_busy_pct"]
                for p in sorted(open_run.points_dir.glob("dead-open-up-poll-*.json"))]
    assert busy.series[0].medians == expected and all(v > 0 for v in expected)
    assert "20.0k requests/s offered (0.5 × 40.0k/s, the lowest capacity at 0 dead connections, up/epoll's" \
        in rows["dead-open-latency-up"].caption


def test_the_markdown_report_carries_the_headline_key_numbers_and_figures(open_run):
    index = render(open_run)
    markdown = (index.parent / "report.md").read_text()
    assert "\n- UP, open loop at 20.0k requests/s: poll's p99 first exceeded 10× its 0-dead value" in markdown
    assert "| dead-open | UP | poll | 5,000 dead connections | p99 30.00 ms | ×15.00 of 0-dead p99 |" in markdown
    assert "p99 over 10× here, server overloaded |" in markdown
    assert "p99 never over 10×, generator lagged for p99 |" in markdown
    assert "![UP: p99 reply latency and p50 (thin) vs dead connections](figures/dead-open-latency-up.png)" in markdown
    assert (index.parent / "figures" / "dead-open-cpu-busy-up.svg").exists()
    page = index.read_text()
    assert "p99 reply latency (median)" in page and "p50 reply latency (median)" in page
    assert "server overloaded" in page and "generator lagged" in page
    csv_rows = (index.parent / "points.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    assert "latency_p99_ms" in header and sum(r.startswith("dead-open-up-") for r in csv_rows) == 6


def test_a_run_of_the_open_loop_alone_says_where_the_host_stopped_it(tmp_path, monkeypatch):
    run = measured(tmp_path, monkeypatch, fd_limit=2000)
    data = load(run)
    (cap,) = host_caps(data)
    assert cap == ("This host allows 2000 open files per process: dead connections stop at 1,836 per server (the "
                   "2002 study went to 60,000).")
    (head,) = headlines(data)
    assert "up to 1,000 dead connections" in head.text and "poll's p99 never exceeded" in head.text
    render(run)


def with_tail(run: results.Run, series: Series, kept_p99_ms: dict[int, float], interfered: bool) -> None:
    """The run's points of series rewritten as if a capture had watched them: the interfered flag, and the tail
    whose p99 without the third parties' stretches is kept_p99_ms by dead connections."""
    for point in run.points():
        if point.series != series or point.x not in kept_p99_ms:
            continue
        kept = model.Percentiles(P50_MS, 1.0, kept_p99_ms[point.x], kept_p99_ms[point.x], kept_p99_ms[point.x], 900)
        point.tail = model.Tail(raw=kept, kept=kept, requests=1000, replies=1000, excluded=100, excluded_share=0.1,
                                after_ms=10.0)
        point.flags[checks.INTERFERED] = interfered
        run.update_point(point)


def test_a_break_that_is_gone_without_the_third_parties_stretches_is_put_down_to_them(open_run):
    """poll breaks at 5,000 raw; with most repetitions interfered and its p99 without the stretches never over
    10x, the headline says so and names a third party; epoll's line, which never broke, names no cause."""
    with_tail(open_run, POLL, {0: 2.0, 1000: 2.2, 5000: 2.4}, interfered=True)
    data = load(open_run)
    (head,) = [h for h in headlines(data) if h.sweep == model.DEAD_OPEN]
    items = {i.series: i for i in head.items}
    assert items[POLL].cause == "a third party" and items[EPOLL].cause == ""
    assert items[POLL].kept is not None and (items[POLL].kept.broke, items[POLL].kept.x) == (False, 5000)
    assert ("at 5,000 dead connections (30.00 ms; third parties on the server's CPUs, server overloaded), without "
            "third parties' stretches never up to 5,000 (×1.20): a third party;") in head.text


def test_a_break_that_survives_the_exclusion_is_not_put_down_to_a_third_party(open_run):
    with_tail(open_run, POLL, {0: 2.0, 1000: 2.2, 5000: 25.0}, interfered=True)
    data = load(open_run)
    (head,) = [h for h in headlines(data) if h.sweep == model.DEAD_OPEN]
    (poll,) = [i for i in head.items if i.series == POLL]
    assert poll.kept is not None and (poll.kept.broke, poll.kept.x, poll.kept.value) == (True, 5000, 25.0)
    assert poll.cause == "the server's CPU busy", "overloaded at 5,000: the server could not keep up"
    assert "without third parties' stretches at 5,000 (25.00 ms): the server's CPU busy;" in head.text
