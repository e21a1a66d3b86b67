"""A second Docker engine on this machine, for tests of runs whose server and clients are on different engines.

It is a dockerd of its own: its socket, data root, exec root (so its own containerd), pid file and an empty
configuration file, no bridge and no iptables rules, so that it does not touch the first engine's docker0 or
firewall chains. Its containers run on host networking, so they share the host's network namespace, and
127.0.0.1, with the first engine's containers. It starts with no images: copy them with
experiment.engine.copy_images.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


@dataclass
class SecondEngine:
    root: Path
    url: str
    process: subprocess.Popen
    client: docker.DockerClient

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])


def dockerd_binary() -> str | None:
    return shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)


def start(more_args: tuple[str, ...] = ()) -> SecondEngine:
    """Starts the engine and waits until it answers a ping on its socket; stop() it (and remove its files) at
    the end. more_args go to dockerd too (e.g. another --host and its TLS settings)."""
    binary = dockerd_binary()
    if binary is None:
        raise RuntimeError("no dockerd on this machine: install docker.io")
    # Short paths: containerd's sockets live under the exec root and a socket path has 108 bytes at most.
    root = Path(tempfile.mkdtemp(prefix="epb-e2-", dir="/tmp"))
    url = f"unix://{root / 'docker.sock'}"
    (root / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json, which may set what we set here
    command = [binary, "--host", url, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
               "--pidfile", str(root / "docker.pid"), "--config-file", str(root / "daemon.json"),
               "--bridge=none", "--iptables=false", "--ip-masq=false", "--log-level=warn", *more_args]
    with open(root / "dockerd.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            client = docker.DockerClient(base_url=url, timeout=600)
            client.ping()
            return SecondEngine(root, url, process, client)
        except (docker.errors.DockerException, OSError):
            time.sleep(0.5)
    engine = SecondEngine(root, url, process, None)
    tail = engine.log_tail()
    stop(engine)
    raise RuntimeError(f"the second dockerd did not answer within {START_TIMEOUT_S} s: {tail}")


def stop(engine: SecondEngine) -> None:
    """Removes its containers, stops it, and removes its data (unmounting what it left mounted)."""
    if engine.client is not None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            for container in engine.client.containers.list(all=True):
                container.remove(force=True)
        engine.client.close()
    if engine.process.poll() is None:
        engine.process.terminate()
        try:
            engine.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait()
    for mount in reversed(_mounts_under(engine.root)):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(engine.root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [p for p in points if p.startswith(prefix)]
