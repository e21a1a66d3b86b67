"""Profiles, flags and how a plan adapts to the host's limits."""

import json

import pytest

from experiment import model
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
    ({"sweeps": ""}, "--sweeps '': empty; valid: dead,pipetest"),
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
