"""A Docker engine that answers: connect to it, or (root on Debian) install docker.io and start dockerd."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

from ..errors import UserError
from . import machine

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
START_TIMEOUT_S = 60


def default_url() -> str:
    """The engine a URL-less client talks to: DOCKER_HOST, else the local socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def _ping(base_url: str | None) -> docker.DockerClient | None:
    try:
        client = docker.DockerClient(base_url=base_url or DEFAULT_SOCKET, timeout=600)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        return None


def connect(base_url: str | None = None, log_dir: Path | None = None, say=print) -> docker.DockerClient:
    """A client of the engine at base_url (default: the local socket, started here when needed)."""
    client = _ping(base_url or os.environ.get("DOCKER_HOST"))
    if client:
        return client
    local = (base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET) == DEFAULT_SOCKET
    if not local:
        raise UserError(f"no Docker engine answers at {base_url}: start it there, or check the URL")
    if not machine.is_debian_root():
        raise UserError("no Docker engine answers at /var/run/docker.sock: start dockerd "
                        "(or run as root on Debian so epollbench can install docker.io and start it)")
    machine.ensure_packages(["docker.io"], "running the sweeps in containers")
    log_dir = log_dir or Path("/var/log")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "dockerd.log"
    say(f"starting dockerd (log: {log_path})")
    with open(log_path, "ab") as log:
        subprocess.Popen([shutil.which("dockerd") or "/usr/sbin/dockerd"], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        client = _ping(None)
        if client:
            return client
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise UserError(f"dockerd did not answer within {START_TIMEOUT_S} s: see {log_path} ({' | '.join(tail)})")


def copy_images(src: docker.DockerClient, dst: docker.DockerClient, refs: list[str] | tuple[str, ...]) -> dict:
    """Copies images from one engine to another, `docker save | docker load` streamed through this process,
    so that a second engine (another machine's, or a second dockerd here) runs the very same images.
    Returns {ref: "copied" or "present"}; one dst already has with the same ID is not sent again."""
    done = {}
    for ref in refs:
        try:
            image = src.images.get(ref)
        except docker.errors.ImageNotFound:
            raise UserError(f"no image {ref} on the source engine to copy: build it there first") from None
        try:
            if dst.images.get(ref).id == image.id:
                done[ref] = "present"
                continue
        except docker.errors.ImageNotFound:
            pass
        try:
            dst.images.load(src.api.get_image(ref))
        except docker.errors.DockerException as error:
            raise UserError(f"copying image {ref} to the other engine failed: {error}") from None
        if dst.images.get(ref).id != image.id:
            raise UserError(f"image {ref} arrived on the other engine with another ID: "
                            f"{dst.images.get(ref).id} instead of {image.id}")
        done[ref] = "copied"
    return done


# What a container on an engine sees of its host: the open-file limit its containers get, the CPUs they may
# use, the kernel, and the boot id, which two engines on one host share. `sh` and coreutils only.
PROBE_SCRIPT = """\
echo "fd_hard_limit=$(ulimit -H -n)"
echo "nr_open=$(cat /proc/sys/fs/nr_open)"
echo "cpu_list=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"
echo "nproc=$(nproc)"
echo "kernel=$(uname -r)"
echo "machine=$(uname -m)"
echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "memory_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
"""


def probe(client: docker.DockerClient, image: str) -> dict:
    """The host facts of an engine, from a container of image on host networking (see PROBE_SCRIPT)."""
    try:
        out = client.containers.run(image, ["sh", "-c", PROBE_SCRIPT], remove=True, stdout=True, stderr=True,
                                    network_mode="host")
    except docker.errors.DockerException as error:
        raise UserError(f"cannot run {image} on the engine to read its limits and CPUs: {error}") from None
    facts = dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)
    fd_limit = facts.get("fd_hard_limit", "")
    return {"fd_hard_limit": int(fd_limit) if fd_limit.isdigit() else int(facts["nr_open"]),
            "cpu_list": facts.get("cpu_list", "").strip(), "cpus": len(expand_cpu_list(facts.get("cpu_list", ""))),
            "nproc": int(facts.get("nproc") or 0), "kernel": facts.get("kernel"), "machine": facts.get("machine"),
            "cpu_model": (facts.get("cpu_model") or "").strip() or None,
            "memory_bytes": int(facts["memory_kb"]) * 1024 if facts.get("memory_kb", "").isdigit() else None,
            "hostname": facts.get("hostname"), "boot_id": facts.get("boot_id")}


def expand_cpu_list(text: str) -> list[int]:
    """The CPUs of a kernel CPU list such as "0-3,6"."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus += range(int(low), int(high or low) + 1)
    return cpus


def is_local(url: str | None) -> bool:
    """Whether an engine URL is a socket on this machine (its containers share our limits and CPUs)."""
    return (url or default_url()).startswith("unix://")


def facts(client: docker.DockerClient, url: str | None, probed: dict) -> dict:
    """An engine's metadata: its URL, Docker version and info, and its host facts as probe() read them."""
    version, info = client.version(), client.info()
    return {"url": url or default_url(), "name": info.get("Name"),
            "id": info.get("ID"), "docker_version": version.get("Version"), "api_version": version.get("ApiVersion"),
            "os": info.get("OperatingSystem"), "kernel_version": info.get("KernelVersion"), "ncpu": info.get("NCPU"),
            "mem_total": info.get("MemTotal"), "cgroup_version": info.get("CgroupVersion"),
            "cgroup_driver": info.get("CgroupDriver"), "docker_root_dir": info.get("DockerRootDir"), **probed}
