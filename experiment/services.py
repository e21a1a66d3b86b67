"""The containers of a point, defined once: the sweep runner starts them, compose/ files are made from them."""

from __future__ import annotations

from dataclasses import dataclass

from . import httperf

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    role: str          # server, deadconn, httperf, pipetest
    target: str        # the image target: server or client
    command: tuple[str, ...]
    cpuset: str
    stdin: bool = False
    # How a server says it is ready: "json", its {"event":"listening"} line on stdout (ephttpd, pyhttpd);
    # "tcp", a connection to its port succeeds (nginx, a server brought by the user).
    readiness: str = "json"
    # Whether it prints {"event":"snapshot"} counters on SIGUSR1; without, its cgroup's CPU time is all.
    stats: bool = True
    # An image to run instead of the target's (a server brought by the user).
    image: str | None = None


def server(backend: str, port: int | str, msgsize: int | str, cpuset: str, bind: str = LOOPBACK) -> Service:
    return Service("server", "server", ("ephttpd", "--backend", backend, "--bind", bind, "--port", str(port),
                                        "--msgsize", str(msgsize)), cpuset)


def deadconn(port: int | str, connections: int | str, step_timeout_s: int, cpuset: str) -> Service:
    """deadconn reads `grow N` commands on stdin, so a sweep ramps without reconnecting."""
    return Service("deadconn", "client", ("deadconn", "--host", LOOPBACK, "--port", str(port),
                                          "-n", str(connections), "--timeout", str(step_timeout_s)),
                   cpuset, stdin=True)


def active_load(load: httperf.ActiveLoad, cpuset: str) -> Service:
    return Service("httperf", "client", tuple(httperf.command(load)), cpuset)


def pipetest(backend: str, pipes: int, generations: int, max_seconds: int, cpuset: str) -> Service:
    return Service("pipetest", "server", ("pipetest", "--backend", backend, "--pipes", str(pipes),
                                          "--tokens", "1", "--generations", str(generations),
                                          "--max-seconds", str(max_seconds)), cpuset)
