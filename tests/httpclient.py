"""The client side of the server tests: run ephttpd or pyhttpd, speak HTTP/1.x to it over loopback, read its
snapshots until it has caught up, and run deadconn against it. A plain module, imported by the test files."""

from __future__ import annotations

import json
import resource
import select
import signal
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest

from experiment.bench import native

PROGRAMS = {"ephttpd": native.Ephttpd, "pyhttpd": native.Pyhttpd}
KERNEL_OPTIONAL = {"io_uring", "aio-poll", "io_uring-recv"}  # backends this kernel may refuse: skipped, not failed
DEFAULT_MSGSIZE = 128
FD_SETSIZE = 1024
CLIENT_TIMEOUT = 10.0
EVENT_TIMEOUT = 60.0    # bounds a deadconn step on a loaded machine; never a performance assertion
SETTLE_ATTEMPTS = 200   # snapshots 50 ms apart while the server catches up


@contextmanager
def serving(program: str, backend: str, *args: str, nofile: int | None = None):
    """A running ephttpd (its sanitized build, see the build_dir fixture) or pyhttpd, killed on the way out if
    the test did not stop it, and failing the test if a sanitizer reported something; skips, with the server's
    own reason, when this kernel refuses io_uring or AIO poll."""
    server = PROGRAMS[program](backend, list(args), nofile=nofile, build=native.SANITIZED)
    try:
        server.start()
    except native.ProgramError as error:
        returncode = server.proc.wait(timeout=CLIENT_TIMEOUT)
        reason = f"{error}{server.proc.stderr.read()}"
        if returncode == 2 and backend in KERNEL_OPTIONAL and f"{server.name}: {backend}:" in reason:
            pytest.skip(reason.strip())
        raise
    try:
        yield server
    finally:
        server.close()


def connect(server: native.Ephttpd) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(path: str = "/", version: str = "1.1", connection: str | None = None) -> bytes:
    head = f"GET {path} HTTP/{version}\r\nHost: localhost\r\n"
    if connection:
        head += f"Connection: {connection}\r\n"
    return (head + "\r\n").encode()


def head_request(version: str = "1.1", connection: str | None = None) -> bytes:
    return b"HEAD" + request(version=version, connection=connection).removeprefix(b"GET")


def read_response(reader, to_head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one response; EOFError when the server closed instead. to_head:
    the response to HEAD, whose Content-Length is the body's that GET would get, but no body follows."""
    status_line = reader.readline()
    if not status_line:
        raise EOFError("connection closed before a response")
    version, status, _ = status_line.decode("latin-1").split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode("latin-1").split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = b"" if to_head else reader.read(int(headers["content-length"]))
    return int(status), headers, body


def assert_ok(response, msgsize: int = DEFAULT_MSGSIZE, connection: str = "keep-alive") -> None:
    status, headers, body = response
    assert status == 200
    assert headers["content-length"] == str(msgsize)
    assert len(body) == msgsize
    assert headers["connection"] == connection


def assert_closed(sock: socket.socket) -> None:
    """The server closed (or shut down) its side: the next read is EOF."""
    assert sock.recv(1) == b""


def one_request_answered(server: native.Ephttpd) -> None:
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request())
        assert_ok(read_response(reader))


def settled_snapshot(server: native.Ephttpd, done, attempts: int = SETTLE_ATTEMPTS) -> dict:
    """The first snapshot for which done(snapshot) holds: the server has caught up with the client."""
    for _ in range(attempts):
        snap = server.snapshot()
        if done(snap):
            return snap
        time.sleep(0.05)
    raise AssertionError(f"the server never caught up: last snapshot {snap}")


def quiet_snapshot(server: native.Ephttpd, attempts: int = 100) -> dict:
    """A snapshot after which nothing woke the server for 50 ms (a snapshot itself counts no wakeup)."""
    previous = server.snapshot()
    for _ in range(attempts):
        time.sleep(0.05)
        snap = server.snapshot()
        if snap["wait_calls"] == previous["wait_calls"]:
            return snap
        previous = snap
    raise AssertionError(f"the server never went quiet: last snapshot {snap}")


# ------------------------------------------------------------------------------- deadconn, the dead connections


@contextmanager
def deadconn(*args: str, nofile: int | None = None):
    """A running deadconn with pipes on stdin, stdout and stderr. On the way out, if still running, it gets
    SIGTERM and must exit on it (killed, and the test failed, if it does not)."""
    limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
    proc = subprocess.Popen(native.deadconn_command(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    try:
        yield proc
    finally:
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"deadconn ignored SIGTERM for {CLIENT_TIMEOUT} s") from None
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()


def next_event(proc: subprocess.Popen, timeout: float = EVENT_TIMEOUT) -> dict:
    """deadconn's next JSON line; fails, with its stderr if it exited, when it says nothing within timeout."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    assert line, f"deadconn said nothing within {timeout} s (exit {proc.poll()}): {stderr_of(proc)}"
    return json.loads(line)


def stderr_of(proc: subprocess.Popen) -> str:
    return proc.stderr.read() if proc.poll() is not None else "(still running)"


def send(proc: subprocess.Popen, line: str) -> None:
    """One command on deadconn's stdin."""
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
