"""Containers of a run: started on host networking with the host's fd limit, labelled, always removed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import docker
import docker.errors
import docker.types
from docker.models.containers import Container

from ..host import process
from . import seccomp
from .jsonlines import json_object
from .services import Service

LABEL_RUN = "org.epollbench.run"
LABEL_ROLE = "org.epollbench.role"
# Whose container it is, for `invoke clean` to tell a running run's containers from leftovers: the run folder
# (its run.lock is held while the run runs) and the harness process (process.this_process() and the host
# name, as JSON).
LABEL_RUN_DIR = "org.epollbench.run-dir"
LABEL_HARNESS = "org.epollbench.harness"
# How long an exited container's last output may take to come through the engine's log stream.
OUTPUT_END_TIMEOUT_S = 5
# The first line a program run with Containers.exec prints: its PID in the container, to signal it by.
EXEC_PID_MARK = "epollbench-exec-pid"
# The largest file read_file copies out of a container: openload's --requests-out file of its most requests
# (loads.OPEN_MAX_REQUESTS_OUT records of 16 bytes).
FETCH_LIMIT = 1600 * 2**20


def local_process(pid: int | None, container_id: str) -> bool:
    """Whether pid, as an engine gave it, is a process of this machine in the container's cgroup (the engine
    runs here, in this machine's PID namespace): then it can be signalled directly."""
    try:
        return bool(pid) and container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


@dataclass
class Managed:
    """A running container whose stdout is read line by line in a background thread."""

    container: Container
    role: str
    cpuset: str
    command: list[str]
    lines: queue.Queue = field(default_factory=queue.Queue)
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start_reader(self) -> None:
        def read():
            buffer = b""
            try:
                for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        text = line.decode(errors="replace")
                        self.log.append(text)
                        self.lines.put(text)
            except (docker.errors.DockerException, OSError, ValueError):
                pass
            if buffer:
                self.log.append(buffer.decode(errors="replace"))
                self.lines.put(buffer.decode(errors="replace"))
            self.lines.put(None)

        self.reader = threading.Thread(target=read, daemon=True, name=f"logs-{self.role}")
        self.reader.start()

    def output(self, timeout: float = OUTPUT_END_TIMEOUT_S) -> str:
        """Everything the container printed, once its log stream has ended (call after it exited)."""
        if self.reader:
            self.reader.join(timeout)
        return "\n".join(self.log) + "\n"

    def next_json(self, events: tuple[str, ...], timeout: float) -> dict | None:
        """The next JSON line whose "event" is one of events; None when the output ends or time runs out."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.lines.put(None)
                return None
            data = json_object(line)
            if data is not None and data.get("event") in events:
                return data
        return None

    def cpu_ns(self) -> int:
        """CPU time the container used so far (its cgroup's accounting, through the engine)."""
        stats = self.container.stats(stream=False, one_shot=True)
        if not isinstance(stats, dict):  # stream=False answers one dict
            raise TypeError(f"the engine answered {type(stats).__name__} for one stats sample")
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])

    def pid(self) -> int | None:
        """The container's main process (docker-init) as the engine's host sees it; None when it has none
        (not running). On a remote engine it is that machine's PID, not this one's."""
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return None
        pid = (self.container.attrs.get("State") or {}).get("Pid")
        return int(pid) if pid else None

    def exited(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return True
        return self.container.status in ("exited", "dead")

    def send_stdin(self, text: str) -> None:
        """Writes text to the container's stdin (it was started with stdin open)."""
        sock = self.container.attach_socket(params={"stdin": 1, "stream": 1})
        raw = cast(socket.socket, getattr(sock, "_sock", sock))  # the SDK wraps the socket of a unix or tcp engine
        try:
            raw.sendall(text.encode())
        finally:
            raw.close()

    def output_tail(self, lines: int = 5) -> str:
        return " | ".join(x for x in self.log[-lines:] if x.strip())


@dataclass
class Exec:
    """A program run in a running container beside its own (docker exec), its output read in a background
    thread; pid: its PID in the container, once its first line (EXEC_PID_MARK) has come."""

    managed: Managed
    exec_id: str
    command: list[str]
    log: list[str] = field(default_factory=list)
    pid: int | None = None
    started: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def read(self, stream: Iterable[bytes]) -> None:
        buffer = b""
        try:
            for chunk in stream:
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._line(line.decode(errors="replace"))
        except (docker.errors.DockerException, OSError, ValueError):
            pass
        if buffer:
            self._line(buffer.decode(errors="replace"))
        self.started.set()

    def _line(self, text: str) -> None:
        if self.pid is None and text.startswith(EXEC_PID_MARK + " "):
            self.pid = int(text.split()[1])
            self.started.set()
        else:
            self.log.append(text)

    def output(self, timeout: float = OUTPUT_END_TIMEOUT_S) -> str:
        """Everything the program printed once it has ended (at most timeout seconds from now)."""
        if self.reader:
            self.reader.join(timeout)
        return "\n".join(self.log) + "\n"


class Containers:
    """Starts the containers of one run and removes every one of them at the end, whatever happens."""

    def __init__(self, client: docker.DockerClient, run_id: str, fd_limit: int, run_dir: Path | None = None):
        self.client = client
        self.run_id = run_id
        self.fd_limit = fd_limit
        harness = {**process.this_process(), "hostname": socket.gethostname()}
        self.labels = {LABEL_RUN: run_id, LABEL_HARNESS: json.dumps(harness)}
        if run_dir is not None:
            self.labels[LABEL_RUN_DIR] = os.path.abspath(run_dir)

    def run(self, image: str, service: Service) -> Managed:
        """Starts service from image: host network, its cpuset, the host's fd limit, this run's labels, and
        the seccomp profile the service names (seccomp.security_opt)."""
        container = self.client.containers.run(
            image, list(service.command), detach=True, network_mode="host", cpuset_cpus=service.cpuset,
            security_opt=seccomp.security_opt(service.seccomp),
            ulimits=[docker.types.Ulimit(name="nofile", soft=self.fd_limit, hard=self.fd_limit)],
            labels={**self.labels, LABEL_ROLE: service.role}, stdin_open=service.stdin, init=True,
            name=f"epollbench-{self.run_id[:15].lower()}-{service.role}-{time.monotonic_ns() % 10**9}")
        managed = Managed(container=container, role=service.role, cpuset=service.cpuset,
                          command=list(service.command))
        managed.start_reader()
        return managed

    def exec(self, managed: Managed, command: list[str] | tuple[str, ...]) -> Exec:
        """Runs command in managed's container, beside its own program (same cgroup, cpuset and limits),
        through a shell that prints its PID first (Exec.pid) and then becomes the command."""
        wrapped = ["sh", "-c", f'echo "{EXEC_PID_MARK} $$"; exec "$@"', "sh", *command]
        exec_id = self.client.api.exec_create(managed.container.id, wrapped, stdout=True, stderr=True)["Id"]
        running = Exec(managed, exec_id, list(command))
        stream = self.client.api.exec_start(exec_id, stream=True)
        running.reader = threading.Thread(target=running.read, args=(stream,), daemon=True,
                                          name=f"exec-{managed.role}")
        running.reader.start()
        return running

    def signal_exec(self, running: Exec, name: str = "INT", timeout: float = OUTPUT_END_TIMEOUT_S) -> bool:
        """Sends the program run with exec() a signal (by name, without SIG) and returns at once: directly
        where the engine's PID for it is a process of this machine in the container's cgroup, else through
        another exec of the shell's kill. False when the program never said its PID or has ended."""
        if not running.started.wait(timeout) or running.pid is None:
            return False
        if running.reader is not None and not running.reader.is_alive():
            return False
        host_pid = self._host_pid(running)
        if host_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(host_pid, getattr(signal, f"SIG{name}"))
            return True
        kill = self.client.api.exec_create(running.managed.container.id, ["sh", "-c", f"kill -{name} {running.pid}"])
        self.client.api.exec_start(kill["Id"], detach=True)
        return True

    def _host_pid(self, running: Exec) -> int | None:
        """The engine's PID for the program run with exec(), when it is a process here in the container's
        cgroup (a local engine in this machine's PID namespace); None otherwise."""
        pid = int(self.client.api.exec_inspect(running.exec_id).get("Pid") or 0)
        return pid if local_process(pid, str(running.managed.container.id)) else None

    def exec_code(self, running: Exec) -> int | None:
        """The exit code of the program run with exec(), None while it runs (or when the engine cannot say)."""
        try:
            code = self.client.api.exec_inspect(running.exec_id).get("ExitCode")
        except docker.errors.DockerException:
            return None
        return None if code is None else int(code)

    def finish(self, managed: Managed, timeout: float) -> int | None:
        """Waits for the container to exit by itself; its exit code, or None when it had to be killed."""
        try:
            return int(managed.container.wait(timeout=timeout)["StatusCode"])
        except (docker.errors.DockerException, OSError, ValueError):
            self.remove(managed)
            return None

    def run_to_end(self, image: str, service: Service, timeout: float,
                   fetch: Callable[[Managed], None] | None = None) -> tuple[Managed, str, int | None]:
        """Runs service until it exits by itself (killed after timeout): the container, all it printed, and
        its exit code (None when it had to be killed). fetch, when given, is called with the container once it
        has exited 0, before it is removed: to copy a file out (read_file); what it raises goes through. The
        container is removed."""
        managed = self.run(image, service)
        try:
            code = self.finish(managed, timeout)
            if fetch is not None and code == 0:
                fetch(managed)
            return managed, managed.output(), code
        finally:
            self.remove(managed)

    def read_file(self, managed: Managed, path: str, limit: int = FETCH_LIMIT) -> bytes:
        """The bytes of the regular file at path in the container (running or exited), through the engine (a
        local, remote or guest engine alike); FileNotFoundError when there is none, ValueError when it is not
        a regular file or is larger than limit bytes."""
        try:
            stream, stat = managed.container.get_archive(path)
        except docker.errors.NotFound:
            raise FileNotFoundError(f"no {path} in the {managed.role} container") from None
        size = int((stat or {}).get("size", 0))
        if size > limit:
            raise ValueError(f"{path} in the {managed.role} container is {size} bytes, over {limit}")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            found = tar.extractfile(member) if member is not None and member.isfile() else None
            if found is None:
                raise ValueError(f"{path} in the {managed.role} container is not a regular file")
            return found.read()

    def stop(self, managed: Managed, timeout: float = 10) -> int | None:
        """SIGTERM, wait for a clean exit (the programs print their final stats then)."""
        with contextlib.suppress(docker.errors.APIError):
            managed.container.kill(signal="SIGTERM")
        return self.finish(managed, timeout)

    def remove(self, managed: Managed) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            managed.container.remove(force=True)

    def ids(self) -> list[str]:
        """The full IDs of this run's containers on this engine, running or not."""
        mine: dict[str, str | list[str] | bool] = {"label": f"{LABEL_RUN}={self.run_id}"}
        return [str(c.id) for c in self.client.containers.list(all=True, filters=mine)]

    def remove_all(self) -> int:
        """Removes every container labelled with this run (also ones a crash left behind)."""
        removed = 0
        mine: dict[str, str | list[str] | bool] = {"label": f"{LABEL_RUN}={self.run_id}"}
        for container in self.client.containers.list(all=True, filters=mine):
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
        return removed

