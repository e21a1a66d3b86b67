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
