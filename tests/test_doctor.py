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

import pytest
from reproducing import finished, invoke, labelled_containers

from experiment import catalog
from experiment.errors import UserError
from experiment.host import engine, images, preflight, process
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
