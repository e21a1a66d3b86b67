"""The servers a dead-connection sweep can put under test, and how each is started and found ready.

ephttpd is the study's server, in C, on every backend of images/ev. pyhttpd (images/pyhttpd) is the same
server in Python on the standard library's selectors (select, poll, epoll) or asyncio: what a Python user
gets. nginx is Debian's nginx-light, configured to behave like ephttpd where the measurement depends on it
(see nginx_conf). A server of the user's own is an image, a command and the port it listens on.

ephttpd and pyhttpd print a JSON "listening" line when ready and "snapshot" counters on SIGUSR1; nginx and
a server of the user's own print nothing we can read: they are ready once a TCP connection to their port
succeeds, and their CPU time comes from their container's cgroup alone.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .. import catalog
from ..catalog import CUSTOM, EPHTTPD, NGINX, PYTHON
from ..errors import UserError
from . import seccomp, services
from .containers import Managed
from .services import LOOPBACK, Service

# nginx reads `return 200 "..."` as one token, and its configuration reader refuses a token that fills
# its 4096-byte buffer (NGX_CONF_BUFFER): the body sizes it can serve from its configuration.
NGINX_MAX_MSGSIZE = 4000
# How long nginx waits on an idle keep-alive connection, on a request head that never ends (a dead
# connection), on a client that does not read, and how long it keeps a keep-alive connection at all: longer
# than any run, so that it closes no connection a sweep holds. Below 2^31 ms: nginx passes its next timer
# to epoll_wait(2) as an int of milliseconds.
NGINX_TIMEOUT = "7d"
NGINX_KEEPALIVE_REQUESTS = 1_000_000_000  # the default, 1000, would end httperf's 2500-call connections
NGINX_CONF_PATH = "/tmp/nginx.conf"
OUTPUT_DRAIN_S = 2  # how long an exited server's last output may take to come through the engine


@dataclass(frozen=True)
class Choice:
    """A server a run puts under test: one of --server, or --server-image/--server-cmd/--server-port."""

    kind: str = EPHTTPD
    image: str | None = None
    command: str | None = None
    port: int | None = None

    @property
    def backends(self) -> tuple[str, ...]:
        return catalog.SERVERS[self.kind].backends

    def check_backends(self, backends: tuple[str, ...]) -> None:
        """UserError naming the valid ones when a backend is one this server does not have."""
        wrong = [b for b in backends if b not in self.backends]
        if wrong:
            raise UserError(f"the {self.kind} server has no backend {', '.join(wrong)}: use --backends "
                            f"{','.join(self.backends)}")

    def service(self, backend: str, port: int, msgsize: int, cpuset: str, fd_limit: int,
                bind: str = LOOPBACK, dead_holders: int = 0) -> Service:
        """The server container's Service. port is the one to listen on (a custom server's own port).
        dead_holders: ephttpd's helper processes for the dead connections (plan.dead_holders)."""
        self.check_backends((backend,))
        kind = catalog.SERVERS[self.kind]
        command: tuple[str, ...]
        if dead_holders and self.kind != EPHTTPD:
            raise ValueError(f"the {self.kind} server has no dead-connection holders")
        if self.kind == EPHTTPD:
            return services.server(backend, port, msgsize, cpuset, bind, dead_holders=dead_holders)
        if self.kind == PYTHON:
            command = ("pyhttpd", "--backend", backend, "--bind", bind, "--port", str(port), "--msgsize",
                       str(msgsize))
        elif self.kind == NGINX:
            command = ("sh", "-c", nginx_script(nginx_conf(port, msgsize, fd_limit, bind)))
        else:
            # {port}, {msgsize} and {bind} are filled in after splitting: a value never becomes two words.
            values = {"{port}": str(port), "{msgsize}": str(msgsize), "{bind}": bind}
            command = tuple(_fill(word, values) for word in shlex.split(self.command))
        return Service("server", "server", command, cpuset, readiness=kind.readiness, stats=kind.stats,
                       image=self.image, seccomp=seccomp.profile_name())


def _fill(word: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        word = word.replace(placeholder, value)
    return word


def choose(server: str | None = None, image: str | None = None, command: str | None = None,
           port: int | str | None = None) -> tuple[Choice, ...]:
    """The servers of `invoke reproduce`'s --server (a comma list), --server-image, --server-cmd and
    --server-port: ephttpd when none is named; a server of one's own alone, or as `custom` in the list."""
    kinds = tuple(dict.fromkeys(x.strip() for x in (server or "").split(",") if x.strip()))
    unknown = [k for k in kinds if k not in catalog.SERVERS]
    if unknown:
        raise UserError(f"--server {server}: unknown {', '.join(unknown)}; use ephttpd, python, nginx or a comma "
                        "list of them, or --server-image, --server-cmd and --server-port for a server of your own")
    own = {"--server-image": image, "--server-cmd": command, "--server-port": port}
    given = [name for name, value in own.items() if value not in (None, "")]
    if given and kinds and CUSTOM not in kinds:
        raise UserError(f"--server {server} and {', '.join(given)} both name the server: give one or the other, "
                        f"or add custom to the list (--server {server},custom) to run yours beside it")
    if not kinds:
        kinds = (CUSTOM,) if given else (EPHTTPD,)
    if CUSTOM not in kinds:
        return tuple(Choice(kind) for kind in kinds)
    missing = [name for name in own if name not in given]
    if missing:
        raise UserError(f"a server of your own needs --server-image, --server-cmd and --server-port: "
                        f"add {', '.join(missing)}")
    try:
        port_number = int(str(port))
    except ValueError:
        port_number = 0
    if not 0 < port_number < 65536:
        raise UserError(f"--server-port {own['--server-port']}: use the TCP port (1-65535) the server listens on")
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise UserError(f"--server-cmd {command!r}: {error}; quote it as a shell would") from None
    if not words:
        raise UserError("--server-cmd is empty: give the command that starts the server in the image")
    return tuple(Choice(CUSTOM, image=image, command=command, port=port_number) if kind == CUSTOM else Choice(kind)
                 for kind in kinds)


def nginx_conf(port: int, msgsize: int, fd_limit: int, bind: str = LOOPBACK, pid_path: str = "/tmp/nginx.pid",
               timeout: str = NGINX_TIMEOUT) -> str:
    """nginx.conf for one server under test: one worker on epoll answering every request with 200 and
    msgsize bytes from its configuration, holding every connection as long as its client does.

    master_process stays on with one worker: the production arrangement, and the one in which
    worker_rlimit_nofile applies (nginx without a master never sets it). The master only sleeps while the
    worker serves; both are in the container's cgroup. nginx's epoll is edge-triggered (EPOLLET). nginx warns
    on stderr that worker_connections exceed the open-file limit: see nginx_connections."""
    if not 0 <= msgsize <= NGINX_MAX_MSGSIZE:
        raise UserError(f"nginx serves its body from its configuration: at most {NGINX_MAX_MSGSIZE} bytes "
                        f"(got --msgsize {msgsize})")
    listen = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
    return f"""\
# nginx as a server under test (epollbench, experiment/run/servers.py)
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fd_limit};
pid {pid_path};
error_log stderr warn;

events {{
    use epoll;
    worker_connections {nginx_connections(fd_limit)};
    multi_accept on;  # accept until the queue is empty, as ephttpd and pyhttpd
}}

http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_requests {NGINX_KEEPALIVE_REQUESTS};
    keepalive_timeout {timeout};
    keepalive_time {timeout};
    client_header_timeout {timeout};
    client_body_timeout {timeout};
    send_timeout {timeout};

    server {{
        listen {listen} backlog={catalog.LISTEN_BACKLOG};
        location / {{
            return 200 "{'x' * msgsize}";
        }}
    }}
}}
"""


def nginx_connections(fd_limit: int) -> int:
    """worker_connections for a worker that may hold fd_limit descriptors: more, by a sixteenth.

    nginx starts closing idle connections of its own ("worker_connections are not enough, reusing
    connections") once fewer than a sixteenth of worker_connections are free; with worker_connections at
    the fd limit it reset dead connections at 19,448 of 19,500. With this many, the fd limit is reached
    first, and nginx only warns that worker_connections exceed it."""
    return fd_limit * 16 // 15 + 16


def nginx_script(conf: str) -> str:
    """The server container's shell command: write conf where nginx reads it, then become nginx. The
    configuration is in the command itself, so that a point's recorded command says how nginx ran; it is
    quoted without a `$`, which compose files would take for a variable."""
    if "'" in conf or "$" in conf:
        raise ValueError("an nginx configuration with ' or $ cannot be passed in the container's command")
    return f"printf %s {shlex.quote(conf)} > {NGINX_CONF_PATH} && exec nginx -c {NGINX_CONF_PATH}"


def refuse_taken_ports(choices: Iterable[Choice], address: str) -> None:
    """UserError when something already answers on the port of a server of the user's own, before the run:
    its connection would be taken for that server's readiness, and the load would measure something else."""
    for choice in choices:
        if choice.port and tcp_connects(address, choice.port):
            raise UserError(f"something already answers on {address}:{choice.port}, the --server-port of your "
                            "server: stop it, or give your server another port")


def tcp_connects(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(server: Managed, service: Service, address: str, port: int, timeout: float) -> dict | None:
    """The server's listening line, or for a "tcp" server one made up once its port accepts a connection;
    None when it exits or time runs out first. Check beforehand that nothing else listens on the port: a
    connection to that would be taken for readiness."""
    if service.readiness == "json":
        return server.next_json(("listening",), timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connected = tcp_connects(address, port)
        if server.exited():
            server.next_json((), OUTPUT_DRAIN_S)  # until its output ends, so that output_tail() has it all
            return None
        if connected:
            return {"event": "listening", "bind": address, "port": port, "readiness": "tcp"}
        time.sleep(0.1)
    return None
