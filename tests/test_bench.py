"""The building blocks of `invoke bench` measure what they say; the numbers themselves are never asserted."""

import json
import math
import os
from pathlib import Path

import pytest
import tools

from experiment import catalog
from experiment.bench import launch, registry, stats
from experiment.bench.items import capacity, completion, generators, nginx, seccomp, seccomp_figures, tail, tail_figures
from experiment.bench.items import walk as pipewalk
from experiment.run import loads
from experiment.run.plan import max_dead


@pytest.fixture
def cpus():
    return launch.Cpus()


@pytest.mark.parametrize("server", ["ephttpd", pytest.param("nginx", marks=pytest.mark.needs_tool("nginx", root=True))])
def test_a_point_counts_every_server_process_and_the_loads_replies(build_dir, cpus, server, monkeypatch):
    monkeypatch.setattr(launch, "LOAD_SECONDS", 2)
    point = launch.point(cpus, server, "epoll", 300, "wrk")

    assert point["replies"] > 0 and point["errors"] == 0
    # nginx serves from its worker, not its master: a CPU time of zero would mean the worker was missed.
    assert point["server_cpu_s"] > 0
    assert point["cpu_us_per_reply"] == pytest.approx(point["server_cpu_s"] * 1e6 / point["replies"])
    assert (point["server"], point["backend"], point["dead"], point["load"]) == (server, "epoll", 300, "wrk")


def test_server_processes_are_pinned_to_the_server_cpu(build_dir, cpus):
    with launch.ephttpd(cpus, "epoll", workers=2) as (_port, pids):
        assert len(pids) == 3, "the parent and its two workers"
        assert all(os.sched_getaffinity(pid) == cpus.server for pid in pids)


HTTPERF_DATA = Path(__file__).parent / "data" / "httperf"


def recorded_httperf(monkeypatch, outputs: list[str]) -> list:
    """Replaces the httperf runs with the given outputs, in order; returns the loads asked for."""
    asked = []

    def run(_cpus, load, _seconds):
        asked.append(load)
        return outputs[len(asked) - 1]

    monkeypatch.setattr(launch, "run_httperf", run)
    return asked


def test_the_httperf_load_is_sized_by_a_fast_probe_and_reports_the_sampled_rate(cpus, monkeypatch):
    probe_output = (HTTPERF_DATA / "epoll-50calls.txt").read_text()      # 0.995 s: long enough
    load_output = (HTTPERF_DATA / "epoll-2500calls.txt").read_text()     # two 5 s samples
    probe, load = loads.parse(probe_output), loads.parse(load_output)
    started = recorded_httperf(monkeypatch, [probe_output, load_output])
    result = launch.httperf(cpus, 8080, launch.probe_rate(cpus, 8080))

    assert [(x.rate, x.connections) for x in started] == [(loads.PROBE_CONNECTION_RATE, launch.ACTIVE),
                                                        (loads.ActiveLoad(port=1).rate, launch.ACTIVE)]
    assert started[0].num_calls == loads.PROBE_CALLS
    assert started[1].num_calls == loads.calls_for_duration(probe["reply_rate"]["overall"], launch.HTTPERF_SECONDS,
                                                            launch.ACTIVE)
    # The rate is httperf's mean of its samples, not replies over a test duration that includes the ramp.
    assert result["rate"] == load["reply_rate"]["avg"] != load["reply_rate"]["overall"]
    assert (result["rate_source"], result["rate_samples"]) == ("samples", 2)
    assert result["replies"] == 250000 and result["duration_s"] == 10.904
    assert result["command"] == loads.command(started[1])


def test_a_probe_too_short_to_tell_is_run_again_sized_for_the_probe_length(cpus, monkeypatch):
    short = (HTTPERF_DATA / "epoll-50calls.txt").read_text().replace("test-duration 0.995 s", "test-duration 0.1 s")
    longer = (HTTPERF_DATA / "epoll-2500calls.txt").read_text()
    started = recorded_httperf(monkeypatch, [short, longer])
    assert launch.probe_rate(cpus, 8080) == loads.parse(longer)["reply_rate"]["overall"]
    assert [x.rate for x in started] == [loads.PROBE_CONNECTION_RATE] * 2
    short_rate = loads.parse(short)["reply_rate"]["overall"]
    assert short_rate == pytest.approx(10 * loads.parse(short.replace("0.1 s", "1 s"))["reply_rate"]["overall"])
    assert started[1].num_calls == loads.calls_for_duration(short_rate, loads.PROBE_SECONDS, launch.ACTIVE)


def test_an_httperf_point_counts_every_call_of_every_connection(build_dir, cpus, monkeypatch):
    monkeypatch.setattr(launch, "HTTPERF_SECONDS", 1)
    point = launch.point(cpus, "ephttpd", "epoll", 0, "httperf")

    calls = int(point["command"][point["command"].index("--num-calls") + 1])
    assert point["errors"] == 0 and point["replies"] == launch.ACTIVE * calls
    assert point["server_cpu_s"] > 0 and point["probe_rate"] > 0
    if point["rate_source"] == "replies/test-duration":
        assert point["rate"] == pytest.approx(point["replies"] / point["duration_s"])


def test_the_server_cpu_time_leaves_out_the_probe(cpus, monkeypatch):
    """The probe's replies are not counted, so neither is the CPU time the server spent on them."""
    events = []
    output = (HTTPERF_DATA / "epoll-2500calls.txt").read_text()
    monkeypatch.setattr(launch, "run_httperf", lambda _c, load, _s: events.append(load.rate) or output)
    monkeypatch.setattr(launch, "ticks", lambda pids: events.append("cpu read") or 0)
    launch.under_load(cpus, 8080, [1], "httperf")
    assert events == [loads.PROBE_CONNECTION_RATE, "cpu read", loads.ActiveLoad(port=1).rate, "cpu read"]


def fake_point(costs: dict):
    """A _point that returns the given CPU per reply for (server, backend, dead), whatever the load, at
    each round in turn."""
    calls = {}

    def point(_cpus, server, backend, dead, load):
        key = (server, backend, dead, load)
        n = calls[key] = calls.get(key, 0) + 1
        cost = costs[key[:3]][n - 1]
        return {"server": server, "backend": backend, "dead": dead, "load": load, "rate": 1e6 / cost / 1.25,
                "server_busy_pct": 80.0, "cpu_us_per_reply": cost}
    return point


def test_the_ephttpd_over_nginx_ratio_is_the_median_of_each_rounds_ratio(cpus, monkeypatch):
    # Round 2 is disturbed for both servers alike: its ratio is still 0.8, while pooling would skew it.
    monkeypatch.setattr(launch, "point", fake_point({
        ("ephttpd", "epoll", 0): [8.0, 16.0, 8.8], ("nginx", "epoll", 0): [10.0, 20.0, 10.0],
        ("ephttpd", "epoll", 500): [9.0, 9.0, 9.0], ("nginx", "epoll", 500): [9.0, 10.0, 12.0]}))
    result = nginx.versus_nginx(cpus, 500, rounds=3)
    assert len(result["rows"]) == 3 * 2 * 2 * 2
    assert result["ephttpd_over_nginx"]["wrk@0"] == pytest.approx(0.8)
    assert result["ephttpd_over_nginx"]["wrk@500"] == pytest.approx(0.9)
    line = next(x for x in result["summary"] if (x["load"], x["dead"], x["server"]) == ("wrk", 0, "ephttpd"))
    assert (line["rounds"], line["cpu_us_per_reply"]) == (3, 8.8)
    assert line["replies_per_cpu_s"] == pytest.approx(1e6 / 8.8)


def test_capacity_kept_compares_replies_per_cpu_second_and_poll_pays_per_dead_connection(cpus, monkeypatch):
    most = max_dead(20000, "epoll", launch.ACTIVE)
    costs = {("ephttpd", b, d): [8.0] * 2
             for b in catalog.EPHTTPD_BACKENDS for d in (0, max_dead(20000, b, 100))}
    costs[("ephttpd", "poll", most)] = [8.0 + most * 6e-3] * 2  # 6 ns per dead connection per reply
    monkeypatch.setattr(launch, "point", fake_point(costs))
    result = capacity.capacity(cpus, 20000, rounds=2)
    assert result["capacity_kept"]["epoll"] == pytest.approx(1.0)
    assert result["capacity_kept"]["poll"] == pytest.approx(8.0 / (8.0 + most * 6e-3))
    assert result["poll_ns_per_dead_per_reply"] == pytest.approx(6.0)


def test_the_generators_item_runs_each_openload_variant_then_a_saturation_probe(build_dir, cpus, monkeypatch):
    """One round: wrk, httperf, openload in each variant at the offered rate (500/s, achieved here), then with
    its defaults at 10 M/s, never achieved here: the sustained rate is the highest offered with the defaults
    that was achieved (or none)."""
    monkeypatch.setattr(launch, "LOAD_SECONDS", 1)
    monkeypatch.setattr(generators, "OPEN_RATE", 500)
    monkeypatch.setattr(generators, "SATURATION_RATE", 10_000_000)
    variants = (generators.DEFAULT, generators.Variant(20, 100), generators.Variant(1, 100, "timerfd"))
    monkeypatch.setattr(generators, "VARIANTS", variants)
    result = generators.generators(cpus, rounds=1)
    rows = result["rows"]
    assert [r["generator"] for r in rows[:2]] == ["wrk", "httperf"]
    opened = [r for r in rows if r["generator"] == "openload"]
    assert {(r["variant"], r["timer"], r["offered"]) for r in opened[:3]} == {(v.name, v.timer, 500) for v in variants}
    assert (opened[-1]["variant"], opened[-1]["offered"]) == (generators.DEFAULT.name, 10_000_000)
    assert opened[-1]["overloaded"] and opened[-1]["rate"] < 10_000_000
    assert all(r["requests"] > 0 and r["cpu_us_per_request"] > 0 for r in rows)
    assert all(0 <= r["late_share"] <= 1 and r["mean_lag_us"] >= 0 for r in opened)
    default_row = next(r for r in opened if (r["variant"], r["offered"]) == (generators.DEFAULT.name, 500))
    expected = None if default_row["overloaded"] else 500
    summary = result["summary"]
    assert summary["openload"]["max_sustained_rate"] == expected
    assert summary["wrk"]["rate"] == rows[0]["rate"]
    assert [(x["variant"], x["offered"]) for x in summary["openload_variants"]] == [
        (r["variant"], r["offered"]) for r in opened]
    assert summary["goal"]["variant"] == generators.DEFAULT.name


def variant_rows(shares: list[float], lagged: list[bool], variant=None, cpu: list[float] | None = None) -> list[dict]:
    variant = variant or generators.DEFAULT
    return [{"generator": "openload", "variant": variant.name, "offered": generators.OPEN_RATE,
             "timer": variant.timer, "timer_slack_us": variant.timer_slack_us, "batch_us": variant.batch_us,
             "round": n, "waits_per_reply": 1.0,
             "rate": share * generators.OPEN_RATE, "achieved_share": share, "overloaded": share < 0.99,
             "lagged": late, "lagged_p99": late, "cpu_us_per_request": cost, "late_share": 0.0,
             "mean_lag_us": 5.0, "busy_share": 0.9,
             "p50_ms": 0.1, "p99_ms": 1.0, "p99.9_ms": 2.0}
            for n, (share, late, cost) in enumerate(zip(shares, lagged, cpu or [9.0] * len(shares), strict=True), 1)]


def test_each_variants_cpu_per_request_is_divided_by_the_baselines_of_the_same_round():
    """Rounds 1-3: the baseline costs 10, 20, 10 µs; the variant 9, 19, 30: ratios 0.9, 0.95, 3.0."""
    base = variant_rows([1.0] * 3, [False] * 3, generators.BASELINE, [10.0, 20.0, 10.0])
    other = variant_rows([1.0] * 3, [False] * 3, generators.Variant(20, 0), [9.0, 19.0, 30.0])
    lines = {x["variant"]: x for x in generators.variant_lines(other + base)}
    assert lines["slack 20 batch 0"]["cpu_vs_baseline"] == pytest.approx((0.95, 0.9, 3.0))
    assert lines[generators.BASELINE.name]["cpu_vs_baseline"] == (1.0, 1.0, 1.0)


def test_openloads_defaults_and_the_baseline_are_among_the_variants():
    assert generators.DEFAULT in generators.VARIANTS and generators.BASELINE in generators.VARIANTS


@pytest.mark.parametrize(("shares", "lagged", "verdict"), [
    ([1.0, 0.999, 0.995, 1.0, 0.998, 0.997], [False] * 6, "met"),
    ([1.0, 0.999, 0.95, 1.0, 0.998, 0.997], [False] * 6, "median"),  # one round overloaded: the interval says
    ([1.0, 0.999, 0.995, 1.0, 0.998, 0.997], [True, False, False, False, False, False], "median"),
    ([1.0, 0.98, 0.95, 0.97, 0.998, 0.97], [False] * 6, "missed"),
    ([1.0, 0.999, 0.995, 1.0, 0.998, 0.997], [True, True, True, True, False, False], "missed"),
])
def test_openloads_goal_is_met_only_where_the_whole_interval_is_and_no_round_was_flagged(shares, lagged, verdict):
    other = variant_rows([0.5] * 6, [True] * 6, generators.Variant(50, 0))
    lines = generators.variant_lines(variant_rows(shares, lagged) + other)
    assert [x["lagged_rounds"] for x in lines] == [sum(lagged), 6]
    found = generators.goal(lines)
    assert found["verdict"] == verdict
    assert found["achieved_share"][0] == pytest.approx(sorted(shares)[2] / 2 + sorted(shares)[3] / 2)


def test_the_median_interval_takes_the_order_statistics_a_binomial_tail_allows():
    """With six values a distribution-free 95% interval of the median is their range (P = 1 - 2/64); with
    nine it leaves the least and the greatest out (P(Binomial(9, 1/2) < 2) = 10/512 <= 0.025)."""
    assert stats.median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == (3.5, 1.0, 6.0)
    assert stats.median_interval([float(x) for x in range(9)]) == (4.0, 1.0, 7.0)
    assert stats.median_interval([2.5]) == (2.5, 2.5, 2.5)
    assert stats.median_interval([]) is None


def test_the_completion_item_compares_io_uring_recv_plain_and_direct_with_the_readiness_backends():
    series = {label: backend for label, backend, _env in completion.SERIES}
    assert set(series.values()) == {"epoll", "io_uring", catalog.URING_RECV}
    fixed = [env for label, _b, env in completion.SERIES if label.endswith("/fixed")]
    assert fixed == [{"EPHTTPD_URING_FIXED_FILES": "1"}]


def test_the_anatomy_item_records_the_benchs_one_interval():
    values = [1.0, 1.1, 1.2, 1.3, 5.0, 1.15]
    assert stats.interval_record(values) == {"median": pytest.approx(1.175), "low": 1.0, "high": 5.0, "n": 6}
    assert stats.interval_record([]) == {"median": None, "low": None, "high": None, "n": 0}


def test_summarize_groups_rows_in_the_order_first_seen_with_a_median_interval_per_metric():
    rows = [{"backend": b, "round": n, "cost": c, "calls": k}
            for n, (b, c, k) in enumerate([("epoll", 6.0, 2.0), ("poll", 9.0, None), ("epoll", 1.0, 0.0),
                                           ("epoll", 4.0, 2.0), ("poll", 0.0, None)], 1)]
    lines = stats.summarize(rows, ("backend",), {"cost": stats.positive, "calls": stats.measured})
    assert [(x["backend"], x["rounds"]) for x in lines] == [("epoll", 3), ("poll", 2)]
    assert lines[0]["cost"] == (4.0, 1.0, 6.0) and lines[0]["calls"] == (2.0, 0.0, 2.0)
    assert lines[1]["cost"] == (9.0, 9.0, 9.0) and lines[1]["calls"] is None  # zero cost and no calls left out
    assert stats.summarize(rows, ("backend",), {"missing": stats.measured})[0]["missing"] is None


def test_the_one_interval_format_takes_both_forms_the_results_hold():
    from experiment.bench import show

    assert show.interval((1.0, 0.5, 2.0)) == "1.00 [0.50, 2.00]"
    assert show.interval(stats.interval_record([1.0, 0.5, 2.0]), ".1f") == "1.0 [0.5, 2.0]"
    assert show.interval(None) == show.interval(stats.interval_record([])) == "-"


def test_the_quick_profiles_dead_points_are_those_a_quick_run_measures_here():
    from experiment.bench.items import anatomy
    from experiment.run import plan

    quick = plan.make_plan("quick")
    # 20,000 open files: 0, 1,000, 5,000, 10,000 and the host's most (19,500); 60,000 skipped
    assert anatomy.quick_dead_points(20000) == 5 * len(quick.series) * len(quick.variants)


# ---- item 9: the server container and its seccomp filter ------------------------------------------------------

def test_each_round_rotates_the_places_so_none_always_runs_first():
    orders = [seccomp_figures.place_order(n) for n in range(1, 4)]
    assert orders == [("native", "filtered", "unconfined"), ("filtered", "unconfined", "native"),
                      ("unconfined", "native", "filtered")]
    assert seccomp_figures.place_order(4) == orders[0]


def seccomp_rows(costs: dict, calls: dict) -> list[dict]:
    """Rows as seccomp_cost makes them: costs[(backend, place)] one CPU per reply per round; calls[backend]
    the native syscalls per reply per round."""
    return [{"backend": backend, "place": place, "round": n, "cpu_us_per_reply": cost,
             **({"syscalls_per_reply": calls[backend][n - 1]} if place == "native" else {})}
            for (backend, place), values in costs.items() for n, cost in enumerate(values, 1)]


def test_the_filters_cost_is_each_rounds_own_ratio_and_difference():
    # Round 2 is disturbed for every place alike: its ratios stay those of rounds 1 and 3.
    rows = seccomp_rows({("epoll", "native"): [7.0, 14.0, 7.0], ("epoll", "filtered"): [7.7, 15.4, 7.7],
                         ("epoll", "unconfined"): [7.28, 14.56, 7.28]},
                        {"epoll": [2.0, 2.0, 2.0]})
    epoll = seccomp_figures.seccomp_ratios(rows, ("epoll",))["epoll"]
    assert epoll["filtered/native"] == pytest.approx((1.1, 1.1, 1.1))
    assert epoll["unconfined/native"] == pytest.approx((1.04, 1.04, 1.04))
    assert epoll["filtered/unconfined"][0] == pytest.approx(7.7 / 7.28)
    # (7.7 - 7.28) µs = 420 ns per reply, at 2 calls per reply 210 ns per call; round 2 doubles both.
    assert epoll["filter_ns_per_reply"] == pytest.approx((420.0, 420.0, 840.0))
    assert epoll["filter_ns_per_syscall"] == pytest.approx((210.0, 210.0, 420.0))


def test_an_unavailable_place_leaves_only_the_ratios_that_need_it_empty():
    rows = seccomp_rows({(catalog.URING_RECV, "native"): [6.0, 6.0], (catalog.URING_RECV, "filtered"): [6.3, 6.6]},
                        {catalog.URING_RECV: [0.2, None]})
    ratios = seccomp_figures.seccomp_ratios(rows, (catalog.URING_RECV,))[catalog.URING_RECV]
    assert ratios["filtered/native"] == pytest.approx((1.075, 1.05, 1.1))
    assert ratios["unconfined/native"] is None and ratios["filtered/unconfined"] is None
    assert ratios["filter_ns_per_reply"] is None and ratios["filter_ns_per_syscall"] is None


def test_the_probes_per_call_cost_predicts_each_backends_cost_per_reply():
    probes = [{"place": "filtered", "round": 1, "ns_per_call": 260.0}, {"place": "unconfined", "round": 1,
                                                                        "ns_per_call": 220.0},
              {"place": "unconfined", "round": 2, "ns_per_call": 230.0}, {"place": "filtered", "round": 2,
                                                                          "ns_per_call": 280.0}]
    rows = seccomp_rows({("epoll", "native"): [8.0, 8.0], (catalog.URING_RECV, "native"): [7.0, 7.0]},
                        {"epoll": [2.0, 2.0], catalog.URING_RECV: [0.2, 0.2]})
    found = seccomp_figures.filter_per_call(probes, rows)
    assert found["filter_ns_per_call"] == pytest.approx((45.0, 40.0, 50.0))  # each round's own difference
    assert found["filtered_ns_per_call"] == pytest.approx((270.0, 260.0, 280.0))
    assert found["predicted"]["epoll"] == pytest.approx({"ns_per_reply": 90.0, "share_of_native_reply": 90 / 8000})
    assert found["predicted"][catalog.URING_RECV]["ns_per_reply"] == pytest.approx(9.0)
    alone = seccomp_figures.filter_per_call([p for p in probes if p["place"] == "filtered"], rows)
    assert alone["filter_ns_per_call"] is None and alone["predicted"] == {"epoll": None, catalog.URING_RECV: None}


def test_a_service_names_the_seccomp_docker_applies():
    from experiment.run import seccomp

    ours = seccomp.security_opt(seccomp.profile_name())
    assert ours is not None and json.loads(ours[0].removeprefix("seccomp=")) == json.loads(seccomp.profile_text())
    assert seccomp.security_opt(seccomp.UNCONFINED) == ["seccomp=unconfined"]
    assert seccomp.security_opt(None) is None  # the engine's default
    with pytest.raises(ValueError, match="unknown seccomp profile"):
        seccomp.security_opt("seccomp-docker-default@000000000000")


def test_only_accepts_every_registered_item_and_refuses_another_name_in_one_line_naming_them():
    from experiment.errors import UserError

    names = registry.names()
    assert len(set(names)) == len(names) == len({item.key for item in registry.ITEMS})
    assert {item.number for item in registry.ITEMS} == set(range(1, len(names) + 1))
    for name in names:
        assert [item.name for item in registry.select(name)] == [name]
    assert registry.select(None) == list(registry.ITEMS)
    with pytest.raises(UserError) as refused:
        registry.select("nginx-vs-apache")
    message = str(refused.value)
    assert "\n" not in message and "'nginx-vs-apache'" in message and message.endswith(", ".join(names))


def test_the_bench_tasks_help_lists_every_item_from_the_table():
    import tasks

    assert tasks.bench.help["only"] == registry.help_text()
    assert all(f"{item.name} (item {item.number}," in tasks.bench.help["only"] for item in registry.ITEMS)


def test_every_item_has_a_module_that_runs_it_and_a_printer():
    import importlib

    from experiment.bench import show

    for item in registry.ITEMS:
        assert callable(importlib.import_module(f"experiment.bench.items.{item.name}").run), item.name
        assert callable(getattr(show, item.name)), item.name
    # Item 8 reads item 4's wall time: it runs after it; the items under untracked loopback run first.
    order = registry.names()
    assert order.index("harness") < order.index("anatomy")
    untracked = [item.untracked for item in registry.ITEMS]
    assert untracked == sorted(untracked, reverse=True)


def test_one_item_alone_is_measured_printed_and_written_under_the_benchs_header(tmp_path, monkeypatch, capsys):
    from experiment.bench import native, runner
    from experiment.bench.items import pipetest
    from experiment.errors import UserError
    from experiment.host import machine

    section = {"rows": [{"backend": "epoll", "pipes": 10, "passes_per_s": 1000.0}], "reference_2002": {}}
    monkeypatch.setattr(machine, "ensure_packages", lambda *_: None)
    monkeypatch.setattr(native, "build", lambda: None)
    monkeypatch.setattr(launch, "untracking", lambda: ({"tracked": None}, None))
    monkeypatch.setattr(pipetest, "pipetest", lambda fd_limit: section)
    path = tmp_path / "bench.json"
    result = runner.main(json_out=str(path), only="pipetest")
    written = json.loads(path.read_text())
    assert written == result and written["pipetest"] == section and written["loads_loopback_untracked"] is False
    assert {"schema_version", "benchmark", "date", "kernel", "fd_limit", "targets", "load_seconds"} <= set(written)
    assert written["targets"] == registry.TARGETS and written["date"].endswith("Z")
    assert "5. pipetest" in capsys.readouterr().out
    with pytest.raises(UserError, match="results are never overwritten"):
        runner.main(json_out=str(path), only="pipetest")


def test_an_unknown_item_is_refused_before_anything_is_installed(monkeypatch):
    from experiment.bench import runner
    from experiment.errors import UserError
    from experiment.host import machine

    monkeypatch.setattr(machine, "ensure_packages", lambda *_: pytest.fail("set up before --only was checked"))
    with pytest.raises(UserError, match="the items are nginx, capacity"):
        runner.main(only="apache")


@pytest.mark.docker
@pytest.mark.needs_tool("wrk")
def test_the_seccomp_item_measures_each_backend_natively_and_in_the_container(build_dir, cpus, client,
                                                                               tmp_path_factory):
    """One round of 1 s loads on the real engine: every place a row with server CPU, the container's under the
    seccomp mode asked for (where this process can see it), and finite ratios, or the reason a place is
    unavailable."""
    from experiment.host import images

    image = images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path_factory.mktemp("build"))["server"].tag
    result = seccomp.seccomp_cost(cpus, client, image, rounds=1, seconds=1)
    places = result["places"]
    assert "unavailable" not in places["native"] and "unavailable" not in places["filtered"], places
    for row in result["rows"]:
        assert row["errors"] == 0 and row["replies"] > 0 and row["cpu_us_per_reply"] > 0, row
        seen = row["seccomp_mode"]["mode"]
        assert seen is None or row["place"] == "native" or seen == seccomp.EXPECTED[row["place"]], row
    assert {(r["backend"], r["place"]) for r in result["rows"]} == {
        (b, p) for b in seccomp.BACKENDS for p in seccomp.PLACES if "unavailable" not in places[p]}
    for backend in seccomp.BACKENDS:
        ratios = result["ratios"][backend]
        assert math.isfinite(ratios["filtered/native"][0]) and ratios["filtered/native"][0] > 0
        if "unavailable" in places["unconfined"]:
            assert places["unconfined"]["unavailable"] and ratios["filtered/unconfined"] is None
        else:
            assert math.isfinite(ratios["filtered/unconfined"][0]) and ratios["filtered/unconfined"][0] > 0
    probes = result["syscall_probe"]["rows"]
    assert {p["place"] for p in probes} == {p for p in ("filtered", "unconfined") if "unavailable" not in places[p]}
    assert all(p["ns_per_call"] > 0 for p in probes), probes
    if "unavailable" not in places["unconfined"]:
        assert math.isfinite(result["syscall_probe"]["filter_ns_per_call"][0])
    leftovers = client.containers.list(all=True, filters={"label": f"org.epollbench.run=bench-seccomp-{os.getpid()}"})
    assert leftovers == []


REPORT = """\
    41.07% ;[kernel.kallsyms]  ;[k] pipe_read
    12.50% ;pipetest           ;[.] main
     6.25% ;[kernel.kallsyms]  ;[k] ep_poll_callback
     0.18% ;libc.so.6          ;[.] __GI___libc_read
# a comment line perf may print
"""


def test_the_walk_item_reads_each_functions_share_of_perfs_report():
    shares = pipewalk.parse_report(REPORT)
    assert shares == pytest.approx({"[k] pipe_read": 0.4107, "[.] main": 0.125, "[k] ep_poll_callback": 0.0625,
                                    "[.] __GI___libc_read": 0.0018})


def test_the_walk_items_growth_is_the_median_functions_from_the_fewest_pipes_to_the_most():
    def run(ns: float, functions: dict) -> dict:
        return {"ns_per_pass": ns, "functions_ns": functions}

    runs = {10: [run(800, {"[k] pipe_read": 300, "[.] main": 100}), run(900, {"[k] pipe_read": 320, "[.] main": 90}),
                 run(850, {"[k] pipe_read": 310, "[.] main": 95})],
            9992: [run(2400, {"[k] pipe_read": 900, "[.] main": 400, "[k] fdget": 50}),
                   run(2500, {"[k] pipe_read": 1000, "[.] main": 390}),
                   {"error": "perf failed"}]}
    found = pipewalk.growth(runs, top=2)
    assert found["ns_per_pass"] == {10: 850, 9992: 2450} and found["grew_ns"] == 1600
    # Medians per function over the completed runs: pipe_read 310 -> 950, main 95 -> 395, fdget 0 -> 25.
    assert [(f["function"], f["grew_ns"]) for f in found["functions"]] == [("[k] pipe_read", 640), ("[.] main", 300)]
    assert found["kernel_grew_ns"] == 665 and found["user_grew_ns"] == 300
    assert pipewalk.growth({10: [{"error": "x"}], 20: [run(1, {})]}) == {"error": "no run completed at both ends"}


def test_a_walk_run_under_perf_splits_its_time_per_pass_among_functions(build_dir, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("perf record needs root here")
    from experiment import anatomy

    instruments = anatomy.prepare()
    if instruments.perf is None:
        tools.missing(f"perf cannot run here: {instruments.reason}")
    monkeypatch.setattr(pipewalk, "RUN_S", 1)
    found = pipewalk.run_once(instruments.perf, "epoll", "stride", 1000, min(os.sched_getaffinity(0)),
                              tmp_path / "perf.data")
    assert "error" not in found, found
    assert found["passes_per_s"] > 0 and not found["setup_in_profile"]
    assert found["ns_per_pass"] == pytest.approx(1e9 / found["passes_per_s"])
    # The shares cover the samples: the functions' nanoseconds add up to about one pass (perf rounds each share).
    assert sum(found["functions_ns"].values()) == pytest.approx(found["ns_per_pass"], rel=0.05)
    assert any(name.startswith("[k] ") for name in found["functions_ns"]), "kernel functions are named"


# ---- item 11: whose tail ----------------------------------------------------------------------------------------

def tail_rows(values: dict) -> list[dict]:
    """Rows as whose_tail makes them: values[(backend, dead, capture)] one dict of metrics per round."""
    return [{"backend": backend, "dead": dead, "capture": capture, "round": n, **metrics}
            for (backend, dead, capture), per_round in values.items() for n, metrics in enumerate(per_round, 1)]


def p99s(raw: list[float], kept: list[float]) -> list[dict]:
    return [{"raw_p99_ms": r, "kept_p99_ms": k, "raw_p99.9_ms": 2 * r, "kept_p99.9_ms": 2 * k}
            for r, k in zip(raw, kept, strict=True)]


def test_the_growth_is_each_rounds_own_ratio_from_0_to_the_most_dead_with_and_without_the_third_parties():
    # Round 3 is disturbed at both levels alike: its ratios stay those of the others.
    rows = tail_rows({("epoll", 0, True): p99s([1.0, 1.0, 5.0, 1.0, 1.0, 1.0], [0.5] * 6),
                      ("epoll", 19500, True): p99s([20.0, 18.0, 100.0, 22.0, 19.0, 21.0], [1.5] * 6),
                      ("epoll", 19500, False): p99s([30.0] * 6, [30.0] * 6)})
    found = tail_figures.growth(rows, "epoll", 19500)
    assert (found["raw_p99"]["median"], found["raw_p99"]["low"], found["raw_p99"]["high"]) == (20.0, 18.0, 22.0)
    assert found["kept_p99"] == {"median": 3.0, "low": 3.0, "high": 3.0, "n": 6}
    assert found["verdict"] == found["verdict_p99.9"] == tail_figures.SURVIVES


@pytest.mark.parametrize(("raw", "kept", "verdict"), [
    ([20.0] * 6, [1.2, 1.1, 0.9, 1.3, 1.2, 1.1], "does not survive the exclusion"),  # the kept interval holds 1
    ([20.0, 1.0, 20.0, 20.0, 20.0, 20.0], [3.0] * 6, "no growth beyond the noise to begin with"),
    ([20.0] * 5, [3.0] * 5, tail_figures.FEW),
])
def test_the_growth_survives_only_where_the_whole_kept_interval_is_above_1(raw, kept, verdict):
    rows = tail_rows({("io_uring-recv", 0, True): p99s([1.0] * len(raw), [1.0] * len(raw)),
                      ("io_uring-recv", 500, True): p99s(raw, kept)})
    assert tail_figures.growth(rows, "io_uring-recv", 500)["verdict"] == verdict


def test_a_round_whose_kept_side_is_empty_is_left_out_of_the_ratio():
    rows = tail_rows({("epoll", 0, True): p99s([1.0] * 6, [1.0] * 6),
                      ("epoll", 500, True): [{**row, "kept_p99_ms": None} if n == 0 else row
                                             for n, row in enumerate(p99s([9.0] * 6, [2.0] * 6))]})
    kept = tail_figures.growth(rows, "epoll", 500)["kept_p99"]
    assert (kept["median"], kept["n"]) == (2.0, 5)
    assert tail_figures.growth(rows, "epoll", 500)["verdict"] == tail_figures.FEW


@pytest.mark.parametrize(("with_perf", "verdict"), [
    ([1.1, 1.2, 1.05, 1.3, 1.1, 1.15], "beyond the noise"),
    ([1.1, 0.9, 1.05, 1.3, 1.1, 1.15], "within the noise"),
    ([0.9] * 6, "beyond the noise"),
])
def test_the_captures_own_effect_is_beyond_the_noise_only_where_its_interval_excludes_1(with_perf, verdict):
    def runs(costs: list[float]) -> list[dict]:
        return [{"openload_p99_ms": 2 * c, "openload_p99.9_ms": 3.0, "cpu_us_per_reply": 10 * c} for c in costs]

    rows = tail_rows({("epoll", 19500, True): runs(with_perf), ("epoll", 19500, False): runs([1.0] * 6),
                      ("epoll", 0, True): runs([5.0] * 6)})
    found = tail_figures.capture_cost(rows, "epoll", 19500)
    middle = sorted(with_perf)[2:4]
    assert found["ratios"]["cpu_per_reply"]["median"] == pytest.approx(sum(middle) / 2)
    assert found["verdicts"]["cpu_per_reply"] == found["verdicts"]["p99"] == verdict
    assert found["verdicts"]["p99.9"] == "within the noise"


def test_each_configurations_line_counts_its_flagged_rounds_and_names_its_longest_third_party():
    def run(flag: bool | None, longest: list[dict]) -> dict:
        return {"interfered": flag, "longest_third_party": longest, "raw_p99_ms": 1.0, "third_party_share": 0.01}

    agent = {"comm": "tokio-rt-worker", "pid": 103, "cpu": 0, "ms": 23.0, "end_seen": False}
    worker = {"comm": "kworker/0:1", "pid": 40, "cpu": 0, "ms": 2.0, "end_seen": True}
    rows = tail_rows({("epoll", 0, True): [run(True, [worker]), run(None, []), run(True, [agent, worker])],
                      ("epoll", 0, False): [{"raw_p99_ms": 1.0}] * 3})
    captured, plain = tail_figures.summary(rows)
    assert (captured["rounds"], captured["interfered_rounds"], captured["longest_third_party"]) == (3, 2, agent)
    assert (plain["interfered_rounds"], plain["longest_third_party"], plain["third_party_share"]) == (0, None, None)
    assert captured["raw_p99_ms"] == (1.0, 1.0, 1.0)


def test_the_longest_third_party_stretches_are_clipped_to_the_window_and_leave_ours_out():
    from experiment.host.switches import OnCpu

    ms = 1_000_000
    held = [OnCpu(0, 50, "neighbour", 5 * ms, 30 * ms), OnCpu(0, 300, "ephttpd", 30 * ms, 90 * ms),
            OnCpu(0, 103, "tokio-rt-worker", 40 * ms, 48 * ms, end_seen=False), OnCpu(0, 60, "kworker/0:1", 60 * ms,
                                                                                      61 * ms),
            OnCpu(0, 61, "rcu_preempt", 62 * ms, 62 * ms + 500_000), OnCpu(1, 70, "other", 0, 100 * ms)]
    found = tail.longest_third_party(held, [0], lambda pid, comm, _tgid: "ours" if comm == "ephttpd" else
                                     "third party", 10 * ms, 100 * ms)
    assert [(s["comm"], s["ms"], s["end_seen"]) for s in found] == [
        ("neighbour", 20.0, True), ("tokio-rt-worker", 8.0, False), ("kworker/0:1", 1.0, True)]


def test_every_setting_runs_first_once_in_turn_and_the_pair_alternates_which_run_is_captured_first():
    firsts = [tail.setting_order(n)[0] for n in range(1, len(tail.SETTINGS) + 1)]
    assert firsts == list(tail.SETTINGS) and all(set(tail.setting_order(n)) == set(tail.SETTINGS) for n in (1, 7))
    assert [tail.capture_order(n, paired=True) for n in (1, 2)] == [(True, False), (False, True)]
    assert tail.capture_order(2, paired=False) == (True,)
    assert [s for s in tail.SETTINGS if s.paired] == [tail.Setting("epoll", True, paired=True)]


@pytest.mark.needs_host("records sched:sched_switch while ephttpd serves openload")
@pytest.mark.needs_tool("wrk")
def test_the_tail_item_captures_joins_and_judges_each_run_and_runs_the_pair_without_perf(build_dir, cpus):
    """One round of 1 s loads at a few hundred dead connections: every setting's rows, the captured ones
    with the server CPUs' interference and a join that accounts for every reply, the pair's plain run
    without any."""
    from experiment.anatomy import perf
    from experiment.host import switches

    perf_path, why = perf.ensure(install=False)
    why = why or switches.check(perf_path or "perf")
    if perf_path is None or why:
        tools.missing(f"perf cannot record the switches here: {why}")
    result = tail.whose_tail(cpus, 700, rounds=1, seconds=1, probe_s=1)
    most = max_dead(700, "epoll", launch.ACTIVE)
    rows = result["rows"]
    assert sorted((r["backend"], r["dead"], r["capture"]) for r in rows) == sorted(
        [(b, d, True) for b in tail.BACKENDS for d in (0, most)] + [("epoll", most, False)])
    for row in rows:
        assert row["errors"] == 0 and row["replies"] > 0 and row["cpu_us_per_reply"] > 0, row
        joined = row["tail"]
        assert joined["replies"] == row["replies"] and row["raw_p99_ms"] == joined["raw"]["p99"]
        if row["capture"]:
            assert row["interference"]["method"] == "sched_switch" and row["interference"]["cpus"] == [0]
            kept = joined["kept"]["count"] if joined["kept"] else 0
            assert kept + joined["excluded"] == joined["replies"]
            assert len(row["longest_third_party"]) <= tail.LONGEST
        else:
            assert "interference" not in row and row["kept_p99_ms"] is None and row["excluded_share"] is None
    assert [(x["backend"], x["dead"], x["capture"]) for x in result["summary"]] == [
        (r["backend"], r["dead"], r["capture"]) for r in rows]
    assert result["growth"]["epoll"]["verdict"] == tail_figures.FEW
    assert result["capture_cost"]["ratios"]["cpu_per_reply"]["n"] == 1
