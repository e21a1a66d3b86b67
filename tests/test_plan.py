"""Profiles, flags and how a plan adapts to the host's limits."""

import json

import pytest

from experiment import catalog, model
from experiment.catalog import Series
from experiment.errors import UserError
from experiment.run import plan


def test_quick_profile_reaches_the_most_the_host_allows_and_records_the_rest_as_skipped():
    levels = plan.dead_levels(plan.make_plan("quick"), fd_limit=20000, backend="poll")
    run = [lv.value for lv in levels if not lv.skip_reason]
    skipped = [lv for lv in levels if lv.skip_reason]
    assert run == [0, 1000, 5000, 10000, 19500]
    assert [lv.value for lv in skipped] == [60000]
    assert "host allows 20000 open files per process" in skipped[0].skip_reason
    assert [lv.host_max for lv in levels if lv.value == 19500] == [True]


def test_a_large_host_runs_every_paper_level_and_adds_nothing():
    levels = plan.dead_levels(plan.make_plan("paper"), fd_limit=1_048_576, backend="epoll")
    assert [lv.value for lv in levels] == list(plan.PAPER_DEAD)
    assert not any(lv.skip_reason or lv.host_max for lv in levels)


def test_select_stops_below_fd_setsize():
    levels = plan.dead_levels(plan.make_plan("paper"), fd_limit=20000, backend="select")
    most = plan.max_dead(20000, "select", 100)
    assert most < plan.FD_SETSIZE
    assert [lv.value for lv in levels if not lv.skip_reason] == [0, most]
    assert all("FD_SETSIZE" in lv.skip_reason for lv in levels if lv.skip_reason)


def test_pipes_capped_by_two_descriptors_a_pipe():
    levels = plan.pipe_levels(plan.make_plan("paper"), fd_limit=20000, backend="epoll")
    most = plan.max_pipes(20000, "epoll")
    assert 2 * most + plan.PIPETEST_FD_OVERHEAD <= 20000
    assert [lv.value for lv in levels if lv.skip_reason] == [10000, 16000]
    assert most in [lv.value for lv in levels if not lv.skip_reason]


def test_io_uring_recv_is_in_the_paper_and_on_demand_and_pipetest_skips_it_saying_why():
    paper = plan.make_plan("paper")
    assert "io_uring-recv" in paper.backends and Series("ephttpd", "io_uring-recv") in paper.series
    chosen = plan.make_plan("quick", backends="epoll,io_uring-recv")
    assert chosen.series == (Series("ephttpd", "epoll"), Series("ephttpd", "io_uring-recv"))
    dead = plan.dead_levels(paper, fd_limit=20000, backend="io_uring-recv")
    assert plan.max_dead(20000, "io_uring-recv", 100) in [lv.value for lv in dead if not lv.skip_reason]
    pipes = plan.pipe_levels(paper, fd_limit=20000, backend="io_uring-recv")
    assert [lv.value for lv in pipes] == list(plan.PAPER_PIPES)
    assert all("pipetest" in lv.skip_reason and "not an images/ev backend" in lv.skip_reason for lv in pipes)


def test_explicit_levels_are_run_as_given_without_an_added_host_level():
    the_plan = plan.make_plan("quick", dead="0,2000,30000")
    levels = plan.dead_levels(the_plan, fd_limit=20000, backend="epoll")
    assert [(lv.value, bool(lv.skip_reason)) for lv in levels] == [(0, False), (2000, False), (30000, True)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"profile": "huge"}, "--profile 'huge': valid: quick,paper"),
    ({"backends": "epoll,kqueue"}, "--backends 'epoll,kqueue': unknown kqueue; valid: select,poll,epoll,"),
    ({"variants": "numa"}, "--variants 'numa': unknown numa; valid: up,smp"),
    ({"sweeps": ""}, "--sweeps '': empty; valid: dead,dead-open,pipetest"),
    ({"dead": "0,lots"}, "--dead '0,lots': give comma-separated whole numbers"),
    ({"pipes": "0"}, "--pipes '0': give comma-separated whole numbers >= 1"),
    ({"repeat": 0}, "--repeat 0: give a whole number from 1 to 100"),
    ({"duration": 0.5}, "--duration 0.5: give seconds from 1 to 600"),
])
def test_invalid_flags_are_one_line_errors_listing_the_valid_values(kwargs, message):
    with pytest.raises(UserError) as caught:
        plan.make_plan(**kwargs)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def labels(the_plan: model.Plan) -> tuple[str, ...]:
    return tuple(s.label for s in the_plan.series)


def test_another_server_runs_its_own_backends_and_the_dead_sweep_only():
    nginx = plan.make_plan("quick", server="nginx")
    assert (nginx.servers, nginx.series, nginx.backends, nginx.sweeps) == \
        (("nginx",), (Series("nginx", "epoll"),), (), ("dead",))
    python = plan.make_plan("paper", server="python", backends="asyncio,epoll", load="wrk")
    assert (labels(python), python.load, python.repeat) == (("python/asyncio", "python/epoll"), "wrk", 3)
    own = plan.make_plan("quick", server_image="example/server:1", server_cmd="server --port {port}",
                         server_port="8088")
    assert (own.servers, own.server_image, own.server_cmd, own.server_port, labels(own)) == \
        (("custom",), "example/server:1", "server --port {port}", 8088, ("custom/own",))
    ephttpd = plan.make_plan("quick")
    assert (ephttpd.servers, labels(ephttpd), ephttpd.load, ephttpd.sweeps) == \
        (("ephttpd",), ("poll", "epoll"), "httperf", plan.SWEEPS)


def test_several_servers_run_in_one_plan_each_with_the_backends_it_has():
    both = plan.make_plan("quick", server="ephttpd,nginx")
    assert both.series == (Series("ephttpd", "poll"), Series("ephttpd", "epoll"), Series("nginx", "epoll"))
    assert (both.backends, both.sweeps) == (("poll", "epoll"), plan.SWEEPS), "pipetest runs ephttpd's backends"
    three = plan.make_plan("quick", server="nginx, python,ephttpd", backends="epoll,asyncio")
    assert labels(three) == ("nginx/epoll", "python/epoll", "python/asyncio", "epoll")
    assert three.servers == ("nginx", "python", "ephttpd")
    with_own = plan.make_plan("quick", server="ephttpd,custom", backends="epoll", server_image="x/y:1",
                              server_cmd="y --port {port}", server_port=81)
    assert (labels(with_own), with_own.server_image, with_own.server_port) == (("epoll", "custom/own"), "x/y:1", 81)
    assert plan.make_plan("quick", server="python,nginx").sweeps == ("dead",)


def test_a_plan_survives_its_record():
    for the_plan in (plan.make_plan("paper"), plan.make_plan("quick", server="ephttpd,nginx,python", load="wrk")):
        assert model.Plan.from_dict(json.loads(json.dumps(the_plan.to_dict()))) == the_plan


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"server": "python", "backends": "epoll,io_uring"},
     "--backends 'epoll,io_uring': unknown io_uring; valid: select,poll,epoll,asyncio"),
    ({"server": "nginx", "backends": "poll"}, "--backends 'poll': unknown poll; valid: epoll"),
    ({"server": "nginx", "sweeps": "dead,pipetest"},
     "--sweeps dead,pipetest: pipetest does not involve the server, so it runs with ephttpd only"),
    ({"server": "apache"}, "--server apache: unknown apache; use ephttpd, python, nginx or a comma list"),
    ({"server": "ephttpd,nginx", "backends": "poll"},
     "--backends poll: the nginx server has none of these; its backends: epoll"),
    ({"server": "nginx", "server_image": "x/y", "server_cmd": "y", "server_port": 80},
     "--server nginx and --server-image, --server-cmd, --server-port both name the server: give one or the "
     "other, or add custom to the list (--server nginx,custom)"),
    ({"server": "ephttpd,custom"}, "a server of your own needs --server-image, --server-cmd and --server-port: "
                                   "add --server-image, --server-cmd, --server-port"),
    ({"server_image": "x/y", "server_cmd": "y"}, "a server of your own needs --server-image, --server-cmd and "
                                                  "--server-port: add --server-port"),
    ({"load": "ab"}, "--load 'ab': give one load generator; valid: httperf,wrk"),
    ({"load": "httperf,wrk"}, "--load 'httperf,wrk': give one load generator"),
])
def test_invalid_server_and_load_flags_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError) as caught:
        plan.make_plan(**kwargs)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_anatomy_is_on_in_both_profiles_and_no_anatomy_turns_it_off():
    assert plan.make_plan("quick").anatomy is True and plan.make_plan("paper").anatomy is True
    assert plan.make_plan("quick", anatomy=False).anatomy is False
    assert plan.make_plan("paper", server="nginx", anatomy=False).anatomy is False


EPOLL, POLL = Series("ephttpd", "epoll"), Series("ephttpd", "poll")


@pytest.mark.parametrize("backend", ["epoll", "epoll-et"])
def test_paper_runs_a_shareable_series_whole_through_holders_to_60000_with_10000_measured_both_ways(backend):
    the_plan = plan.make_plan("paper")
    series = Series("ephttpd", backend)
    # 60,000 over holders of 20,000 - 16 descriptors each: 4, and one for slack.
    assert plan.dead_holders(the_plan, 20000, series) == 5
    levels = plan.series_levels(the_plan, 20000, series)
    assert [(lv.value, lv.holders, lv.overlap) for lv in levels] == [
        (0, 5, False), (1000, 5, False), (5000, 5, False), (10000, 5, False), (10000, 0, True), (25000, 5, False),
        (50000, 5, False), (60000, 5, False)]
    assert not any(lv.skip_reason or lv.host_max for lv in levels)


@pytest.mark.parametrize("backend, why", [
    ("poll", "poll(2) hands the kernel the caller's own descriptors"),
    ("io_uring", "IORING_SETUP_SINGLE_ISSUER"),
    ("aio-poll", "an AIO context belongs to one address space")])
def test_a_backend_that_cannot_share_its_set_stops_at_the_cap_and_says_why(backend, why):
    the_plan = plan.make_plan("paper")
    series = Series("ephttpd", backend)
    assert plan.dead_holders(the_plan, 20000, series) == 0
    levels = plan.series_levels(the_plan, 20000, series)
    assert [lv.value for lv in levels if not lv.skip_reason] == [0, 1000, 5000, 10000, 19500]
    assert not any(lv.holders or lv.overlap for lv in levels)
    assert all(why in lv.skip_reason for lv in levels if lv.skip_reason)


def test_holders_only_where_the_top_level_is_more_than_one_process_holds_and_only_for_ephttpd():
    assert plan.dead_holders(plan.make_plan("quick", dead="0,1000,19500"), 20000, EPOLL) == 0
    assert plan.dead_holders(plan.make_plan("quick", dead="0,19837"), 20000, EPOLL) == 2, "one past the capacity"
    assert plan.dead_holders(plan.make_plan("paper"), 1_048_576, EPOLL) == 0, "a host that allows it needs none"
    nginx = plan.make_plan("quick", server="nginx", dead="0,60000")
    assert plan.dead_holders(nginx, 20000, Series("nginx", "epoll")) == 0


def test_the_overlapping_level_is_the_largest_one_process_holds_and_none_when_no_level_above_0_fits():
    assert plan.overlap_level(plan.make_plan("quick", dead="0,1000,3000"), 1500, "epoll") == 1000
    levels = plan.series_levels(plan.make_plan("quick", dead="0,3000"), 1500, EPOLL)
    assert [(lv.value, lv.holders, lv.overlap) for lv in levels] == [(0, 4, False), (3000, 4, False)]


def test_both_profiles_run_both_walks_and_walks_is_a_flag():
    assert plan.make_plan("quick").walks == plan.make_plan("paper").walks == ("stay", "stride")
    assert plan.make_plan("quick", walks="stride").walks == ("stride",)
    with pytest.raises(UserError, match=r"--walks 'hop': unknown hop; valid: stay,stride"):
        plan.make_plan("quick", walks="hop")


def test_a_plan_from_before_walks_ran_stay_alone():
    recorded = plan.make_plan("quick").to_dict()
    del recorded["walks"]
    assert model.Plan.from_dict(recorded).walks == ("stay",)



# ---------------------------------------------------------------------------------------- the open loop

def test_the_profiles_add_an_open_loop_dead_sweep_on_up_over_their_lines():
    quick, paper = plan.make_plan("quick"), plan.make_plan("paper")
    assert quick.sweeps == ("dead", "dead-open", "pipetest") == paper.sweeps
    assert (quick.open_variants, labels(quick)) == (("up",), ("poll", "epoll"))
    assert (paper.open_variants, paper.series) == (("up",),
                                                   tuple(Series("ephttpd", b) for b in catalog.EPHTTPD_BACKENDS))
    for the_plan in (quick, paper):
        assert (the_plan.open_rate, the_plan.open_rate_share, the_plan.open_connections) == (None, 0.5, 100)
        assert the_plan.open_duration_s == plan.OPEN_DURATION_S
        assert the_plan.load_of("dead-open") == "open" and the_plan.load_of("dead") == "httperf"
    assert plan.make_plan("quick", sweeps="dead,pipetest").sweeps == ("dead", "pipetest")


def test_load_open_runs_the_dead_sweep_open_loop_in_its_variants_and_levels():
    the_plan = plan.make_plan("quick", load="open", sweeps="dead,pipetest", variants="smp", dead="0,1000",
                              duration=3)
    assert (the_plan.sweeps, the_plan.load, the_plan.open_variants) == (("dead-open", "pipetest"), "open", ("smp",))
    assert (the_plan.levels("dead-open"), the_plan.open_duration_s) == ((0, 1000), 3)
    assert plan.make_plan("quick", load="open").sweeps == ("dead-open", "pipetest")
    assert plan.make_plan("quick", load="open").open_variants == ("up", "smp"), "the dead sweep's variants"
    assert model.Plan.from_dict(json.loads(json.dumps(the_plan.to_dict()))) == the_plan


@pytest.mark.parametrize(("given", "rate", "share"), [
    ("0.5x", None, 0.5), ("0.25X", None, 0.25), ("1.2x", None, 1.2), ("50000", 50000.0, None), (" 1e4 ", 1e4, None),
    (2500.5, 2500.5, None),
])
def test_a_rate_is_requests_per_second_or_a_share_of_capacity(given, rate, share):
    the_plan = plan.make_plan("quick", load="open", rate=given)
    assert (the_plan.open_rate, the_plan.open_rate_share) == (rate, share)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": "0"}, "--rate 0: give requests per second above 0 (e.g. 50000), or a share of the capacity at 0 "
                    "dead connections (e.g. 0.5x)"),
    ({"rate": "-5"}, "--rate -5: give requests per second above 0"),
    ({"rate": "0x"}, "--rate 0x: give requests per second above 0"),
    ({"rate": "-0.5x"}, "--rate -0.5x: give requests per second above 0"),
    ({"rate": "fast"}, "--rate fast: give requests per second above 0"),
    ({"rate": "nan"}, "--rate nan: give requests per second above 0"),
    ({"rate": "inf"}, "--rate inf: give requests per second above 0"),
    ({"rate": "1e9"}, "--rate 1e9: openload offers at most 1e+08 requests/s: give less"),
    ({"connections": "0"}, "--connections 0: give at least 1 connection"),
    ({"connections": "-3"}, "--connections -3: give at least 1 connection"),
    ({"connections": "many"}, "--connections many: give a whole number of connections, at least 1"),
    ({"connections": "10000000"}, "--connections 10000000: more than the open-file limit"),
    ({"rate": "0.5x", "load": "wrk", "sweeps": "dead,pipetest"},
     "--rate 0.5x: only the open-loop load takes it: add --load open"),
    ({"connections": 10, "load": None, "sweeps": "dead"}, "--connections 10: only the open-loop load takes it"),
])
def test_bad_open_loop_flags_are_one_line_errors(kwargs, message):
    kwargs = {"load": "open", **kwargs}
    with pytest.raises(UserError) as caught:
        plan.make_plan(**kwargs)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_connections_up_to_the_fd_limit_less_openloads_own_are_accepted():
    assert plan.parse_connections("500", 20000) == 500
    assert plan.parse_connections(20000 - plan.OPENLOAD_FD_OVERHEAD, 20000) == 20000 - plan.OPENLOAD_FD_OVERHEAD
    with pytest.raises(UserError, match=r"--connections 19985: more than the open-file limit \(20000 per process\) "
                                        r"allows openload; give at most 19984, or raise the limit"):
        plan.parse_connections(19985, 20000)


def test_the_open_loops_connections_lower_its_host_maximum_of_dead_connections():
    the_plan = plan.make_plan("quick", load="open", connections="5000")
    assert the_plan.open_connections == 5000 and the_plan.active_connections == 100
    closed = plan.dead_levels(the_plan, 20000, "epoll", "dead")
    opened = plan.dead_levels(the_plan, 20000, "epoll", "dead-open")
    assert max(lv.value for lv in closed if lv.host_max) == 19500
    assert max(lv.value for lv in opened if lv.host_max) == 14500


def test_the_open_sweep_counts_its_points_in_its_own_variants():
    # dead: up,smp; dead-open: up; pipetest: up,smp, both walks
    the_plan = plan.make_plan("quick", dead="0,1000", pipes="10")
    assert plan.count_points(the_plan, 20000) == 2 * 2 * 2 + 2 * 2 * 1 + 2 * 1 * 2 * 2


def test_the_help_lists_what_the_catalog_and_the_model_define():
    """`./run --help reproduce` (and doctor's --sweeps) name every backend, server, load, walk, sweep and variant
    from where they are defined, not from a copy."""
    import tasks

    helps = tasks.reproduce.help
    assert f"comma list of {','.join(catalog.EPHTTPD_BACKENDS)} (ephttpd's;" in helps["backends"]
    for name in catalog.BACKENDS.keys() - {"own"}:  # a server of one's own: its own, which no flag chooses
        assert name in helps["backends"], name
    assert all(f"{kind.name} (" in helps["server"] and kind.about in helps["server"]
               for kind in catalog.SERVERS.values())
    assert all(f"{load.name} (" in helps["load"] and load.description in helps["load"]
               for load in catalog.LOADS.values())
    assert all(f"{walk} ({catalog.WALK_ABOUT[walk]})" in helps["walks"] for walk in catalog.WALKS)
    assert f"comma list of {','.join(model.SWEEPS)} (" in helps["sweeps"] == tasks.doctor.help["sweeps"]
    assert f"comma list of {','.join(catalog.VARIANTS)} (" in helps["variants"]
