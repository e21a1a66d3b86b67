"""pyhttpd on every backend, natively: ephttpd's behaviour where a measurement depends on it (keep-alive,
pipelining, dead connections held without wakeups, errors then close) and its JSON protocol."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager

import pytest
from test_ephttpd import (
    CLIENT_TIMEOUT,
    DEFAULT_MSGSIZE,
    FD_SETSIZE,
    MALFORMED,
    assert_closed,
    assert_ok,
    quiet_snapshot,
    read_response,
    readline,
    request,
    settled_snapshot,
)

from experiment import native

BACKENDS = ["select", "poll", "epoll", "asyncio"]
COUNTERS = ("accepted", "refused", "closed", "open", "requests", "responses_200", "responses_4xx", "wait_calls",
            "events", "peak_open", "user_cpu_s", "sys_cpu_s")


@contextmanager
def serving(backend: str, *args: str, nofile: int | None = None):
    server = native.Pyhttpd(backend, ["--port", "0", *args], nofile=nofile)
    server.start()
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def connect(server: native.Pyhttpd) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def one_request_answered(server: native.Pyhttpd) -> None:
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request())
        assert_ok(read_response(reader))


@pytest.mark.parametrize("backend", BACKENDS)
def test_listening_line_names_the_backend_and_the_fd_limit(backend):
    import resource

    with serving(backend) as server:
        listening = server.listening
        assert listening["event"] == "listening"
        assert (listening["bind"], listening["backend"], listening["workers"]) == (
            "127.0.0.1", f"python-{backend}", 1)
        assert listening["fd_limit"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert 0 < listening["port"] < 65536
        server.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_thousand_keep_alive_requests_on_one_connection(backend):
    count = 2000
    with serving(backend) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
        for i in range(count):
            conn.request("GET", f"/{i % 3}")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert response.getheader("Content-Length") == str(DEFAULT_MSGSIZE)
            assert len(body) == DEFAULT_MSGSIZE
        conn.close()
        settled_snapshot(server, lambda s: s["closed"] == 1)
        stats = server.stop()

    assert stats["accepted"] == stats["closed"] == 1
    assert stats["requests"] == stats["responses_200"] == count
    assert stats["responses_4xx"] == 0
    # About one wakeup per request: the loop does not wake for nothing.
    assert count <= stats["events"] <= count + 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipelined_requests_are_all_answered_in_order(backend):
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
def test_large_pipelined_responses_flow_through_a_full_socket_buffer(backend):
    """5 MB of answers to one send: the server must wait for writability and go on where it stopped."""
    count, msgsize = 50, 100_000
    with serving(backend, "--msgsize", str(msgsize)) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(request() * count)
            for _ in range(count):
                assert_ok(read_response(reader), msgsize=msgsize)
            sock.sendall(request(connection="close"))
            assert_ok(read_response(reader), msgsize=msgsize, connection="close")
        settled_snapshot(server, lambda s: s["open"] == 0)
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == count + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_alive_follows_the_http_version_and_connection_header(backend):
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
def test_a_request_arriving_in_pieces_is_answered_once_complete(backend):
    with serving(backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            for _ in range(3):
                for byte in request(connection="keep-alive"):
                    sock.send(bytes([byte]))
                assert_ok(read_response(reader))
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_requests_get_an_error_and_close_and_the_server_serves_on(backend):
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
        settled_snapshot(server, lambda s: s["open"] == 0)
        stats = server.stop()

    assert stats["responses_4xx"] == len(MALFORMED)
    assert stats["responses_200"] == len(MALFORMED)
    assert stats["requests"] == 2 * len(MALFORMED)
    assert stats["accepted"] == stats["closed"] == 2 * len(MALFORMED)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dead_connections_are_held_without_wakeups(backend):
    # select cannot watch descriptors past FD_SETSIZE: pyhttpd refuses those (tested on its own).
    held = 900 if backend == "select" else 2000
    with serving(backend) as server, ExitStack() as stack:
        deadconn = subprocess.Popen(
            native.deadconn_command("--host", "127.0.0.1", "--port", str(server.port), "-n", str(held)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stack.callback(deadconn.wait, timeout=CLIENT_TIMEOUT)
        stack.callback(deadconn.send_signal, signal.SIGTERM)
        line = readline(deadconn, timeout=60)
        assert line, f"deadconn did not say it was ready: {deadconn.poll()=}"
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["held"] == held, ready

        # Every dead connection accepted and its half request read; then two seconds of quiet.
        settled_snapshot(server, lambda s: s["open"] >= held)
        before = quiet_snapshot(server)
        cpu_before = before["user_cpu_s"] + before["sys_cpu_s"]
        time.sleep(2.0)
        after = server.snapshot()
        assert after["wait_calls"] == before["wait_calls"]
        assert after["events"] == before["events"]
        assert after["open"] == held and after["requests"] == 0
        # No timer closed any: deadconn finds every one still open.
        deadconn.stdin.write("status\n")
        deadconn.stdin.flush()
        status = json.loads(readline(deadconn, timeout=60))
        assert (status["event"], status["held"]) == ("status", held)
        assert after["user_cpu_s"] + after["sys_cpu_s"] - cpu_before < 1.0  # nothing like a busy loop

        one_request_answered(server)
        stats = server.stop()

    assert stats["accepted"] >= held + 1
    assert stats["responses_200"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_snapshots_and_stats_agree_with_what_the_client_counted(backend):
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
        snapshot = settled_snapshot(server, lambda s: s["accepted"] == connections and s["open"] == len(socks))
        stats = server.stop()
        for sock in socks:
            sock.close()

    for counts in (snapshot, stats):
        assert counts["accepted"] == connections
        assert counts["requests"] == requests
        assert counts["responses_200"] == ok
        assert counts["responses_4xx"] == errors
        assert counts["refused"] == 0
        assert counts["closed"] + counts["open"] == counts["accepted"]
        assert counts["open"] == len(socks) <= counts["peak_open"]
        assert counts["events_per_wait"] == pytest.approx(counts["events"] / counts["wait_calls"], abs=1e-3)
    assert snapshot["event"] == "snapshot" and snapshot["pid"] == server.pid
    assert set(COUNTERS) <= set(stats)
    assert stats["user_cpu_s"] >= snapshot["user_cpu_s"] > 0
    assert stats["per_worker"] == [{"worker": 0, "pid": server.pid, **{
        k: v for k, v in stats.items() if k not in ("event", "backend", "workers", "fd_limit", "per_worker")}}]


def test_select_refuses_and_counts_connections_beyond_fd_setsize():
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


@pytest.mark.parametrize("backend", ["poll", "epoll"])
def test_out_of_descriptors_refuses_without_spinning(backend):
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
    assert stats["wait_calls"] < 10 * total


@pytest.mark.parametrize("args, complaint", [
    (["--backend", "kqueue"], "unknown backend 'kqueue': use one of select, poll, epoll, asyncio"),
    (["--backend", "default"], "unknown backend 'default'"),
    (["--port", "70000"], "--port"),
    (["--msgsize", "-1"], "--msgsize"),
    (["--bind", "localhost"], "--bind localhost: not a numeric"),
    (["--workers", "2"], "unrecognized arguments: --workers 2"),
])
def test_bad_usage_is_one_line_and_exit_2(args, complaint):
    proc = subprocess.run([sys.executable, str(native.PYHTTPD), *args], capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("pyhttpd: ") and proc.stderr.count("\n") == 1
    assert complaint in proc.stderr


def test_help_names_every_backend():
    out = subprocess.run([sys.executable, str(native.PYHTTPD), "--help"], capture_output=True, text=True,
                         check=True, timeout=CLIENT_TIMEOUT).stdout
    for backend in BACKENDS:
        assert backend in out
    for option in ("--backend", "--bind", "--port", "--backlog", "--msgsize"):
        assert option in out


def test_asyncio_out_of_descriptors_pauses_accepting_says_so_once_and_serves_on():
    """asyncio's own behaviour: no refusal, accepting paused for a second at a time; what it logs each time
    is said once, in one line, so that stderr neither floods nor, unread, blocks the server."""
    limit, total = 64, 200
    with serving("asyncio", nofile=limit) as server:
        socks = [connect(server) for _ in range(total)]
        snap = settled_snapshot(server, lambda s: s["accepted"] > 0)
        time.sleep(2.5)  # at least two retries of the paused accept
        for sock in socks:
            sock.close()
        settled_snapshot(server, lambda s: s["accepted"] == total and s["open"] == 0)
        one_request_answered(server)
        server.proc.send_signal(signal.SIGTERM)
        out, err = server.proc.communicate(timeout=CLIENT_TIMEOUT)

    stats = json.loads(out.splitlines()[-1])
    assert 0 < snap["accepted"] < limit and stats["refused"] == 0
    assert stats["accepted"] == total + 1 and stats["wait_calls"] < 10 * total
    # One line per kind of trouble, never a traceback or a flood. asyncio may add a second kind at shutdown,
    # when SIGTERM closes the listener while an accept retry is still scheduled ("Invalid file descriptor").
    lines = err.splitlines()
    assert sum("Too many open files (said once)" in line for line in lines) == 1, err
    assert all(line.endswith("(said once)") for line in lines) and len(lines) <= 2, err
