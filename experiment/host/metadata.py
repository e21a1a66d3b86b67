"""Metadata captured at the start of a run (pyperf style), and which of it must match to merge points."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path

import docker
import docker.errors

from ..errors import UserError
from . import images, machine
from .syscall_cost import syscall_cost_factors

# A resumed run must match these, or its points would mix two machines or two builds.
CHECKED = ("hostname", "kernel", "cpu_model", "cpus", "fd_hard_limit", "image_ids")
# The same of each engine's host (metadata["engines"]), and the server under test.
CHECKED_ENGINE = ("hostname", "kernel", "cpu_model", "cpus", "fd_hard_limit")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _os_release() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _memory_bytes() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def capture(client: docker.DockerClient, built: dict, base_image: dict, sysctls: dict,
            engine_url: str) -> dict:
    """What a reader needs to judge and rerun the numbers; taken before the first point."""
    uname = os.uname()
    version = client.version()
    info = client.info()
    image_meta = {target: images.image_metadata(client, image.id) for target, image in built.items()}
    return {
        "hostname": socket.gethostname(),
        "kernel": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "os_release": _os_release(),
        "cpu_model": machine.cpu_model(),
        "cpus": machine.cpu_count(),
        "cpu_list": ",".join(str(c) for c in machine.cpus()),
        "memory_bytes": _memory_bytes(),
        "fd_hard_limit": machine.fd_hard_limit(),
        "sysctls": sysctls,
        "docker": {"version": version.get("Version"), "api_version": version.get("ApiVersion"),
                   "cgroup_version": info.get("CgroupVersion"), "cgroup_driver": info.get("CgroupDriver"),
                   "engine": engine_url, "seccomp": "seccomp" in " ".join(info.get("SecurityOptions", []))},
        "images": image_meta,
        "image_ids": {target: meta["id"] for target, meta in image_meta.items()},
        "base_image": base_image,
        "git": images.git_state(),
        "python": sys.version.split()[0],
        "httperf_version": _httperf_version(client, built["client"].id),
        "epollbench_version": _package_version(),
        "load_at_start": list(os.getloadavg()),
        # What a system call costs depends on; the server container's seccomp mode is added per
        # server by syscall_cost_factors(pid) once it runs.
        "syscall_cost": syscall_cost_factors(),
    }


def _httperf_version(client: docker.DockerClient, image: str) -> str | None:
    """The second line of `httperf --version` in the client image, e.g. "httperf: httperf-0.9.0 compiled ..."."""
    try:
        out = client.containers.run(image, ["httperf", "--version"], remove=True, stdout=True, stderr=True,
                                    network_mode="host")
    except docker.errors.DockerException:
        return None
    lines = [x for x in out.decode(errors="replace").splitlines() if "httperf-" in x]
    return lines[0].split(":", 1)[-1].strip() if lines else None


def wrk_version(client: docker.DockerClient, image: str) -> str | None:
    """The first line of `wrk -v` in the client image, e.g. "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer"
    (wrk exits 1 after printing it)."""
    try:
        container = client.containers.run(image, ["wrk", "-v"], detach=True, network_mode="host")
    except docker.errors.DockerException:
        return None
    try:
        container.wait(timeout=60)
        out = container.logs(stdout=True, stderr=True).decode(errors="replace")
    except (docker.errors.DockerException, OSError, ValueError):
        return None
    finally:
        container.remove(force=True)
    lines = [x.strip() for x in out.splitlines() if x.startswith("wrk ")]
    return lines[0] if lines else None


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("epollbench")
    except Exception:
        return "unknown"


def differences(a: dict, b: dict, keys: tuple[str, ...] = CHECKED) -> dict:
    """The checked metadata that differs between two runs: {key: (a, b)}; each engine's host facts and the
    servers under test too (each kind both runs recorded)."""
    changed = {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}
    for role in ("server", "client"):
        ours, theirs = (a.get("engines") or {}).get(role), (b.get("engines") or {}).get(role)
        if ours and theirs:
            changed.update({f"engines.{role}.{k}": (ours.get(k), theirs.get(k)) for k in CHECKED_ENGINE
                            if ours.get(k) != theirs.get(k)})
    ours, theirs = servers_under_test(a), servers_under_test(b)
    for kind in ours.keys() & theirs.keys():
        if ours[kind].get("image_id") != theirs[kind].get("image_id"):
            changed[f"servers_under_test.{kind}.image_id"] = (ours[kind].get("image_id"),
                                                              theirs[kind].get("image_id"))
    return changed


class ResumeRefused(UserError):
    """A run cannot be resumed here: its points would mix two machines or two builds."""


def check_resumable(run_id: str, recorded: dict | None, now: dict) -> None:
    """ResumeRefused naming what changed since the run took its metadata. A run interrupted before it took
    any (while its images built) has no point yet, so nothing to mix."""
    changed = differences(recorded, now) if recorded else {}
    if changed:
        detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ResumeRefused(f"cannot resume {run_id}: {detail}; start a new run instead")


def servers_under_test(meta: dict) -> dict[str, dict]:
    """The servers a run put under test, by kind; a run recorded before several could run had one."""
    one = meta.get("server_under_test")
    return meta.get("servers_under_test") or ({one.get("kind", "ephttpd"): one} if one else {})
