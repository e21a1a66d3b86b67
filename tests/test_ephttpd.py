"""ephttpd on every backend: keep-alive, pipelining, bad requests, dead connections, descriptor limits,
workers, and stats that agree with what the client saw."""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import subprocess
import time
from contextlib import ExitStack, contextmanager

import pytest

from experiment import native

BACKENDS = ["select", "poll", "epoll", "epoll-et", "io_uring", "aio-poll"]
KERNEL_OPTIONAL = {"io_uring", "aio-poll"}
DEFAULT_MSGSIZE = 128
FD_SETSIZE = 1024
CLIENT_TIMEOUT = 10.0


@contextmanager
def serving(backend: str, *args: str, nofile: int | None = None):
    """A running ephttpd, killed on the way out if the test did not stop it; skips, with ephttpd's own
    reason, when this kernel refuses io_uring or AIO poll."""
    server = native.Ephttpd(backend, list(args), nofile=nofile)
    try:
        server.start()
    except native.ProgramError as error:
        returncode = server.proc.wait(timeout=CLIENT_TIMEOUT)
        reason = f"{error}{server.proc.stderr.read()}"
        if returncode == 2 and backend in KERNEL_OPTIONAL and f"ephttpd: {backend}:" in reason:
            pytest.skip(reason.strip())
        raise
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def connect(server: native.Ephttpd) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(path: str = "/", version: str = "1.1", connection: str | None = None) -> bytes:
    head = f"GET {path} HTTP/{version}\r\nHost: localhost\r\n"
    if connection:
        head += f"Connection: {connection}\r\n"
    return (head + "\r\n").encode()


def read_response(reader) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one response; EOFError when the server closed instead."""
    status_line = reader.readline()
    if not status_line:
        raise EOFError("connection closed before a response")
    version, status, _ = status_line.decode("latin-1").split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode("latin-1").split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
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


def readline(proc: subprocess.Popen, timeout: float = CLIENT_TIMEOUT) -> str:
    """One line of proc's stdout, or '' if it says nothing within timeout."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def settled_snapshot(server: native.Ephttpd, done, attempts: int = 200) -> dict:
    """The first snapshot for which done(snapshot) holds: the server has caught up with the client."""
    for _ in range(attempts):
        snap = server.snapshot()
        if done(snap):
            return snap
        time.sleep(0.05)
    raise AssertionError(f"the server never caught up: last snapshot {snap}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_thousand_keep_alive_requests_on_one_connection(build_dir, backend):
    count = 10_000
    with serving(backend) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
        for i in range(count):
            conn.request("GET", f"/{i}")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert response.getheader("Content-Length") == str(DEFAULT_MSGSIZE)
            assert len(body) == DEFAULT_MSGSIZE
        conn.close()
        stats = server.stop()

    assert stats["accepted"] == 1
    assert stats["requests"] == stats["responses_200"] == count
    assert stats["responses_4xx"] == 0
    # One readable event per request, none for the writes: the loop does not wake for nothing.
    assert count <= stats["events"] <= count + 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipelined_requests_are_all_answered_in_order(build_dir, backend):
    count = 100
    burst = b"".join(request(f"/{i}") for i in range(count - 1)) + request("/last", connection="close")
    with serving(backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(burst)
            for _ in range(count - 1):
                assert_ok(read_response(reader))
            assert_ok(read_response(reader), connection="close")
            assert reader.read() == b""
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == count


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_pipelined_responses_flow_through_a_full_socket_buffer(build_dir, backend):
    """5 MB of answers to one send: the server must wait for EV_WRITE and go on where it stopped."""
    count, msgsize = 50, 100_000
    with serving(backend, "--msgsize", str(msgsize)) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(request() * count)
            for _ in range(count):
                assert_ok(read_response(reader), msgsize=msgsize)
            sock.sendall(request(connection="close"))
            assert_ok(read_response(reader), msgsize=msgsize, connection="close")
        stats = server.stop()

    assert stats["responses_200"] == count + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_alive_follows_the_http_version_and_connection_header(build_dir, backend):
    with serving(backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(request(version="1.0"))
            assert_ok(read_response(reader), connection="close")
            assert_closed(sock)
        with connect(server) as sock, sock.makefile("rb") as reader:
            for _ in range(3):
                sock.sendall(request(version="1.0", connection="keep-alive"))
                assert_ok(read_response(reader))
            sock.sendall(request(version="1.1", connection="close"))
            assert_ok(read_response(reader), connection="close")
            assert_closed(sock)
        stats = server.stop()

    assert stats["accepted"] == 2
    assert stats["responses_200"] == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_arriving_in_pieces_is_answered_once_complete(build_dir, backend):
    with serving(backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            for _ in range(3):
                for byte in request(connection="keep-alive"):
                    sock.send(bytes([byte]))
                assert_ok(read_response(reader))
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_and_the_fin_arriving_in_one_event_are_answered_and_closed(build_dir, backend):
    """The server is stopped while the request and the client's FIN arrive, so that one event reports
    both: a short read drains the request but not the EOF, which edge-triggered delivery will not
    announce again."""
    with serving(backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            settled_snapshot(server, lambda s: s["open"] == 1)
            server.proc.send_signal(signal.SIGSTOP)
            try:
                sock.sendall(request())
                sock.shutdown(socket.SHUT_WR)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert_ok(read_response(reader))
            assert reader.read() == b""
        settled_snapshot(server, lambda s: s["closed"] == 1)
        server.stop()


MALFORMED = [
    ("bad request line", b"HELLO\r\n\r\n", 400),
    ("missing version", b"GET /\r\n\r\n", 400),
    ("HTTP/2 request line", b"GET / HTTP/2.0\r\n\r\n", 400),
    ("garbage bytes", bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]), 400),
    ("lone blank line", b"\r\n\r\n", 400),
    ("header without colon", b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n", 400),
    ("GET with a body", b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("9 KiB header", b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * 9216 + b"\r\n\r\n", 431),
    ("POST", b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    ("DELETE", b"DELETE /x HTTP/1.0\r\n\r\n", 405),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_requests_get_an_error_and_close_and_the_server_serves_on(build_dir, backend):
    with serving(backend) as server:
        for name, data, expected in MALFORMED:
            with connect(server) as sock, sock.makefile("rb") as reader:
                sock.sendall(data)
                status, headers, _ = read_response(reader)
                assert (name, status, headers["connection"]) == (name, expected, "close")
                if expected == 405:
                    assert headers["allow"] == "GET"
                assert_closed(sock)
            one_request_answered(server)
        stats = server.stop()

    assert stats["responses_4xx"] == len(MALFORMED)
    assert stats["responses_200"] == len(MALFORMED)
    assert stats["requests"] == 2 * len(MALFORMED)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dead_connections_are_held_without_wakeups(build_dir, backend):
    # select watches only descriptors below FD_SETSIZE; what it does past them is tested on its own.
    held = 1000 if backend == "select" else 5000
    with serving(backend) as server, ExitStack() as stack:
        deadconn = subprocess.Popen(
            # deadconn gives up (and says why) well before the test stops waiting for it.
            native.deadconn_command("--host", "127.0.0.1", "--port", str(server.port), "-n", str(held),
                                    "--timeout", "30"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stack.callback(deadconn.wait, timeout=CLIENT_TIMEOUT)
        stack.callback(deadconn.send_signal, signal.SIGTERM)
        line = readline(deadconn, timeout=60)
        assert line, f"deadconn did not say it was ready: {deadconn.poll()=}"
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["held"] == held, ready

        # Every dead connection accepted and its half request read; then a second of quiet.
        settled_snapshot(server, lambda s: s["open"] >= held)
        before = quiet_snapshot(server)
        time.sleep(1.0)
        after = server.snapshot()
        assert after["wait_calls"] == before["wait_calls"]
        assert after["events"] == before["events"]
        assert after["open"] == held and after["requests"] == 0

        one_request_answered(server)
        stats = server.stop()

    assert stats["accepted"] >= held + 1
    assert stats["responses_200"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_descriptor_is_left_after_thousands_of_connections(build_dir, backend):
    rounds, per_round = 10, 500  # per_round + the server's own descriptors stays below select's FD_SETSIZE
    with serving(backend) as server:
        baseline = native.open_fds(server.pid)
        for _ in range(rounds):
            socks = [connect(server) for _ in range(per_round)]
            for i, sock in enumerate(socks):
                if i % 2:  # half ask for something, half only connect and close
                    sock.sendall(request())
            for sock in socks[1::2]:
                with sock.makefile("rb") as reader:
                    assert_ok(read_response(reader))
            for sock in socks:
                sock.close()
            settled_snapshot(server, lambda s: s["open"] == 0)
        assert native.open_fds(server.pid) == baseline
        stats = server.stop()

    assert stats["accepted"] == stats["closed"] == rounds * per_round
    assert stats["refused"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_agree_with_what_the_client_counted(build_dir, backend):
    connections = requests = ok = errors = 0
    with serving(backend) as server:
        for n in range(40):
            with connect(server) as sock, sock.makefile("rb") as reader:
                connections += 1
                keep_alive = n % 7 + 1
                sock.sendall(request() * keep_alive)  # pipelined
                for _ in range(keep_alive):
                    assert_ok(read_response(reader))
                requests += keep_alive
                ok += keep_alive
                if n % 5 == 0:
                    sock.sendall(b"BREW /pot HTTP/1.1\r\n\r\n")
                    assert read_response(reader)[0] == 405
                    requests += 1
                    errors += 1
                elif n % 2 == 0:
                    sock.sendall(request(version="1.0"))
                    assert_ok(read_response(reader), connection="close")
                    requests += 1
                    ok += 1
        socks = [connect(server) for _ in range(10)]  # still open at the end
        connections += len(socks)
        settled_snapshot(server, lambda s: s["accepted"] == connections)
        stats = server.stop()
        for sock in socks:
            sock.close()

    assert stats["accepted"] == connections
    assert stats["requests"] == requests
    assert stats["responses_200"] == ok
    assert stats["responses_4xx"] == errors
    assert stats["refused"] == 0
    assert stats["closed"] + stats["open"] == stats["accepted"]
    assert stats["open"] >= len(socks)
    assert stats["peak_open"] >= len(socks)
    assert stats["events_per_wait"] == pytest.approx(stats["events"] / stats["wait_calls"], abs=1e-3)
    assert stats["per_worker"] == [{"worker": 0, "pid": server.pid, **{
        k: v for k, v in stats.items() if k not in ("event", "backend", "workers", "fd_limit", "per_worker")}}]


def test_select_refuses_and_counts_connections_beyond_fd_setsize(build_dir):
    total = 1100
    with serving("select") as server:
        socks = [connect(server) for _ in range(total)]
        for sock in socks:
            sock.sendall(request())
        answered = refused = 0
        for sock in socks:
            with sock.makefile("rb") as reader:
                try:
                    assert_ok(read_response(reader))
                    answered += 1
                except (EOFError, ConnectionResetError):
                    refused += 1
        for sock in socks:
            sock.close()
        settled_snapshot(server, lambda s: s["open"] == 0)
        one_request_answered(server)
        stats = server.stop()

    assert refused >= total - FD_SETSIZE
    assert stats["refused"] == refused
    assert stats["accepted"] == answered + 1
    assert stats["peak_open"] < FD_SETSIZE


def test_unknown_backend_exits_2_naming_the_valid_ones(build_dir):
    proc = subprocess.run([str(build_dir / "ephttpd"), "--backend", "kqueue", "--port", "0"],
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("ephttpd: ")
    assert "kqueue" in proc.stderr
    for name in BACKENDS:
        assert name in proc.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_descriptors_refuses_without_spinning(build_dir, backend):
    limit, total = 64, 200
    with serving(backend, nofile=limit) as server:
        assert server.listening["fd_limit"] == limit
        socks = [connect(server) for _ in range(total)]
        snap = settled_snapshot(server, lambda s: s["accepted"] + s["refused"] == total)
        for sock in socks:
            sock.close()
        settled_snapshot(server, lambda s: s["open"] == 0)
        one_request_answered(server)
        stats = server.stop()

    assert 0 < snap["accepted"] < limit
    assert snap["refused"] > 0
    assert stats["refused"] == snap["refused"]
    assert stats["wait_calls"] < 10 * total


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_both_accept_and_their_stats_are_summed(build_dir, backend, tmp_path):
    connections, per_connection = 200, 5
    ready_file = tmp_path / "ready.json"
    with serving(backend, "--workers", "2", "--ready-file", str(ready_file)) as server:
        assert server.listening["workers"] == 2
        assert json.loads(ready_file.read_text()) == server.listening
        for _ in range(connections):
            with connect(server) as sock, sock.makefile("rb") as reader:
                sock.sendall(request() * per_connection)
                for _ in range(per_connection):
                    assert_ok(read_response(reader))
        stats = server.stop()

    workers = stats["per_worker"]
    assert len(workers) == 2
    assert len({w["pid"] for w in workers}) == 2
    assert all(w["accepted"] > 0 for w in workers)
    for key in ("accepted", "refused", "closed", "open", "requests", "responses_200", "responses_4xx",
                "wait_calls", "events", "peak_open"):
        assert stats[key] == sum(w[key] for w in workers), key
    assert stats["user_cpu_s"] == pytest.approx(sum(w["user_cpu_s"] for w in workers), abs=1e-5)
    assert stats["accepted"] == connections
    assert stats["requests"] == stats["responses_200"] == connections * per_connection
