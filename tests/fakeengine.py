"""A stand-in for the Docker engine at the level the sweeps use it (containers.Containers), so that the dead
sweep's orchestration is tested without containers: what it starts, in which order, what it records, and
how it fails. The programs are scripted: a server that says it listens and prints counters on SIGUSR1,
deadconn that holds what it is told to grow to (or fails at a level), and httperf, wrk and openload that print
real captured outputs (tests/data/httperf); openload's can be changed per level of dead connections held. A
server started with --dead-holders names a dead-connection port of its own and counts, as ephttpd does, the
dead connections made to that port under "dead_holders" alone, and those made to its own port as its own."""

from __future__ import annotations

import itertools
import json
import queue
from dataclasses import dataclass, field
from pathlib import Path

from experiment.host import checks
from experiment.run.containers import Managed
from experiment.run.services import Service

CAPTURED = Path(__file__).parent / "data" / "httperf"
HTTPERF_OUTPUT = (CAPTURED / "epoll-2500calls.txt").read_text()
WRK_OUTPUT = (CAPTURED / "wrk-epoll.txt").read_text()
OPENLOAD_OUTPUT = (CAPTURED / "openload-epoll.txt").read_text()
_ids = itertools.count(1)


def without_quiet_window(monkeypatch) -> None:
    """Each point's hygiene checks taken without their half a second of the host's CPU counters before the load
    (host/checks.py, measured in test_checks.py and by every real run): on the fake engine it measures nothing."""
    take = checks.PointChecks.take
    monkeypatch.setattr(checks.PointChecks, "take", staticmethod(
        lambda cpus=None, container_ids=None, window_s=0.0: take(cpus, container_ids, 0.0)))


@dataclass
class Script:
    """How the fake programs behave."""

    server_starts: bool = True
    names_dead_port: bool = True  # a server started with --dead-holders names its holders' port when listening
    server_exits_at_level: int | None = None  # the server exits once deadconn holds this many
    deadconn_starts: bool = True
    deadconn_fails_at: int | None = None  # deadconn cannot open more than this many
    deadconn_silent_at: int | None = None  # deadconn says nothing when told to grow past this many
    httperf_output: str = HTTPERF_OUTPUT
    holders_short_by: int = 0  # the holders have this many fewer than deadconn connected
    wrk_output: str = WRK_OUTPUT
    openload_output: str = OPENLOAD_OUTPUT
    # openload's JSON changed at a level: {dead held: {key: value}} (nested keys as "latency_us/p99.9")
    openload_at: dict[int, dict] = field(default_factory=dict)
    openload_exit: int = 0

    def client_output(self, role: str, held: int) -> str:
        """What a load generator's container prints, with deadconn holding `held` dead connections."""
        if role == "wrk":
            return self.wrk_output
        if role != "openload":
            return self.httperf_output
        if not self.openload_at:
            return self.openload_output
        data = json.loads(self.openload_output)
        for key, value in self.openload_at.get(held, {}).items():
            *path, last = key.split("/")
            where = data
            for part in path:
                where = where[part]
            where[last] = value
        return json.dumps(data) + "\n"


@dataclass
class FakeContainer:
    id: str
    owner: FakeManaged
    attrs: dict = field(default_factory=lambda: {"Image": "sha256:fake"})

    def kill(self, signal: str = "SIGKILL") -> None:
        self.owner.signalled(signal)


class FakeManaged(Managed):
    """A Managed whose output is scripted instead of read from an engine's log stream."""

    def __init__(self, service: Service, script: Script, events: list, shared: dict | None = None):
        super().__init__(container=None, role=service.role, cpuset=service.cpuset,  # type: ignore[arg-type]
                         command=list(service.command))
        self.container = FakeContainer(f"{next(_ids):012x}fake", self)  # type: ignore[assignment]
        self.service, self.script, self.events = service, script, events
        self.shared = {} if shared is None else shared
        self.held, self.stopped, self.cpu = 0, False, 0
        self.replies = 0

    def option(self, name: str) -> int | None:
        command = list(self.service.command)
        return int(command[command.index(name) + 1]) if name in command else None

    def dead_port(self) -> int | None:
        """A server with holders: the port they listen on (its own plus one)."""
        holders, port = self.option("--dead-holders"), self.option("--port")
        return port + 1 if holders and port is not None else None

    def dead_to(self, port: int | None) -> int:
        """The dead connections deadconn holds to that port."""
        deadconn = self.shared.get("deadconn")
        return deadconn.held if deadconn and port is not None and deadconn.option("--port") == port else 0

    def say(self, event: dict) -> None:
        line = json.dumps(event)
        self.log.append(line)
        self.lines.put(line)

    def end(self) -> None:
        self.stopped = True
        self.lines.put(None)

    def signalled(self, signal: str) -> None:
        self.events.append(("signal", self.role, signal))
        if self.role == "server" and signal == "SIGUSR1" and not self.stopped:
            self.replies += 1000
            snapshot = {"event": "snapshot", "responses_200": self.replies,
                        "open": self.dead_to(self.option("--port"))}
            holders = self.option("--dead-holders")
            if holders:
                held = max(0, self.dead_to(self.dead_port()) - self.script.holders_short_by)
                snapshot["dead_holders"] = {"holders": holders, "alive": holders, "port": self.dead_port(),
                                            "interest_set": held + 2, "open": held, "lost": 0}
            self.say(snapshot)

    def next_json(self, events: tuple[str, ...], timeout: float) -> dict | None:
        try:
            while True:
                line = self.lines.get_nowait()
                if line is None:
                    self.lines.put(None)
                    return None
                data = json.loads(line)
                if data.get("event") in events:
                    return data
        except queue.Empty:
            return None

    def send_stdin(self, text: str) -> None:
        self.events.append(("stdin", self.role, text.strip()))
        grow = int(text.split()[1])
        wanted = self.held + grow
        silent = self.script.deadconn_silent_at
        if silent is not None and wanted > silent:
            self.log.append("deadconn: still connecting")
            return
        limit = self.script.deadconn_fails_at
        if limit is not None and wanted > limit:
            self.held = limit
            self.say({"event": "failed", "held": limit, "reason": "connect: Cannot assign requested address"})
            return
        self.held = wanted
        self.say({"event": "ready", "held": self.held})

    def cpu_ns(self) -> int:
        self.cpu += 2_000_000_000
        return self.cpu

    def exited(self) -> bool:
        return self.stopped

    def pid(self) -> int | None:
        return None  # a scripted program has no process on this machine

    def output(self, timeout: float = 0) -> str:
        return "\n".join(self.log) + "\n"


@dataclass
class FakeExec:
    """What FakeContainers.exec ran: in whose container, and what it prints."""

    role: str
    printed: str

    def output(self, timeout: float = 0) -> str:
        return self.printed


class FakeContainers:
    """containers.Containers' interface over scripted programs; `events` records what was done, in order."""

    def __init__(self, script: Script, events: list, deadconn_of: dict):
        self.script, self.events = script, events
        self.running: list[FakeManaged] = []
        self.deadconn_of = deadconn_of  # shared by both runners: the server exits at a level deadconn holds

    def run(self, image: str, service: Service) -> FakeManaged:
        managed = FakeManaged(service, self.script, self.events, self.deadconn_of)
        self.events.append(("run", service.role, tuple(service.command)))
        self.running.append(managed)
        if service.role == "server":
            if self.script.server_starts:
                port = int(service.command[service.command.index("--port") + 1])
                listening = {"event": "listening", "port": port}
                if managed.dead_port() and self.script.names_dead_port:
                    listening.update(dead_holders=managed.option("--dead-holders"), dead_port=managed.dead_port())
                managed.say(listening)
            else:
                managed.log.append("ephttpd: io_uring: io_uring_setup: Operation not permitted")
                managed.end()
            self.deadconn_of["server"] = managed
        elif service.role == "deadconn" and not self.script.deadconn_starts:
            managed.log.append("deadconn: socket: Too many open files")
            managed.say({"event": "failed", "held": 0, "reason": "socket: Too many open files"})
        elif service.role == "deadconn":
            managed.say({"event": "ready", "held": 0})
            self.deadconn_of["deadconn"] = managed
        return managed

    def run_to_end(self, image: str, service: Service, timeout: float,
                   fetch=None) -> tuple[FakeManaged, str, int | None]:
        if fetch is not None:
            raise NotImplementedError("the fake engine has no files to fetch: a point with a capture needs a real one")
        managed = self.run(image, service)
        server, deadconn = self.deadconn_of.get("server"), self.deadconn_of.get("deadconn")
        level = self.script.server_exits_at_level
        if server and deadconn and level is not None and deadconn.held >= level:
            server.log.append("ephttpd: out of memory")
            server.end()
        if service.role == "pipetest":  # pipetest's JSON line, with the walk and pipes it was given
            command = service.command
            walk, pipes = command[command.index("--walk") + 1], managed.option("--pipes")
            managed.log.append(json.dumps({"backend": command[command.index("--backend") + 1], "walk": walk,
                                           "pipes": pipes, "passes_per_s": 1e6, "elapsed_s": 2.0,
                                           "events_per_wait": 1.0, "pipes_visited": pipes if walk == "stride" else 1,
                                           "visits_min": 0, "visits_max": 9}))
        else:
            managed.log.append(self.script.client_output(service.role, deadconn.held if deadconn else 0))
        managed.end()
        self.remove(managed)
        return managed, managed.output(), self.script.openload_exit if service.role == "openload" else 0

    def exec(self, managed: FakeManaged, command: list[str] | tuple[str, ...]) -> FakeExec:
        """A load run beside the container's program: it prints the captured output of its kind."""
        self.events.append(("exec", managed.role, tuple(command)))
        deadconn = self.deadconn_of.get("deadconn")
        return FakeExec(managed.role, self.script.client_output(command[0], deadconn.held if deadconn else 0))

    def signal_exec(self, running: FakeExec, signal: str = "INT", timeout: float = 0) -> bool:
        self.events.append(("signal exec", running.role, signal))
        return True

    def exec_code(self, running: FakeExec) -> int | None:
        return 0

    def finish(self, managed: FakeManaged, timeout: float) -> int | None:
        return 0

    def stop(self, managed: FakeManaged, timeout: float = 10) -> int | None:
        self.events.append(("stop", managed.role))
        managed.end()
        return 0

    def remove(self, managed: FakeManaged) -> None:
        if managed in self.running:
            self.running.remove(managed)
            self.events.append(("remove", managed.role))

    def ids(self) -> list[str]:
        return []

    def remove_all(self) -> int:
        left = len(self.running)
        self.running.clear()
        return left
