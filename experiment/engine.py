"""A Docker engine that answers: connect to it, or (root on Debian) install docker.io and start dockerd."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

from . import host
from .errors import UserError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
START_TIMEOUT_S = 60


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
    if not host.is_debian_root():
        raise UserError("no Docker engine answers at /var/run/docker.sock: start dockerd "
                        "(or run as root on Debian so epollbench can install docker.io and start it)")
    host.ensure_packages(["docker.io"], "running the sweeps in containers")
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
