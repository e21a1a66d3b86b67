"""`invoke reproduce --dry-run`: the plan's points, skips and time, without building or starting anything, and
the same point count as the real run."""

from __future__ import annotations

import re
import socket

import guestcache
import pytest
from reproducing import finished, invoke

from experiment import model
from experiment.guest import kernels
from experiment.run import dryrun, durations, plan
from experiment.run.containers import LABEL_RUN
from experiment.run.guests import GUEST_FD_LIMIT
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


def in_guests(kernels_: str = "6.1,7.2") -> model.Plan:
    """A small plan over kernels: pipetest at 10,000 pipes, which the host's 20,000 open files refuse."""
    return plan.make_plan("quick", kernels=kernels_, sweeps="dead,pipetest", variants="up", backends="epoll",
                          dead="0,1000", pipes="10,10000", walks="stay", duration=2)


def described(the_plan: model.Plan, results_dir) -> str:
    said: list[str] = []
    dryrun.describe(the_plan, results_dir, said.append)
    return "\n".join(said)


def per_kernel(text: str) -> dict[str, str]:
    """The expected time per kernel as said: {kernel: "N min (...)"}."""
    rows = text.split("expected time per kernel (", 1)[1].splitlines()[1:]
    return dict(row.strip().split(": ", 1) for row in rows if row.startswith("  "))


def test_a_dry_run_in_guests_says_its_kernels_guests_levels_and_time_per_kernel_by_default(guest_cache, tmp_path):
    the_plan = in_guests()
    text = described(the_plan, tmp_path / "results")
    assert "kernels (--accel auto; no private apt lists yet: a run fetches them):" in text
    assert "  6.1: not fetched yet, nor the private apt lists: a run resolves it against the mirror at its start" \
        in text
    assert ("guests, one at a time (4096 MiB each): 6.1-2cpu (dead UP); 6.1-1cpu (pipetest UP); 7.2-2cpu (dead UP); "
            "7.2-1cpu (pipetest UP)") in text
    assert f"fd limit {GUEST_FD_LIMIT} (the guests' open-file limit" in text
    assert "pipetest UP epoll (stay) on 7.2: 10, 10,000\n" in text + "\n", "the guests' fd limit, not the host's"
    assert (f"expected time per kernel (no run with guests here yet: {durations.GUEST_SLOWDOWN:g}x the native "
            f"estimate and {durations.GUEST_BOOT_S:.0f} s of boot per guest, as measured under TCG") in text
    native = dryrun.native_per_guest(the_plan)
    for kernel in ("6.1", "7.2"):
        booting = 2 * durations.GUEST_BOOT_S
        measuring = durations.GUEST_SLOWDOWN * (native[f"{kernel}-2cpu"] + native[f"{kernel}-1cpu"])
        assert per_kernel(text)[kernel] == (f"{dryrun._minutes(booting + measuring)} (2 guest(s): "
                                            f"{dryrun._minutes(booting)} booting, {dryrun._minutes(measuring)} "
                                            "measuring)")
    assert not guest_cache.exists() and not (tmp_path / "results").exists(), "a dry run fetches and writes nothing"


def test_a_dry_run_resolves_the_kernels_against_the_cached_lists_and_says_which_are_fetched(guest_cache, tmp_path):
    guestcache.write_lists()
    guestcache.unpack(kernels.resolve("6.1", guestcache.recorded_index()))
    text = described(in_guests("6.1,7.2,6.5"), tmp_path)
    assert re.search(r"kernels \(--accel auto; the private apt lists of \d+ min ago, which a run updates when a "
                     r"day old\):", text), text
    assert "  6.1: 6.1.0-50-cloud-amd64 (Debian 6.1.176-1, bookworm), in the cache\n" in text
    assert ("  7.2: 7.2.13+deb14-cloud-amd64 (Debian 7.2.13-1, sid), not fetched yet: a run downloads "
            "linux-binary-unsigned-7.2.13+deb14-cloud-amd64, linux-modules-7.2.13+deb14-cloud-amd64, "
            "linux-base-7.2.13+deb14-cloud-amd64\n") in text
    assert re.search(r"^  6\.5: no Debian cloud kernel 6\.5 on the mirror: it has 6\.1\.170-3, .*\(sid\)", text, re.M)


def guest_run(results_dir, the_plan: model.Plan, started_at: str, timings: dict, hostname: str) -> str:
    """A run folder whose run.json carries guest timings as guests.measure_in_guests records them."""
    run_id = f"{started_at.replace(':', '').replace('-', '')}-{hostname}-quick"
    accelerators = {label: {"accelerator": "tcg"} for label in timings}
    record = model.RunRecord(run_id=run_id, profile="quick", status="complete", started_at=started_at,
                             command_line=[], plan=the_plan, metadata={"hostname": hostname, "guests": accelerators},
                             timings={"measuring_s": 1.0, "guests": timings})
    Run.create(record, results_dir)
    return run_id


def test_a_dry_run_in_guests_goes_by_the_last_run_with_guests_on_this_host(guest_cache, tmp_path):
    before = in_guests("6.1,7.2")
    native = dryrun.native_per_guest(before)
    here = socket.gethostname()
    run_id = guest_run(tmp_path, before, "2026-12-01T10:00:00Z", {
        "6.1-2cpu": {"boot_s": 30.0, "measuring_s": 3 * native["6.1-2cpu"]},
        "6.1-1cpu": {"boot_s": 50.0, "measuring_s": 3 * native["6.1-1cpu"]},
        "7.2-2cpu": {"failed": "the guest 7.2-2cpu (7.2.13+deb14-cloud-amd64) failed: it did not boot"},
        "7.2-1cpu": {}}, here)
    # Not what it goes by: its guests without times, an older run, another host's later run, a later run on the
    # host without guests
    guest_run(tmp_path, in_guests("7.2"), "2026-11-01T10:00:00Z", {"7.2-2cpu": {"boot_s": 9.0, "measuring_s": 1.0}},
              here)
    guest_run(tmp_path, in_guests("7.2"), "2026-12-02T10:00:00Z", {"7.2-2cpu": {"boot_s": 9.0, "measuring_s": 1.0}},
              "elsewhere")
    Run.create(model.RunRecord(run_id="20261203T100000Z-host-quick", profile="quick", status="complete",
                               started_at="2026-12-03T10:00:00Z", command_line=[], plan=plan.make_plan("quick"),
                               metadata={"hostname": here}, timings={"measuring_s": 5.0}), tmp_path)
    pace = dryrun.guest_pace(tmp_path)
    assert (round(pace.slowdown, 6), pace.boot_s) == (3.0, 40.0)
    asked = in_guests("6.1,7.2")
    text = described(asked, tmp_path)
    assert (f"expected time per kernel (as the last run with guests here went ({run_id}, under tcg): 3.0x the native "
            "estimate, 40 s of boot per guest):") in text
    now = dryrun.native_per_guest(asked)
    measuring = 3 * (now["7.2-2cpu"] + now["7.2-1cpu"])
    assert per_kernel(text)["7.2"] == (f"{dryrun._minutes(80 + measuring)} (2 guest(s): 80 s booting, "
                                       f"{dryrun._minutes(measuring)} measuring)")
