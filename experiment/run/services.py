"""The containers of a point, defined once: the sweep runner starts them, compose/ files are made from them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from . import loads, seccomp

LOOPBACK = "127.0.0.1"
WRK_CPU_MARK = "epollbench-client-cpu"


@dataclass(frozen=True)
class Service:
    role: str          # server, deadconn, httperf, wrk, openload, pipetest
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
    # The seccomp profile it runs under (seccomp.py): None, the engine's default.
    seccomp: str | None = None


def server(backend: str, port: int | str, msgsize: int | str, cpuset: str, bind: str = LOOPBACK,
           dead_holders: int = 0, dead_port: int | str = 0) -> Service:
    """ephttpd. dead_holders > 0: that many processes hold the dead connections, which deadconn then opens to
    dead_port (0: a free one, named in the listening line), in the server's epoll set (epoll, epoll-et only;
    images/ephttpd/holders.c)."""
    holders = ("--dead-holders", str(dead_holders), "--dead-port", str(dead_port)) if dead_holders else ()
    return Service("server", "server", ("ephttpd", "--backend", backend, "--bind", bind, "--port", str(port),
                                        "--msgsize", str(msgsize), *holders), cpuset, seccomp=seccomp.profile_name())


def deadconn(port: int | str, connections: int | str, step_timeout_s: int, cpuset: str, host: str = LOOPBACK,
             source: str | None = None) -> Service:
    """deadconn reads `grow N` commands on stdin, so a sweep ramps without reconnecting. source: the one
    address to connect from, for a server beyond loopback (deadconn's default sources are 127.0.0.2...)."""
    sources = ("--source-base", source, "--sources", "1") if source else ()
    return Service("deadconn", "client", ("deadconn", "--host", host, "--port", str(port), *sources,
                                          "-n", str(connections), "--timeout", str(step_timeout_s)),
                   cpuset, stdin=True)


def wrk(url: str, connections: int, duration_s: float, cpuset: str) -> Service:
    """wrk, one thread, then one line with the CPU time it used, which it does not print itself: the shell's
    cutime and cstime (clock ticks) once wrk has exited and been reaped, and wrk's exit status."""
    script = (f"{shlex.join(loads.wrk_command(url, connections, 1, duration_s))}; status=$?; "
              f'echo "{WRK_CPU_MARK} $(cut -d" " -f16,17 /proc/$$/stat) $status"; exit $status')
    return Service("wrk", "client", ("sh", "-c", script), cpuset)


def wrk_alone(url: str, connections: int, duration_s: float, cpuset: str) -> Service:
    """wrk, one thread, alone: a signal sent to it reaches it (wrk prints its summary on SIGINT), but nothing
    reports its CPU time."""
    return Service("wrk", "client", tuple(loads.wrk_command(url, connections, 1, duration_s)), cpuset)


def active_load(load: loads.ActiveLoad, cpuset: str) -> Service:
    return Service("httperf", "client", tuple(loads.command(load)), cpuset)


def pipetest(backend: str, pipes: int, generations: int, max_seconds: int, cpuset: str,
             walk: str = "stay") -> Service:
    """walk: stay (each token keeps its pipe) or stride (the 2002 walk); pipetest's JSON records it."""
    return Service("pipetest", "server", ("pipetest", "--backend", backend, "--pipes", str(pipes),
                                          "--tokens", "1", "--generations", str(generations),
                                          "--max-seconds", str(max_seconds), "--walk", walk), cpuset)


def openload(load: loads.OpenLoad, cpuset: str) -> Service:
    """openload (the client image's open-loop generator): one JSON object on stdout when it is done, at most
    load.bound_s seconds after it starts."""
    return Service("openload", "client", tuple(loads.open_command(load)), cpuset)
