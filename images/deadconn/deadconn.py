#!/usr/bin/env python3
"""deadconn - the dead-connection client of epollbench, our version of deadconn from the 2002 Linux epoll
scalability study.

What it does: opens TCP connections to an HTTP server and holds them.  In the default "dead" mode each
connection sends "GET / HTTP/1.0\\r\\n" and never the blank line that would end the request head, as the
original deadconn did: the server accepts the connection, reads from it, must go on watching it, and never
gets a request to answer.  That idle watched set is the load under which the study measured event
notification.  "complete" mode instead sends one whole keep-alive GET, reads the reply (head and
Content-Length body) and then idles: connections the server has served once.

The model: the parent process reads commands (stdin and an optional FIFO) and forks workers; a worker holds
at most --per-worker connections, by default the descriptor limit less a reserve, so that the count can
pass the per-process limit.  A step ("grow N") gives the workers equal shares of its N new connections,
none past its limit, and forks workers until no share is larger than N over the CPUs we may run on, so
that all those CPUs open in parallel.  Each connection binds a source address (127.0.0.2, 127.0.0.3, ...;
127.0.0.1 is left to the active load) with IP_BIND_ADDRESS_NO_PORT, which leaves the port choice to
connect(): ports are then unique per (source, destination) pair, not per host.  connect() tries ports of
one parity first, and once that half of ip_local_port_range is in use it scans the whole half for every
new connection, so by default a source address takes at most PORT_SHARE of the range and sources are added
as the count grows.  A connection is
opened without blocking: socket, bind, connect and send of the request back to back; on loopback the
handshake is over when connect() returns, and one still shaking hands (the server's accept queue was full)
is finished from epoll.  Connections are never retried: a step that cannot reach its target fails, and
deadconn closes everything and exits.

The metric: after each step one "ready" line with the connections held, the wall time of the step from
the parent's dispatch to the last worker's answer (forking new workers is not in it) and opened/seconds.
After each step and on "status" every worker checks that its connections are still open (a peer close or
reset shows as POLLRDHUP/POLLHUP); one the server has closed is dropped and counted under failures.reset.
The rate is the kernel's more than ours: on loopback the client's system calls also run the server's
side of the handshake, and netfilter connection tracking, when loaded, adds its own work.  Where it is
loaded, "conntrack_drops" counts the packets it dropped in the step for want of a table entry (anyone's,
in our network namespace): dropped SYNs are retried after 1, 3, 7... s, so the step is slow or fails.

What it does not measure: anything about the server (read its own stats), or closes by the server after
the last check: "held" counts the connections that were open at the last check.
"""

from __future__ import annotations

import _socket
import argparse
import contextlib
import errno
import ipaddress
import json
import math
import os
import select
import selectors
import signal
import socket
import stat
import sys
import time
import traceback

# fdlimit.py, shared with pyhttpd: beside this program in the image (/usr/local/bin), in images/pylib/ in the
# source tree.
sys.path.append(os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "pylib"))
import fdlimit  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_CONNECTIONS = 0
DEFAULT_MODE = "dead"
DEFAULT_SOURCE_BASE = "127.0.0.2"
DEFAULT_TIMEOUT_S = 60.0

DEAD_REQUEST = b"GET / HTTP/1.0\r\n"  # no blank line: the request never ends
FD_RESERVE = 64                       # descriptors a worker keeps for stdio, its channel and its epoll
PORT_SHARE = 0.4                      # of ip_local_port_range one source address may use to one destination
DEFAULT_PORT_RANGE = (32768, 60999)   # Linux's default, when /proc does not say
MAX_TARGET = 1_000_000                # far past the study's 60,000: a typo, not an experiment
MAX_WORKERS = 256
IN_FLIGHT_PER_WORKER = 512            # connections a worker has shaking hands or awaiting a reply at once
FAILURES_TO_DIAGNOSE = 32             # a worker stops opening after this many failures in a step
BATCH = 64                            # connections opened between two looks at the clock
ANSWER_GRACE_S = 10.0                 # how much longer than --timeout the parent waits for a worker
CLOSE_WAIT_S = 30.0                   # how long the parent waits for workers to close and exit
CONNTRACK_STATS = "/proc/net/stat/nf_conntrack"
REPLY_MAX = 1 << 20                   # a bigger reply head + body in complete mode is a failure

REASONS = ("refused", "ports", "fd-limit", "timeout", "reset", "other")
ERRNO_REASON = {
    errno.ECONNREFUSED: "refused",
    errno.EADDRNOTAVAIL: "ports",     # no free ephemeral port for this source and destination
    errno.EADDRINUSE: "ports",
    errno.EMFILE: "fd-limit",
    errno.ENFILE: "fd-limit",
    errno.ETIMEDOUT: "timeout",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
}
HINTS = {
    "refused": "is a server listening there?",
    "ports": "the source addresses ran out of ephemeral ports: use more --sources",
    "fd-limit": "out of descriptors: lower --per-worker, or the system-wide fs.file-max is reached",
    "timeout": "the server did not complete handshakes or replies within --timeout: is it accepting?",
    "reset": "the server closed or reset connections: is it at its own descriptor limit?",
    "other": "the first such error is in parentheses",
}

# Socket option 24 at SOL_IP since Linux 4.2; older Pythons lack the name.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SOL_IP = getattr(socket, "SOL_IP", 0)


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit 2."""


class Stop(Exception):
    """Raised in a worker by SIGTERM: close everything and exit."""


def empty_failures() -> dict[str, int]:
    return dict.fromkeys(REASONS, 0)


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def water_fill(loads: list[int], capacities: list[float], count: int) -> list[int]:
    """How many of count to add to each load: always to the least loaded, none past its capacity."""
    adds = [0] * len(loads)
    left = count
    while left:
        levels = [load + add for load, add in zip(loads, adds, strict=True)]
        room = [i for i, level in enumerate(levels) if level < capacities[i]]
        if not room:
            raise ValueError(f"{count} more do not fit under {capacities}")
        low = min(levels[i] for i in room)
        lowest = [i for i in room if levels[i] == low]
        ceiling = min([levels[i] for i in room if levels[i] > low] + [capacities[i] for i in lowest])
        rise = min(ceiling - low, left // len(lowest))
        if rise == 0:  # fewer left than lowest loads: one more each for the first ones
            for i in lowest[:left]:
                adds[i] += 1
            break
        for i in lowest:
            adds[i] += rise
        left -= rise * len(lowest)
    return adds


# ---------------------------------------------------------------------------------------------- worker


class ConnectionWorker:
    """A worker process, inside it: holds its connections, opens more and checks them on the parent's commands,
    and answers on its channel to the parent (which sees it through a WorkerHandle)."""

    def __init__(self, channel: socket.socket, destination: tuple[str, int], request: bytes, complete: bool):
        self.channel = channel
        self.destination = destination
        self.request = request
        self.complete = complete
        self.held: list[_socket.socket] = []
        self.epoll = select.epoll()

    def serve(self) -> None:
        """Answer the parent's commands until it closes the channel (or SIGTERM raises Stop)."""
        for line in self.channel.makefile("rb"):
            command = json.loads(line)
            if command["op"] == "open":
                answer = self.open(command["plan"], command["timeout"])
            elif command["op"] == "check":
                answer = self.check()
            else:
                raise ValueError(f"unknown command {command!r}")
            self.channel.sendall(encode(answer))

    def open(self, plan: list[list], timeout: float) -> dict:
        """Open sum(count) connections, count of them from each source address of plan."""
        step = Step(self, time.monotonic() + timeout)
        total = sum(count for _, count in plan)
        attempted = 0
        for source, count in plan:
            while count and step.failed < FAILURES_TO_DIAGNOSE and time.monotonic() < step.deadline:
                batch = min(count, BATCH)
                self._open_batch(step, (source, 0), batch)
                count -= batch
                attempted += batch
        if attempted < total and step.failed < FAILURES_TO_DIAGNOSE:
            step.fail(errno.ETIMEDOUT, "--timeout came before all were tried", total - attempted)
        step.wait(until_below=1)
        return {"reply": "open", "opened": step.opened, "failures": step.failures, "errors": step.errors}

    def _open_batch(self, step: Step, address: tuple[str, int], count: int) -> None:
        # This loop runs once per connection: names are bound locally, the common path raises nothing, and
        # sockets are of the C type under socket.socket, whose __init__ is Python code.
        new_socket = _socket.socket
        family, kind = socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
        destination, request = self.destination, self.request
        in_flight = step.in_flight
        established = step.awaiting_reply if self.complete else self.held.append
        for _ in range(count):
            try:
                sock = new_socket(family, kind)
            except OSError as error:
                if step.fail(error.errno, error.strerror):
                    return
                continue
            try:
                sock.setsockopt(SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind(address)
                code = sock.connect_ex(destination)
                if code and code != errno.EINPROGRESS:
                    sock.close()
                    if step.fail(code, os.strerror(code)):
                        return
                    continue
                sock.send(request)
            except BlockingIOError:  # the handshake is not done: the server's accept queue was full
                step.connecting(sock)
            except OSError as error:
                sock.close()
                if step.fail(error.errno, error.strerror):
                    return
                continue
            else:
                established(sock)
            if len(in_flight) >= IN_FLIGHT_PER_WORKER:
                step.wait(until_below=IN_FLIGHT_PER_WORKER // 2)

    def check(self) -> dict:
        """Drop the connections the server has closed or reset since the last check."""
        poller = select.poll()
        for sock in self.held:
            poller.register(sock.fileno(), select.POLLRDHUP)
        closed = {fd for fd, _ in poller.poll(0)}
        if closed:
            keep = [sock for sock in self.held if sock.fileno() not in closed]
            for sock in self.held:
                if sock.fileno() in closed:
                    sock.close()
            self.held = keep
        return {"reply": "check", "held": len(self.held), "lost": len(closed)}


class Step:
    """The connections of one open command that are not established yet, and what went wrong."""

    def __init__(self, worker: ConnectionWorker, deadline: float):
        self.worker = worker
        self.deadline = deadline
        self.in_flight: dict[int, tuple[_socket.socket, bytearray | None]] = {}  # fd -> (sock, reply so far)
        self.held_before = len(worker.held)
        self.failures = empty_failures()
        self.errors: dict[str, str] = {}  # reason -> the first error of that kind, for the message
        self.failed = 0

    @property
    def opened(self) -> int:
        return len(self.worker.held) - self.held_before

    def fail(self, code: int | None, text: str, count: int = 1) -> bool:
        """Count a failure; True when there have been enough to give up opening more."""
        reason = ERRNO_REASON.get(code, "other")
        self.failures[reason] += count
        self.errors.setdefault(reason, text)
        self.failed += count
        return self.failed >= FAILURES_TO_DIAGNOSE

    def connecting(self, sock: _socket.socket) -> None:
        self.in_flight[sock.fileno()] = (sock, None)
        self.worker.epoll.register(sock.fileno(), select.EPOLLOUT)

    def awaiting_reply(self, sock: _socket.socket) -> None:
        self.in_flight[sock.fileno()] = (sock, bytearray())
        self.worker.epoll.register(sock.fileno(), select.EPOLLIN)

    def wait(self, until_below: int) -> None:
        """Finish handshakes and read replies until fewer than until_below are in flight, or time is up."""
        epoll = self.worker.epoll
        while len(self.in_flight) >= until_below:
            left = self.deadline - time.monotonic()
            if left <= 0:
                for fd, (sock, _) in list(self.in_flight.items()):
                    self._drop(fd, sock, errno.ETIMEDOUT, "no handshake or reply within --timeout")
                return
            for fd, _events in epoll.poll(left):
                sock, reply = self.in_flight[fd]
                if reply is None:
                    self._handshake_done(fd, sock)
                else:
                    self._read_reply(fd, sock, reply)

    def _drop(self, fd: int, sock: _socket.socket, code: int | None, text: str) -> None:
        self.worker.epoll.unregister(fd)
        del self.in_flight[fd]
        sock.close()
        self.fail(code, text)

    def _established(self, fd: int, sock: _socket.socket) -> None:
        self.worker.epoll.unregister(fd)
        del self.in_flight[fd]
        self.worker.held.append(sock)

    def _handshake_done(self, fd: int, sock: _socket.socket) -> None:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(fd, sock, code, os.strerror(code))
            return
        try:
            sock.send(self.worker.request)
        except OSError as error:
            self._drop(fd, sock, error.errno, error.strerror)
            return
        if self.worker.complete:
            self.worker.epoll.modify(fd, select.EPOLLIN)
            self.in_flight[fd] = (sock, bytearray())
        else:
            self._established(fd, sock)

    def _read_reply(self, fd: int, sock: _socket.socket, reply: bytearray) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            self._drop(fd, sock, error.errno, error.strerror)
            return
        if not data:
            self._drop(fd, sock, errno.ECONNRESET, "the server closed the connection before its reply")
            return
        reply += data
        head_end = reply.find(b"\r\n\r\n")
        if head_end < 0:
            if len(reply) > REPLY_MAX:
                self._drop(fd, sock, None, f"reply head longer than {REPLY_MAX} bytes")
            return
        status, length = parse_head(bytes(reply[:head_end]))
        if len(reply) < head_end + 4 + length:
            return
        if status != 200:
            self._drop(fd, sock, None, f"HTTP status {status} instead of 200")
        elif len(reply) > head_end + 4 + length:
            self._drop(fd, sock, None, "more bytes than one reply")
        else:
            self._established(fd, sock)


def parse_head(head: bytes) -> tuple[int, int]:
    """(status, Content-Length) of a reply head; 0 for a missing length, -1 for a garbled status."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = min(int(value.strip()), REPLY_MAX)
    return status, length


def worker_main(channel: socket.socket, destination: tuple[str, int], request: bytes, complete: bool) -> None:
    """A forked worker's life: serve the parent, then exit and let the kernel close every connection."""
    status = 0
    worker = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # blocked by _spawn
        worker = ConnectionWorker(channel, destination, request, complete)
        worker.serve()
    except Stop:
        with contextlib.suppress(OSError):
            channel.sendall(encode({"reply": "closed", "held": len(worker.held) if worker else 0}))
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone
        pass
    except BaseException:  # a bug: say where, and let the parent see the channel close
        traceback.print_exc()
        status = 1
    os._exit(status)


def _raise_stop(_signum, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop


# ---------------------------------------------------------------------------------------------- parent


class WorkerHandle:
    """The parent's view of one worker process (a ConnectionWorker): its pid, its channel, and how many
    connections it last said it held."""

    def __init__(self, pid: int, channel: socket.socket):
        self.pid = pid
        self.channel = channel
        self.inbox = b""
        self.held = 0

    def send(self, command: dict) -> None:
        try:
            self.channel.sendall(encode(command))
        except OSError as error:
            raise WorkerLost(f"worker {self.pid} is gone ({error.strerror})") from None

    def receive(self) -> list[dict] | None:
        """The whole messages that have arrived; None when the worker has closed its channel."""
        try:
            data = self.channel.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        self.inbox += data
        *lines, self.inbox = self.inbox.split(b"\n")
        return [json.loads(line) for line in lines]


class WorkerLost(Exception):
    """A worker died or did not answer in time: its connections are gone or unknown."""


class Interrupted(Exception):
    """SIGTERM or SIGINT came while waiting for the workers: stop and close."""


class Deadconn:
    """The parent: reads commands, plans each step over the workers and source addresses, reports."""

    def __init__(self, options: argparse.Namespace, destination: tuple[str, int], fd_limit: int,
                 per_worker: int, source_cap: float, cpus: int):
        self.options = options
        self.destination = destination
        self.fd_limit = fd_limit
        self.per_worker = per_worker
        self.source_cap = source_cap
        self.cpus = cpus
        self.complete = options.mode == "complete"
        self.request = (f"GET / HTTP/1.1\r\nHost: {options.host}\r\n\r\n".encode() if self.complete
                        else DEAD_REQUEST)
        self.workers: list[WorkerHandle] = []
        self.sources: list[str] = []
        self.source_loads: list[int] = []
        self.target = 0
        self.failures = empty_failures()
        self.errors: dict[str, str] = {}
        self.stop_requested = False
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- commands

    def run(self, initial: int, control: int | None) -> int:
        signal.set_wakeup_fd(self.wake_write)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            if not self.grow(initial):
                return 1
            return self._serve(control)
        except BrokenPipeError:  # nobody reads our stdout any more; nor will Python's flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.close(report=False)
            return 1

    def _serve(self, control: int | None) -> int:
        selector = selectors.PollSelector()  # poll, not epoll: stdin may be a regular file
        selector.register(self.wake_read, selectors.EVENT_READ)
        pending = {fd: b"" for fd in (control, 0) if fd is not None and _is_open(fd)}  # a partial line each
        for fd in pending:
            selector.register(fd, selectors.EVENT_READ)
        while True:
            if self.stop_requested:
                self.close()
                return 0
            for worker in self.workers:  # a worker says something unasked only when it is gone
                if worker.channel.fileno() not in selector.get_map():
                    selector.register(worker.channel, selectors.EVENT_READ, worker)
            for key, _ in selector.select():
                if key.fd == self.wake_read:
                    _drain(self.wake_read)
                    continue
                if isinstance(key.data, WorkerHandle):
                    return self._lost(f"worker {key.data.pid} exited on its own")
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:  # EOF on stdin: no more commands from there, but go on holding
                    selector.unregister(key.fd)
                    data = b"\n"
                *lines, pending[key.fd] = (pending[key.fd] + data).split(b"\n")
                for line in lines:
                    if self.stop_requested:
                        break
                    outcome = self.command(line.decode(errors="replace"))
                    if outcome is not None:
                        return outcome
                break  # the workers may have changed: look again

    def command(self, line: str) -> int | None:
        """Carry out one command line; an exit status when deadconn is to exit."""
        words = line.split()
        if not words:
            return None
        if words[0] == "grow" and len(words) == 2:
            try:
                count = int(words[1]) if words[1].isdigit() else -1
                self.check_growth(count)
            except ValueError as error:
                complain(f"ignored 'grow {words[1]}': {error}")
                return None
            return None if self.grow(count) else 1
        if words[0] == "status" and len(words) == 1:
            try:
                self._refresh()
            except WorkerLost as error:
                return self._lost(str(error))
            except Interrupted:
                return None  # _serve closes
            self.emit("status")
            return None
        if words[0] == "quit" and len(words) == 1:
            self.close()
            return 0
        complain(f"ignored unknown command {line.strip()!r}; commands: grow N, status, quit")
        return None

    def check_growth(self, count: int) -> None:
        """ValueError, saying why, when count more connections are not a sensible step."""
        if count < 0:
            raise ValueError("N must be a whole number, 0 or more")
        if self.target + count > MAX_TARGET:
            raise ValueError(f"{self.target + count} connections is more than {MAX_TARGET}")
        if math.ceil((self.target + count) / self.per_worker) > MAX_WORKERS:
            raise ValueError(f"{self.target + count} connections need more than {MAX_WORKERS} workers of "
                             f"{self.per_worker}: raise --per-worker")

    # -- steps

    def grow(self, count: int) -> bool:
        """Open count more connections; print "ready", or "failed" and close everything."""
        target = self.target + count
        try:
            adds = self._spread(count)
            while len(self.sources) * self.source_cap < target:
                self._add_source()
            source_adds = water_fill(self.source_loads, [self.source_cap] * len(self.sources), count)
            plans = pair(adds, list(zip(self.sources, source_adds, strict=True)))
            for i, add in enumerate(source_adds):
                self.source_loads[i] += add
            self.target = target
            busy = [w for w, plan in zip(self.workers, plans, strict=True) if plan]
            drops_before = conntrack_drops()
            started = time.monotonic()
            for worker, plan in zip(self.workers, plans, strict=True):
                if plan:
                    worker.send({"op": "open", "plan": plan, "timeout": self.options.timeout})
            answers = self._gather(busy, self.options.timeout + ANSWER_GRACE_S)
            seconds = time.monotonic() - started
            drops_after = conntrack_drops()
            opened = 0
            for answer in answers.values():
                opened += answer["opened"]
                for reason, n in answer["failures"].items():
                    self.failures[reason] += n
                for reason, text in answer["errors"].items():
                    self.errors.setdefault(reason, text)
            self._refresh()
        except WorkerLost as error:
            self._lost(str(error))
            return False
        except Interrupted:
            return True  # _serve closes
        held = sum(w.held for w in self.workers)
        # SYNs dropped by a full connection-tracking table look like a server that does not accept.
        tracked = {} if drops_before is None else {"conntrack_drops": drops_after - drops_before}
        if held < target:
            reason = self.dominant_reason()
            hint = HINTS[reason]
            if tracked.get("conntrack_drops"):
                hint = (f"netfilter dropped {tracked['conntrack_drops']} packets for want of a conntrack "
                        "entry: raise net.netfilter.nf_conntrack_max or exempt loopback from tracking")
            self.emit("failed", seconds=seconds, opened=opened, reason=reason, **tracked)
            host, port = self.destination
            complain(f"held {held} of {target} connections to {host}:{port}: "
                     f"{self.failures[reason]} {reason} ({self.errors.get(reason, 'no error text')}); {hint}")
            self.close(report=False)
            return False
        self.emit("ready", seconds=seconds, opened=opened, **tracked)
        return True

    def _spread(self, count: int) -> list[int]:
        """How many of count each worker opens: equal shares, none past its limit, forking workers until
        the largest share is no more than an even split over our CPUs, so that all of them open."""
        even = math.ceil(count / self.cpus)
        while True:
            rooms = [self.per_worker - w.held for w in self.workers]
            if sum(rooms) >= count:
                adds = water_fill([0] * len(rooms), rooms, count)
                if max(adds, default=0) <= even or len(self.workers) >= MAX_WORKERS:
                    return adds
            elif len(self.workers) >= MAX_WORKERS:  # check_growth keeps us from here
                raise WorkerLost(f"{count} more connections do not fit in {MAX_WORKERS} workers")
            self._spawn()

    def _refresh(self) -> None:
        """Every worker checks its connections; those the server closed count as resets."""
        answers = self._gather(self.workers, ANSWER_GRACE_S, {"op": "check"})
        for worker, answer in answers.items():
            worker.held = answer["held"]
            if answer["lost"]:
                self.failures["reset"] += answer["lost"]
                self.errors.setdefault("reset", "closed by the server after the handshake")

    def _gather(self, workers: list[WorkerHandle], timeout: float, command: dict | None = None) -> dict:
        """Each worker's answer (to command, sent first when given); Interrupted when a signal comes first."""
        if command:
            for worker in workers:
                worker.send(command)
        waiting = set(workers)
        answers = {}
        deadline = time.monotonic() + timeout
        with selectors.PollSelector() as selector:
            selector.register(self.wake_read, selectors.EVENT_READ)
            for worker in workers:
                selector.register(worker.channel, selectors.EVENT_READ, worker)
            while waiting:
                if self.stop_requested:
                    raise Interrupted
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerLost(f"{len(waiting)} workers did not answer within {timeout:.0f} s")
                for key, _ in selector.select(left):
                    if key.fd == self.wake_read:
                        _drain(self.wake_read)
                        continue
                    messages = key.data.receive()
                    if messages is None:
                        raise WorkerLost(f"worker {key.data.pid} exited")
                    for message in messages:
                        if message["reply"] == "closed":
                            raise WorkerLost(f"worker {key.data.pid} was stopped by someone else")
                        answers[key.data] = message
                        waiting.discard(key.data)
                        selector.unregister(key.data.channel)
        return answers

    def _spawn(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        stopping = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # held until each side has its own handlers
        try:
            mine, theirs = socket.socketpair()
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
            raise WorkerLost(f"cannot start worker {len(self.workers) + 1} ({error.strerror})") from None
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)  # else a signal would write into whatever reuses that descriptor
                keep = theirs.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, self.fd_limit)
                worker_main(theirs, self.destination, self.request, self.complete)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
        theirs.close()
        self.workers.append(WorkerHandle(pid, mine))

    def _add_source(self) -> None:
        base = ipaddress.IPv4Address(self.options.source_base)
        self.sources.append(str(base + len(self.sources)))
        self.source_loads.append(0)

    def dominant_reason(self) -> str:
        reason = max(REASONS, key=lambda r: self.failures[r])
        return reason if self.failures[reason] else "other"

    # -- the end

    def close(self, report: bool = True) -> None:
        """SIGTERM every worker and wait until each has exited, so that every connection is closed."""
        held = 0
        for worker in self.workers:
            _signal(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + CLOSE_WAIT_S
        for worker in self.workers:
            held += _await_closed(worker, deadline)
            if _reap(worker.pid, deadline) is None:
                _signal(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
        self.workers = []
        if report:
            self.emit("closed", held=held)

    def _lost(self, why: str) -> int:
        self.errors.setdefault("other", why)
        self.failures["other"] += 1
        self.emit("failed", reason="other")
        complain(f"{why}; closing everything")
        self.close(report=False)
        return 1

    def _on_signal(self, _signum, _frame) -> None:
        self.stop_requested = True

    # -- output

    def emit(self, event: str, **fields) -> None:
        line: dict = {"event": event}
        if event == "closed":
            line.update(fields)
        else:
            seconds = fields.pop("seconds", None)
            opened = fields.pop("opened", None)
            line.update(held=sum(w.held for w in self.workers), target=self.target)
            if seconds is not None:
                line.update(seconds=round(seconds, 6),
                            rate_per_s=round(opened / seconds, 1) if opened and seconds > 0 else 0.0)
            line.update(workers=len(self.workers), per_worker_limit=self.per_worker, fd_limit=self.fd_limit,
                        sources=self.sources, mode=self.options.mode, failures=self.failures, **fields)
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def pair(worker_adds: list[int], source_adds: list[tuple[str, int]]) -> list[list[list]]:
    """Each worker's plan, [[source, count], ...], handing out the sources' counts in order."""
    sources = [[source, n] for source, n in source_adds if n]
    plans: list[list[list]] = []
    i = 0
    for need in worker_adds:
        plan = []
        while need:
            source, left = sources[i]
            take = min(need, left)
            plan.append([source, take])
            need -= take
            sources[i][1] -= take
            if sources[i][1] == 0:
                i += 1
        plans.append(plan)
    return plans


def conntrack_drops() -> int | None:
    """Packets netfilter has dropped for want of a conntrack entry; None when it tracks no connections."""
    try:
        with open(CONNTRACK_STATS) as f:
            column = f.readline().split().index("drop")
            return sum(int(line.split()[column], 16) for line in f)
    except (OSError, ValueError, IndexError):
        return None


def _await_closed(worker: WorkerHandle, deadline: float) -> int:
    """The count a stopping worker reports as it closes; 0 when it exits without saying."""
    held = 0
    with selectors.PollSelector() as selector:
        selector.register(worker.channel, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and selector.select(left):
            try:
                messages = worker.receive()
            except OSError:
                break
            if messages is None:
                break
            for message in messages:
                if message["reply"] == "closed":
                    held = message["held"]
    worker.channel.close()
    return held


def _reap(pid: int, deadline: float) -> int | None:
    """Wait for a worker to exit; None if it has not by deadline."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def complain(text: str) -> None:
    print(f"deadconn: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- setup


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(
        prog="deadconn",
        description="Opens connections to an HTTP server and holds them: dead ones that send half a request "
                    "(the default), or complete ones that send a whole keep-alive GET and read the reply. "
                    "Grows on command: lines 'grow N', 'status', 'quit' on stdin or on the --control FIFO "
                    "(EOF on stdin only means no more commands there). JSON lines on stdout: 'ready' after "
                    "the first opening and every grow, 'failed' (then exit 1) when a step cannot reach its "
                    "target, 'status', and 'closed' once SIGTERM, SIGINT or quit has closed everything.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="server address, IPv4 or a name resolved once (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    parser.add_argument("-n", "--connections", type=int, default=DEFAULT_CONNECTIONS, metavar="N",
                        help="connections to open at start; 0 waits for 'grow N' (default: %(default)s)")
    parser.add_argument("--mode", choices=("dead", "complete"), default=DEFAULT_MODE,
                        help="dead: send 'GET / HTTP/1.0\\r\\n' and never finish it; complete: one whole "
                             "keep-alive GET, read the reply, then idle (default: %(default)s)")
    parser.add_argument("--source-base", default=DEFAULT_SOURCE_BASE, metavar="ADDR",
                        help="first source address; more are the next addresses up (default: %(default)s)")
    parser.add_argument("--sources", type=int, default=None, metavar="K",
                        help="use exactly K source addresses (default: add one whenever each would otherwise "
                             f"use more than {PORT_SHARE * 100:.0f}%% of net.ipv4.ip_local_port_range)")
    parser.add_argument("--per-worker", type=int, default=None, metavar="K",
                        help=f"most connections one worker process holds (default: the descriptor limit, "
                             f"raised to the hard limit, less {FD_RESERVE})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="seconds a step may take before its unfinished connections fail "
                             "(default: %(default)s)")
    parser.add_argument("--control", default=None, metavar="PATH",
                        help="also read commands from this FIFO, made if missing and then removed at exit "
                             "(default: none)")
    return parser.parse_args(argv)


def port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return DEFAULT_PORT_RANGE


def resolve(host: str, port: int) -> tuple[str, int]:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as error:
        hint = "give an IPv4 address or a resolvable name"
        raise UsageError(f"--host {host}: {error.strerror}; {hint}") from None
    return infos[0][4][0], port


def check_source(address: str) -> None:
    """UsageError unless we can bind address: a source must be one of this host's addresses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        try:
            sock.bind((address, 0))
        except OSError as error:
            raise UsageError(f"source address {address} is not usable ({error.strerror}); "
                             "choose another --source-base") from None


def open_control(path: str) -> tuple[int, bool]:
    """The FIFO at path opened for reading (read-write, so it never reads EOF); and whether we made it."""
    made = False
    try:
        os.mkfifo(path)
        made = True
    except FileExistsError:
        pass
    except OSError as error:
        raise UsageError(f"--control {path}: cannot make a FIFO there ({error.strerror})") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise UsageError(f"--control {path}: cannot open it ({error.strerror})") from None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"--control {path} exists and is not a FIFO; remove it or name another path")
    return fd, made


def setup(argv: list[str]) -> tuple[Deadconn, int | None, str | None]:
    options = parse_args(argv)
    if not 0 < options.port < 65536:
        raise UsageError(f"--port {options.port} is not a TCP port (1-65535)")
    if options.connections < 0:
        raise UsageError(f"--connections {options.connections} must be 0 or more")
    if not options.timeout > 0 or not math.isfinite(options.timeout):
        raise UsageError(f"--timeout {options.timeout} must be a positive number of seconds")
    if options.sources is not None and options.sources < 1:
        raise UsageError(f"--sources {options.sources} must be 1 or more")
    try:
        base = ipaddress.IPv4Address(options.source_base)
    except ValueError:
        raise UsageError(f"--source-base {options.source_base} is not an IPv4 address") from None
    destination = resolve(options.host, options.port)
    check_source(str(base))
    fd_limit = fdlimit.raise_fd_limit(complain)
    most = fd_limit - FD_RESERVE
    if most < 1:
        raise UsageError(f"the descriptor limit {fd_limit} leaves no room for connections; raise it")
    per_worker = most if options.per_worker is None else options.per_worker
    if not 1 <= per_worker <= most:
        raise UsageError(f"--per-worker {per_worker} must be from 1 to {most} "
                         f"(the descriptor limit {fd_limit} less {FD_RESERVE})")
    if options.sources is None:
        low, high = port_range()
        source_cap: float = max(1, int((high - low + 1) * PORT_SHARE))
        source_count = 1
    else:
        source_cap = math.inf
        source_count = options.sources
    try:
        last = base + source_count - 1
    except ipaddress.AddressValueError:
        raise UsageError(f"--sources {source_count} from {base} runs past 255.255.255.255") from None
    if base.is_loopback and not last.is_loopback:
        raise UsageError(f"--sources {source_count} from {base} runs past 127.255.255.255; lower either")
    cpus = len(os.sched_getaffinity(0))
    app = Deadconn(options, destination, fd_limit, per_worker, source_cap, cpus)
    for _ in range(source_count):
        app._add_source()
    try:
        app.check_growth(options.connections)
    except ValueError as error:
        raise UsageError(f"--connections {options.connections}: {error}") from None
    control, made = (None, False) if options.control is None else open_control(options.control)
    return app, control, options.control if made else None


def main(argv: list[str]) -> int:
    try:
        app, control, made_fifo = setup(argv)
    except UsageError as error:
        complain(str(error))
        return 2
    try:
        return app.run(app.options.connections, control)
    finally:
        if made_fifo:
            os.unlink(made_fifo)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
