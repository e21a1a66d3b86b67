"""Kernels as a dimension of a run (--kernels, run/guests.py): the plan's lines once per kernel, each kernel's in
its own guests, a point's kernel in its id and record; a guest that fails, or is lost mid-sweep, fails its own
lines and the run goes on; a resumed run boots only the guests with lines left; and, on the host, a real run
over two kernels under TCG."""

from __future__ import annotations

import contextlib
import functools
import json

import pytest
from fakeengine import FakeContainers, Script, without_quiet_window
from guestcache import our_qemus

from experiment import model
from experiment.errors import UserError
from experiment.guest import apt, debversion, kernels
from experiment.host import engine, machine
from experiment.run import context, guests, plan, results, steps
from experiment.run.progress import Progress

REAL_GUEST = "boots QEMU guests: installs qemu-system-x86, fetches two Debian kernels, bootstraps the root disk"


def two_kernel_plan(variants: str = "up", **flags) -> model.Plan:
    return plan.make_plan("quick", kernels="6.1,7.2", sweeps="dead,pipetest", variants=variants,
                          backends="poll,epoll", dead="0,1000", pipes="10,1000", walks="stay", repeat=1, duration=1,
                          **flags)


def new_run(the_plan: model.Plan, tmp_path) -> results.Run:
    return results.Run.create(model.RunRecord(run_id=f"test-{tmp_path.name}", profile=the_plan.profile,
                                              status="running", started_at=model.utc_now(), command_line=[],
                                              plan=the_plan), tmp_path)


def test_every_line_is_planned_once_per_kernel_and_the_kernel_is_in_the_point_id():
    the_plan = two_kernel_plan()
    lines = plan.planned(the_plan, guests.GUEST_FD_LIMIT)
    assert [line.kernel for line in lines] == ["6.1"] * 4 + ["7.2"] * 4
    ids = {line.point_id(level) for line in lines for level in line.levels}
    assert "dead-up-k6.1-epoll-r1-d001000" in ids and "pipetest-up-k7.2-poll-r1-p000010" in ids and len(ids) == 16
    assert [(s.kernel, s.vcpus) for s in guests.shapes(the_plan)] == [("6.1", 2), ("6.1", 1), ("7.2", 2), ("7.2", 1)]
    in_one_vcpu = [(line.sweep, line.variant) for line in lines if guests.Shape("7.2", 1).measures(line)]
    assert in_one_vcpu == [(model.PIPETEST, "up")] * 2, "pipetest UP on a kernel that sees one CPU"
    assert [(s.kernel, s.vcpus) for s in guests.shapes(two_kernel_plan("up,smp"))] == \
        [("6.1", 2), ("6.1", 1), ("7.2", 2), ("7.2", 1)]
    assert [(s.kernel, s.vcpus) for s in guests.shapes(two_kernel_plan("smp"))] == [("6.1", 2), ("7.2", 2)]
    without = plan.make_plan("quick", sweeps="dead", variants="up", backends="epoll", dead="0")
    assert [line.point_id(lv) for line in plan.planned(without, 20000) for lv in line.levels] == \
        ["dead-up-epoll-r1-d000000"], "a run without --kernels names its points as before"


def test_a_point_records_its_kernel_and_reads_back_a_version_2_point_as_the_hosts():
    line = plan.planned(two_kernel_plan(), guests.GUEST_FD_LIMIT)[0]
    point = context.new_point(two_kernel_plan(), line, line.levels[0], guest={"label": "6.1-2cpu"})
    written = point.to_json()
    assert written["kernel"] == "6.1" and written["guest"] == {"label": "6.1-2cpu"}
    assert model.Point.from_json(written, "x").series == line.series
    old = {**written, "schema_version": 2, "id": "dead-up-poll-r1-d000000"}
    del old["kernel"], old["guest"]
    upgraded = model.Point.from_json(model.upgrade(old, model.POINT, "x"), "x")
    assert upgraded.series.kernel == "" and upgraded.guest is None and upgraded.series.label == "poll"


@pytest.mark.parametrize(("flags", "message"), [
    ({"kernels": "6.1,6.1"}, "give distinct kernels"),
    ({"kernels": "6.1", "accel": "fast"}, "--accel 'fast': give auto, kvm, tcg"),
    ({"accel": "tcg"}, "--accel tcg: only a run in guests takes it"),
    ({"kernels": "6.1", "kernel_modules": "/tmp"}, "none is given"),
    ({"kernels": "6.1", "load": "open"}, "drop --load open"),
])
def test_bad_kernel_flags_are_one_line_errors(flags, message):
    with pytest.raises(UserError, match=message) as caught:
        plan.make_plan("quick", **flags)
    assert "\n" not in str(caught.value)


def test_a_guest_that_fails_fails_its_own_lines_and_the_run_goes_on(tmp_path, monkeypatch):
    the_plan = two_kernel_plan()
    run = new_run(the_plan, tmp_path)
    swept: list[str] = []

    @contextlib.contextmanager
    def running(kernel, folder, **options):
        if options["label"].startswith("6.1"):
            raise UserError("the guest 6.1-2cpu's dockerd did not answer within 300 s: console: ...")
        yield options["label"]

    monkeypatch.setattr(guests.qemu, "running", running)
    monkeypatch.setattr(guests, "_sweep_in", lambda run, plan, shape, guest, placed, say: swept.append(guest))
    kernel = kernels.Kernel(spec="6.1", release="6.1.0-50-cloud-amd64", flavour="cloud")
    said: list[str] = []
    for shape in guests.shapes(the_plan):
        guests._one_guest(run, the_plan, shape, kernel, None, tmp_path / "disk", said.append)  # type: ignore[arg-type]
    failed = [p for p in run.points() if p.status == model.FAILED]
    assert sorted(p.id for p in failed) == sorted(
        line.point_id(lv) for line in plan.planned(the_plan, guests.GUEST_FD_LIMIT) if line.kernel == "6.1"
        for lv in line.levels)
    assert all("did not answer within 300 s" in p.reason for p in failed if p.reason)
    assert swept == ["7.2-2cpu", "7.2-1cpu"], "the next kernel's guests are booted and swept"


def test_a_resumed_run_boots_only_the_guests_with_lines_left(tmp_path, monkeypatch):
    the_plan = two_kernel_plan()
    run = new_run(the_plan, tmp_path)
    first = guests.shapes(the_plan)[0]
    for line in plan.planned(the_plan, guests.GUEST_FD_LIMIT):
        if first.measures(line):
            for level in line.levels:
                run.write_point(context.new_point(the_plan, line, level))
    booted: list[str] = []

    @contextlib.contextmanager
    def running(kernel, folder, **options):
        booted.append((options["label"], options["vcpus"]))
        yield options["label"]

    monkeypatch.setattr(guests.qemu, "running", running)
    monkeypatch.setattr(guests, "_sweep_in", lambda *args: None)
    kernel = kernels.Kernel(spec="6.1", release="6.1.0-50-cloud-amd64", flavour="cloud")
    for shape in guests.shapes(the_plan):
        guests._one_guest(run, the_plan, shape, kernel, None, tmp_path / "disk", print)  # type: ignore[arg-type]
    assert booted == [("6.1-1cpu", 1), ("7.2-2cpu", 2), ("7.2-1cpu", 1)]


def test_a_guest_lost_mid_sweep_stops_its_sweep_before_the_next_line(tmp_path, monkeypatch):
    the_plan = two_kernel_plan()
    run = new_run(the_plan, tmp_path)
    events: list = []
    servers, clients = FakeContainers(Script(), events, {}), FakeContainers(Script(), events, {})
    lost = iter([None, "QEMU exited with -9: console: ..."])
    in_guest = context.InGuest("6.1", 2, {"label": "6.1-2cpu"}, failure=lambda: next(lost))
    ctx = context.Context(run, the_plan, servers, clients, "server:test", "client:test",  # type: ignore[arg-type]
                          steps.cpusets([0, 1]), guests.GUEST_FD_LIMIT, Progress(lambda _: None),
                          plan.choices(the_plan), in_guest=in_guest)
    without_quiet_window(monkeypatch)
    ctx.progress.start(total=4, done=0)
    with pytest.raises(steps.GuestLost, match="QEMU exited with -9"):
        steps.measure_lines(ctx, lambda _: None)
    measured = run.points()
    assert {p.id for p in measured} == {"dead-up-k6.1-poll-r1-d000000", "dead-up-k6.1-poll-r1-d001000"}
    assert all(p.guest == {"label": "6.1-2cpu"} for p in measured)


def test_a_guests_plain_engine_is_reached_without_tls_whatever_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "no-certificates"))
    url = f"tcp://127.0.0.1:{machine.free_port()}"  # nothing listens: the ping fails, with or without TLS
    with pytest.raises(UserError, match="TLS for"):
        engine.answers(url, timeout=1)
    assert engine.answers(url, timeout=1, plain=True) is None


def newest_of_suite(suite: str) -> str:
    """The upstream version of the newest cloud kernel a suite carries (so that the test follows sid)."""
    apt.update()
    found = [k for k in kernels.candidates(apt.packages()) if k.suite == suite and k.flavour == "cloud"]
    newest = max(found, key=functools.cmp_to_key(lambda a, b: debversion.compare(a.version or "", b.version or "")))
    return debversion.split(newest.version or "")[1]


@pytest.mark.needs_host(REAL_GUEST)
def test_a_real_run_over_two_kernels_records_each_points_kernel_under_tcg(tmp_path):
    from experiment import pipeline

    sid = newest_of_suite("sid")
    # SMP: each kernel's dead and pipetest lines in its one guest of two vCPUs, one boot per kernel (pipetest UP's
    # guest of one vCPU: its shape in the tests above, a real boot of one vCPU in test_guest.py); one backend,
    # as nothing a guest does depends on it
    run = pipeline.reproduce("quick", kernels=f"6.1,{sid}", accel="tcg", sweeps="dead,pipetest", variants="smp",
                             backends="epoll", dead="0,1000", pipes="10,1000", walks="stay", duration="1",
                             results_dir=str(tmp_path))
    assert run is not None
    points = run.points()
    assert len(points) == 8 and all(p.ok for p in points), [p.reason for p in points if not p.ok]
    releases = {p.series.kernel: p.guest["kernel"]["release"] for p in points if p.guest}
    assert set(releases) == {"6.1", sid} and len(set(releases.values())) == 2
    assert {p.guest["accelerator"] for p in points if p.guest} == {"tcg"}
    assert {(p.sweep, p.guest["vcpus"]) for p in points if p.guest} == {(model.DEAD, 2), (model.PIPETEST, 2)}
    record = json.loads((run.path / "run.json").read_text())
    booted = record["metadata"]["guests"]
    assert set(booted) == {"6.1-2cpu", f"{sid}-2cpu"}
    assert booted["6.1-2cpu"]["settings"]["net.core.somaxconn"] == 65535
    assert booted["6.1-2cpu"]["guest"]["kernel"] == releases["6.1"] and booted["6.1-2cpu"]["guest"]["cpus"] == "2"
    assert "overlay" in booted["6.1-2cpu"]["guest"]["modules"] and booted["6.1-2cpu"]["guest"]["images_disk"]
    assert all(g["qemu_version"].startswith("QEMU emulator version") and g["accelerator_reason"]
               for g in booted.values())
    assert all((run.path / "guests" / f"guest-{label}.console.log").stat().st_size for label in booted)
    assert our_qemus() == [], "no QEMU outlives the run"
    report = (run.path / "report" / "report.md").read_text()
    assert "### Kernels" in report and "emulated (TCG)" in report
