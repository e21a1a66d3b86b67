"""`invoke doctor` on this host and with an engine that cannot be used, and reproduce stopping on the same
checks before it builds anything."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import guestcache
import pytest
from reproducing import finished, invoke, labelled_containers

from experiment import catalog
from experiment.errors import UserError
from experiment.guest import accel, apt, initramfs, kernels
from experiment.guest.initramfs import PROBE_MARKER
from experiment.host import engine, images, machine, preflight, process
from experiment.paths import ROOT
from experiment.run import doctor, plan
from experiment.run.containers import LABEL_HARNESS, LABEL_ROLE, LABEL_RUN

LINE = re.compile(r"^(ok|warn|fail) +([a-z ,()]+): (.+)$")
NO_ENGINE = "unix:///nonexistent/epollbench-test/docker.sock"
NAMES = {"server engine", "base image", "images", "fd limit", "loopback conntrack", "perf", "tracefs", "slabinfo",
         "chromium", "memory", "leftovers"}


def run_doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "doctor", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def parsed(out: str) -> dict[str, tuple[str, str]]:
    *lines, summary = out.strip().splitlines()
    checks = {}
    for line in lines:
        matched = LINE.match(line)
        assert matched, f"not a check line: {line!r}"
        level, name, rest = matched.groups()
        checks[name] = (level, rest)
        assert (level == "ok") != ("; fix: " in rest), f"a warn or fail says its fix, an ok none: {line!r}"
    counts = [sum(level == wanted for level, _ in checks.values()) for wanted in ("ok", "warn", "fail")]
    assert summary.startswith("doctor: {} ok, {} warn, {} fail (".format(*counts)), summary
    return checks


@pytest.mark.docker
def test_doctor_on_this_host(client):
    proc = run_doctor()
    checks = parsed(proc.stdout)
    assert set(checks) >= NAMES, checks.keys()
    assert any(name.startswith("disk (") for name in checks)
    failed = [name for name, (level, _) in checks.items() if level == "fail"]
    assert proc.returncode == (1 if failed else 0), proc.stderr
    level, text = checks["server engine"]
    assert level == "ok" and text.startswith(f"Docker {client.version()['Version']} answers at ")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = catalog.dead_capacity(hard, plan.PROFILES["quick"].active_connections)
    assert f"hard limit {hard}, so at most {most} dead connections per server" in checks["fd limit"][1]
    assert checks["fd limit"][0] == ("ok" if most >= max(plan.PROFILES["quick"].dead) else "warn")
    source = images.source_hash()
    built = all(client.images.list(name=f"epollbench/{t}") and any(
        tag.endswith(f":{source}") for i in client.images.list(name=f"epollbench/{t}") for tag in i.tags)
        for t in images.TARGETS)
    assert ("are built for this tree" in checks["images"][1]) == built


def test_an_engine_that_does_not_answer_is_a_fail_with_its_fix_and_exit_code_1():
    proc = run_doctor(env=dict(os.environ, DOCKER_HOST=NO_ENGINE))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = parsed(proc.stdout)
    assert checks["server engine"] == ("fail", f"no Docker engine answers at {NO_ENGINE}; fix: start it there, or "
                                               "check the URL (DOCKER_HOST, --server-engine, --client-engine)")
    assert "(no engine to look on)" in checks["images"][1]
    assert proc.stdout.strip().splitlines()[-1].endswith(": `invoke reproduce` would stop")


def test_reproduce_stops_on_a_fail_before_building_anything(tmp_path):
    proc = invoke("--sweeps", "pipetest", "--variants", "up", "--pipes", "10", "--no-report", results_dir=tmp_path,
                  env=dict(os.environ, DOCKER_HOST=NO_ENGINE))
    code, out, err = finished(proc, 120)
    assert code == 2, out + err
    assert err.strip() == (f"epollbench: server engine: no Docker engine answers at {NO_ENGINE} (fix: start it "
                           "there, or check the URL (DOCKER_HOST, --server-engine, --client-engine)); `invoke "
                           "doctor` shows every check")
    assert list(tmp_path.iterdir()) == [], "no run folder: nothing was started"


def test_a_local_engine_that_reproduce_would_start_is_a_warn(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(engine, "DEFAULT_SOCKET", f"unix://{tmp_path}/docker.sock")  # nothing listens there
    check, client = doctor._engine("server", None)
    assert client is None
    installed = shutil.which("dockerd") or Path("/usr/sbin/dockerd").exists()
    assert check.level == "warn" and check.detail == (
        f"no Docker engine answers at unix://{tmp_path}/docker.sock: reproduce starts dockerd" if installed
        else "Docker is not installed: reproduce installs docker.io and starts dockerd")


def test_tune_host_without_root_is_a_fail(monkeypatch):
    """As if somaxconn were below the server's backlog (the preflight reads 128), and this not root."""
    real = preflight.read_host_settings()
    monkeypatch.setattr(preflight, "read_host_settings", lambda: {**real, "net.core.somaxconn": 128})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    needs = plan.make_plan("quick", dead="0,1000", sweeps="dead")
    checks = {c.name: c for c in doctor._host_settings(needs, tune_host=True)}
    somaxconn = checks["net.core.somaxconn"]
    assert somaxconn.level == "fail" and "--tune-host needs root" in somaxconn.detail
    assert somaxconn.fix.startswith("run as root, or: sysctl -w net.core.somaxconn=")
    with pytest.raises(UserError, match="net.core.somaxconn: 128, needs 2048, and --tune-host needs root"):
        monkeypatch.setattr(doctor, "checks", lambda *args, **kwargs: list(checks.values()))
        doctor.gate(needs, ROOT / "results", tune_host=True, say=lambda _: None)


@pytest.mark.docker
def test_reproduce_warns_at_start_of_leftovers(client, tmp_path):
    run_id = f"test-doctor-{uuid.uuid4().hex[:8]}"
    gone = subprocess.Popen(["true"])
    gone.wait()
    harness = dict(process.this_process(), pid=gone.pid, hostname=socket.gethostname())
    image = images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path)["client"].tag
    try:
        client.containers.run(image, ["sleep", "600"], detach=True, network_mode="host",
                              labels={LABEL_RUN: run_id, LABEL_ROLE: "sleeper", LABEL_HARNESS: json.dumps(harness)})
        said: list[str] = []
        doctor.gate(plan.make_plan("quick", sweeps="pipetest"), tmp_path, say=said.append)
        leftover, = [line for line in said if line.startswith("doctor: warn  leftovers: ")]
        assert "container(s) of " in leftover and leftover.endswith("; fix: ./run clean")
    finally:
        for container in labelled_containers(client, run_id):
            with contextlib.suppress(Exception):
                container.remove(force=True)


# A QEMU that says its version and fails under KVM as nested virtualization does here.
FAKE_QEMU = """#!/bin/sh
case "$*" in
    --version) echo 'QEMU emulator version 9.9.9 (fake)';;
    *'-accel kvm'*) echo 'qemu-system-x86_64: error: KVM internal error. Suberror: 1' >&2; exit 1;;
esac
"""
HOST_ONLY = {"fd limit", "loopback conntrack", "sysctls", "net.core.somaxconn", "perf", "tracefs", "slabinfo"}


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    monkeypatch.setenv("EPOLLBENCH_QEMU", str(fake))
    monkeypatch.setattr(accel, "_probed", {})
    return fake


def in_guests(kernels_: str, accel_: str | None = None) -> plan.Plan:
    return plan.make_plan("quick", sweeps="dead,pipetest", kernels=kernels_, accel=accel_)


def test_qemu_missing_is_installed_by_reproduce_as_root_and_a_fail_otherwise(monkeypatch, fake_qemu):
    assert doctor._qemu() == doctor.Check("qemu", "ok", f"{fake_qemu}: QEMU emulator version 9.9.9 (fake)")
    monkeypatch.setattr(accel, "installed_qemu", lambda: None)
    monkeypatch.setattr(machine, "is_debian_root", lambda: True)
    assert doctor._qemu() == doctor.Check("qemu", "warn", "qemu-system-x86_64 is not installed: reproduce installs "
                                          "qemu-system-x86", "nothing to do, or: apt-get install qemu-system-x86")
    monkeypatch.setattr(machine, "is_debian_root", lambda: False)
    missing = doctor._qemu()
    assert missing.level == "fail" and "cannot be installed from here" in missing.detail
    assert missing.fix == "apt-get install qemu-system-x86 as root, or set EPOLLBENCH_QEMU"


def test_a_run_in_guests_is_judged_for_its_kernels_and_not_for_the_hosts_settings(guest_cache, tmp_path,
                                                                                   monkeypatch, fake_qemu):
    guestcache.write_lists()
    guestcache.unpack(kernels.resolve("6.1", guestcache.recorded_index()))
    # Settings a run on the host would fail on: somaxconn below the server's backlog, --tune-host without root
    real = preflight.read_host_settings()
    monkeypatch.setattr(preflight, "read_host_settings", lambda: {**real, "net.core.somaxconn": 128})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    found = {c.name: c for c in doctor.checks(in_guests("6.1,7.2,6.5"), tmp_path, NO_ENGINE, tune_host=True)}
    assert not HOST_ONLY & set(found), found.keys()
    settings = found["host settings"]
    assert settings.level == "ok" and "not judged: the levels run in guests" in settings.detail
    assert found["qemu"].detail.endswith("QEMU emulator version 9.9.9 (fake)")
    assert found["kernel 6.1"] == doctor.Check("kernel 6.1", "ok", "6.1.0-50-cloud-amd64 (Debian 6.1.176-1, "
                                               "bookworm), in the cache")
    assert found["kernel 7.2"].detail.startswith("7.2.13+deb14-cloud-amd64 (Debian 7.2.13-1, sid), not fetched yet: "
                                                 "a run downloads linux-binary-unsigned-7.2.13+deb14-cloud-amd64")
    unknown = found["kernel 6.5"]
    assert unknown.level == "fail" and "\n" not in unknown.line()
    assert unknown.detail.startswith("no Debian cloud kernel 6.5 on the mirror: it has 6.1.170-3, 6.1.176-1 "
                                     "(bookworm); 6.12.107-1, 6.12.117-1 (trixie); 7.2.13-1 (sid)")
    with pytest.raises(UserError, match="^kernel 6.5: no Debian cloud kernel 6.5 on the mirror"):
        monkeypatch.setattr(doctor, "checks", lambda *args, **kwargs: [found["kernel 6.5"], found["kernel 6.1"]])
        doctor.gate(in_guests("6.1,6.5"), tmp_path, say=lambda _: None)


def test_a_kernel_unknown_to_lists_over_a_day_old_is_a_warn_the_run_updates_them(guest_cache):
    guestcache.write_lists()
    old = apt.LISTS_MAX_AGE_S + 3600
    for paths in apt.index_files().values():
        for path in paths:
            os.utime(path, (path.stat().st_mtime - old, path.stat().st_mtime - old))
    check, = doctor._kernels(in_guests("6.5"), {"6.5": "no Debian cloud kernel 6.5 on the mirror: it has ..."})
    assert check.level == "warn" and "(as the apt lists of 25 h ago have it; a run updates them first)" in check.detail
    without_lists, = doctor._kernels(in_guests("6.1"), {"6.1": None})
    assert without_lists.level == "ok" and without_lists.detail.startswith("not fetched yet, nor the private apt lists")


def test_kvm_is_probed_with_a_kernel_already_in_the_cache_else_at_the_runs_start(guest_cache, tmp_path,
                                                                                 monkeypatch, fake_qemu):
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(accel, "KVM_DEVICE", str(device))
    guestcache.write_lists()
    kernel = kernels.resolve("6.1", guestcache.recorded_index())
    guestcache.unpack(kernel)
    found = {"6.1": kernels.unpacked(kernel)}
    later = doctor._accelerator(in_guests("6.1"), found)
    assert later.level == "ok" and "probed at the run's start" in later.detail, "no initramfs to probe with yet"
    initrd = initramfs.path_of(found["6.1"])
    initrd.parent.mkdir(parents=True)
    initrd.write_bytes(b"")
    assert doctor._accelerator(in_guests("6.1"), found) == doctor.Check(
        "accelerator", "warn", "KVM cannot run the guests (KVM internal error. Suberror: 1): they run under TCG, "
        "emulated, several times slower", "a host where KVM runs guests (nested virtualization on), or --accel tcg "
        "to skip the probe")
    refused = doctor._accelerator(in_guests("6.1", "kvm"), found)
    assert refused.level == "fail" and refused.fix == "--accel tcg (emulated, several times slower) or auto"
    assert doctor._accelerator(in_guests("6.1", "tcg"), found).level == "ok"
    booting = tmp_path / "booting-qemu"  # writes the probe's marker on the console it is given
    booting.write_text("#!/bin/sh\nfor a in \"$@\"; do\n"
                       f"    case \"$a\" in file:*) echo {PROBE_MARKER} > \"${{a#file:}}\";; esac\n"
                       "done\n")
    booting.chmod(0o755)
    monkeypatch.setenv("EPOLLBENCH_QEMU", str(booting))
    assert doctor._accelerator(in_guests("6.1", "kvm"), found) == doctor.Check(
        "accelerator", "ok", "KVM: a probe guest of 6.1.0-50-cloud-amd64 booted under it")
    monkeypatch.setattr(accel, "KVM_DEVICE", str(tmp_path / "no-kvm"))
    no_device = doctor._accelerator(in_guests("6.1"), found)
    assert no_device.level == "warn" and no_device.detail.startswith(f"KVM cannot run the guests ({tmp_path}/no-kvm "
                                                                     "is missing or not accessible)")
