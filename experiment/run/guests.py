"""A run over kernels (--kernels): every planned line measured once per kernel, each kernel's lines in a QEMU guest
booted with it (guest/qemu.py), through the same steps as a run on the host's kernel (steps.py). A guest is one
more Docker engine: its dockerd answers on a port QEMU forwards from 127.0.0.1, and the server and the clients
both run in it, placed by the same cpusets as on the host, so that nothing crosses QEMU's emulated network.

The images are built once, on the host, and reach every guest on one images disk (guest/imagedisk.py: a Docker
data root written on the host), never built or loaded through a guest's emulated CPUs. The guests' root disk,
modules and engine are the same for every kernel; only the kernel differs. A guest boots with the settings
the plan needs (experiment/data/guest-init.sh) and is never tuned; the preflight reads its settings through
its engine (guest/settings.py). The anatomy is unavailable in a guest: perf runs on the host.

Guests, in planned() order: per kernel, one with two vCPUs for the dead sweep (and pipetest's SMP lines), one
with one vCPU for pipetest's UP lines (plan.guest_vcpus). A guest that does not boot, or is lost mid-sweep,
fails the rest of its lines with the reason (its console log is kept in guests/), and the run goes on with
the next guest. A resumed run boots only the guests that still have lines to measure, on the kernels its
first attempt resolved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import requests

from .. import model
from ..catalog import kernel_name
from ..errors import UserError
from ..guest import apt, imagedisk, kernels, qemu
from ..guest import settings as guest_settings
from ..guest.kernels import Kernel
from ..host import engine, metadata, preflight, process
from . import results
from .context import InGuest, new_point
from .plan import Line, guest_vcpus, measured_in, planned
from .services import LOOPBACK
from .steps import (
    AssessedHost,
    Engines,
    Options,
    PlacedImages,
    Probed,
    Stopwatch,
    cpusets,
    limits_of,
    place_images,
    preflight_findings,
    servers_under_test,
    sweep,
)

Say = Callable[[str], None]

# What guest-init.sh gives the guest's processes (ulimit -n), and so its containers: the plan's levels in a
# guest are those of this limit.
GUEST_FD_LIMIT = 1_048_576
GUEST_MEMORY_MB = 4096
GUESTS_FOLDER = "guests"  # in the run folder: each guest's console, QEMU log and facts


@dataclass(frozen=True)
class Shape:
    """One guest of the run: its kernel (by name) and vCPUs."""

    kernel: str
    vcpus: int

    @property
    def label(self) -> str:
        return f"{self.kernel}-{self.vcpus}cpu"

    def measures(self, line: Line) -> bool:
        return measured_in(line, self.kernel, self.vcpus)


def shapes(plan: model.Plan) -> list[Shape]:
    """The run's guests, in the order planned() measures their lines."""
    return list(dict.fromkeys(Shape(line.kernel, guest_vcpus(line)) for line in planned(plan, GUEST_FD_LIMIT)))


def measure_in_guests(run: results.Run, record: model.RunRecord, options: Options, say: Say) -> None:
    """The run's steps over its kernels: the images placed on the host's engine and written to the guests'
    images disk, the kernels resolved and fetched, the host recorded, then each guest booted in turn and its
    lines swept."""
    plan, stopwatch = record.plan, Stopwatch()
    host = Engines.connect({"server": engine.default_url(), "client": engine.default_url(),
                            "server_address": LOOPBACK}, run.logs_dir, say)
    placed = place_images(run, record, options, host, say)
    disk = imagedisk.build(host.server, [placed.server_tag, placed.client_tag], say)
    found = resolve_kernels(plan, record.metadata.get("kernels") or {}, say)
    stopwatch.images_done = time.monotonic()
    _record_host(run, record, options, host, placed, found, disk)
    timings: dict[str, dict] = {}
    for shape in shapes(plan):
        timings[shape.label] = _one_guest(run, plan, shape, found[shape.kernel], placed, disk, say)
    run.update_record(timings={"images_s": round(stopwatch.images_done - stopwatch.started, 1),
                               "setup_s": round(sum(t.get("boot_s", 0) for t in timings.values()), 1),
                               "measuring_s": round(sum(t.get("measuring_s", 0) for t in timings.values()), 1),
                               "guests": timings})


def resolve_kernels(plan: model.Plan, recorded: dict, say: Say) -> dict[str, Kernel]:
    """Each --kernels item resolved and fetched, by name; a resumed run's as its first attempt resolved them
    (by Debian version, or the same file by its sha256)."""
    found = {}
    for spec in plan.kernels:
        name, asked = kernel_name(spec), asked_spec(plan, spec)
        pinned = recorded.get(name) or {}
        if pinned.get("version"):
            asked = pinned["version"] + ("-rt" if pinned.get("flavour") == "rt" else "")
        kernel = kernels.find(asked, say)
        if pinned.get("vmlinuz_sha256") not in (None, kernel.sha256):
            raise metadata.ResumeRefused(f"the kernel {name} is not the one the run started with (its image's "
                                         f"sha256 was {pinned['vmlinuz_sha256']}, now {kernel.sha256}): start a "
                                         "new run instead")
        found[name] = kernel
    return found


def asked_spec(plan: model.Plan, spec: str) -> str:
    """A --kernels item as guest/kernels reads it: a kernel file's with the plan's --kernel-modules."""
    return f"{spec}:{plan.kernel_modules}" if "/" in spec and plan.kernel_modules else spec


def cached_kernels(plan: model.Plan) -> dict[str, Kernel | str | None]:
    """Each --kernels item by name as the cache tells, fetching nothing (the dry run and doctor say it): the
    kernel (kernels.cached), None while the apt lists are not fetched, or why the item names no kernel."""
    index = apt.cached_packages() if any(kernels.is_debian(spec) for spec in plan.kernels) else None
    found: dict[str, Kernel | str | None] = {}
    for spec in plan.kernels:
        try:
            found[kernel_name(spec)] = kernels.cached(asked_spec(plan, spec), index)
        except UserError as error:
            found[kernel_name(spec)] = str(error)
    return found


def describe_kernel(found: Kernel | str | None) -> str:
    """What cached_kernels() found of an item, said: its kernel and whether its files are in the cache."""
    if found is None:
        return "not fetched yet, nor the private apt lists: a run resolves it against the mirror at its start"
    if isinstance(found, str):
        return found
    if found.flavour not in kernels.FLAVOURS:  # host or a kernel file: nothing to fetch
        return found.about()
    if found.vmlinuz is None:
        return f"{found.about()}, not fetched yet: a run downloads {', '.join(found.packages)}"
    return f"{found.about()}, in the cache"


def _record_host(run: results.Run, record: model.RunRecord, options: Options, host: Engines,
                 placed: PlacedImages, found: dict[str, Kernel], disk: Path) -> None:
    """run.json's metadata: the host's (a resumed run's checked against what it recorded), the kernels, the
    images disk; the guests' own are added as each boots."""
    meta = metadata.capture(host.server, placed.built, placed.base, preflight.read_host_settings(),
                            host.server_url)
    meta["images_source"] = {**placed.provenance, "images_disk": disk.name}
    if options.resume:
        metadata.check_resumable(run.id, record.metadata, meta)
    meta.update(kernels={name: kernel.facts() for name, kernel in found.items()},
                guests=record.metadata.get("guests") or {})
    run.update_record(status="running", metadata=meta, harness=process.this_process())


def _one_guest(run: results.Run, plan: model.Plan, shape: Shape, kernel: Kernel, placed: PlacedImages,
               disk: Path, say: Say) -> dict:
    """One guest booted and its lines swept, unless they are all recorded; however it fails, the rest of its
    lines recorded failed with the reason. Its seconds of booting and measuring."""
    lines = [line for line in planned(plan, GUEST_FD_LIMIT) if shape.measures(line)]
    if all(run.has_point(line.point_id(level)) for line in lines for level in line.levels):
        return {}
    started = time.monotonic()
    try:
        with qemu.running(kernel, run.path / GUESTS_FOLDER, vcpus=shape.vcpus, memory_mb=GUEST_MEMORY_MB,
                          accelerator=plan.accel, label=shape.label, images_disk=disk, say=say) as guest:
            booted = time.monotonic()
            _sweep_in(run, plan, shape, guest, placed, say)
            return {"boot_s": round(booted - started, 1), "measuring_s": round(time.monotonic() - booted, 1)}
    except (UserError, docker.errors.DockerException, requests.RequestException) as error:
        reason = f"the guest {shape.label} ({kernel.release}) failed: {error}"
        say(reason)
        _fail_rest(run, plan, lines, reason)
        return {"failed": reason}


def _sweep_in(run: results.Run, plan: model.Plan, shape: Shape, guest: qemu.Guest, placed: PlacedImages,
              say: Say) -> None:
    """The guest's lines, swept on its engine by the same steps as on the host."""
    engines = Engines.connect({"server": guest.url, "client": guest.url, "server_address": LOOPBACK},
                              run.logs_dir, say, plain=True)
    probed = Probed.take(engines, placed)
    host = _assess_guest(run, plan, shape, guest, probed, placed, servers_under_test(plan, engines, placed, say),
                         say)
    in_guest = InGuest(shape.kernel, shape.vcpus, point_facts(guest), failure=lambda: _lost(guest))
    sweep(run, plan, engines, placed, host, False, Stopwatch(), say, in_guest)


def _assess_guest(run: results.Run, plan: model.Plan, shape: Shape, guest: qemu.Guest, probed: Probed,
                  placed: PlacedImages, under_test: dict[str, dict], say: Say) -> AssessedHost:
    """The guest before its first point, as the host is assessed before a run's: its limits, its settings
    against the plan's needs, its cpusets; recorded in run.json's metadata "guests" under its label (and the
    two-vCPU guest's cpusets and limits as the run's)."""
    fd_limit, client_fd_limit = probed.fd_limit("server"), probed.fd_limit("client")
    settings = guest_settings.read(probed.engines.server, placed.client_tag)
    findings = preflight_findings(plan, fd_limit, settings, None, lambda line: say(f"{shape.label}: {line}"))
    cpus = probed.cpus("server")
    assessed = AssessedHost(fd_limit, client_fd_limit, cpusets(cpus, cpus, same_host=True), findings, None)
    limits = limits_of(plan, fd_limit, client_fd_limit)
    recorded = {**guest.facts, "settings": settings, "preflight": [f.to_dict() for f in findings],
                "cpusets": assessed.cpusets, "limits": limits, "servers_under_test": under_test,
                "engine": engine.facts(probed.engines.server, guest.url, probed.found["server"])}
    meta = run.record().metadata
    changes: dict = {"metadata": {**meta, "guests": {**meta.get("guests", {}), shape.label: recorded}}}
    if shape.vcpus == 2 or not run.record().cpusets:
        changes.update(cpusets=assessed.cpusets, limits=limits)
    run.update_record(**changes)
    return assessed


def point_facts(guest: qemu.Guest) -> dict:
    """What each point measured in the guest records of it (model.Point.guest)."""
    kernel = guest.kernel.facts()
    return {"label": guest.label, "kernel": {k: kernel[k] for k in ("release", "flavour", "suite", "version",
                                                                     "packages", "vmlinuz_sha256")},
            "accelerator": guest.accelerator.name, "accelerator_reason": guest.accelerator.reason,
            "vcpus": guest.vcpus, "memory_mb": guest.memory_mb, "qemu_version": guest.facts.get("qemu_version")}


def _lost(guest: qemu.Guest) -> str | None:
    """Why the guest can no longer measure: QEMU ended (None while it runs)."""
    if guest.process.poll() is None:
        return None
    return f"QEMU exited with {guest.process.returncode}: {qemu.failure_tail(guest)}"


def _fail_rest(run: results.Run, plan: model.Plan, lines: list[Line], reason: str) -> None:
    """The lines' points not yet recorded, recorded failed with the reason."""
    for line in lines:
        for level in line.levels:
            if not run.has_point(line.point_id(level)):
                point = new_point(plan, line, level)
                point.status, point.reason, point.ended_at = model.FAILED, reason, model.utc_now()
                run.write_point(point)
