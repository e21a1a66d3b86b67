"""Profiles, flags and how a plan adapts to the host's limits."""

import pytest

from experiment import plan
from experiment.errors import UserError


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
