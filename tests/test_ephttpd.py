"""ephttpd's own behaviour beyond the HTTP contract it shares with pyhttpd (test_http_contract.py): a request
and the FIN in one event, no descriptor left behind (lingering ones included), its usage errors, and several
workers whose stats are summed; and the build the tests run: under AddressSanitizer and UBSan."""

from __future__ import annotations

import json
import signal
import socket
import subprocess

import pytest
from httpclient import (
    CLIENT_TIMEOUT,
    assert_ok,
    connect,
    read_response,
    request,
    serving,
    settled_snapshot,
)

from experiment import native
from experiment.plan import SERVER_BACKENDS as BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_and_the_fin_arriving_in_one_event_are_answered_and_closed(build_dir, backend):
    """The server is stopped while the request and the client's FIN arrive, so that one event reports
    both: a short read drains the request but not the EOF, which edge-triggered delivery will not
    announce again."""
    with serving("ephttpd", backend) as server:
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_descriptor_is_left_after_thousands_of_connections(build_dir, backend):
    rounds, per_round = 10, 500  # per_round + the server's own descriptors stays below select's FD_SETSIZE
    with serving("ephttpd", backend) as server:
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
def test_a_lingering_connection_closes_when_the_fin_comes_with_its_last_data(build_dir, backend):
    """After an error the server sends its FIN and reads on until the client's. Clients that go on sending
    (more of a body after a 405, more bytes after a 400) and then close or shut down: the server is stopped
    while their last bytes and their FIN arrive, so that one event reports both. A short read drains the
    bytes but not the EOF, which an edge-triggered backend does not announce again: a lingering connection
    must read on to EAGAIN, or its descriptor stays open for good."""
    pairs = 20
    with serving("ephttpd", backend) as server:
        baseline = native.open_fds(server.pid)
        clients = []
        for i in range(2 * pairs):
            sock = connect(server)
            reader = sock.makefile("rb")
            clients.append((sock, reader))
            if i % 2:
                sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                assert read_response(reader)[0] == 405
            else:
                sock.sendall(b"HELLO\r\n")
                assert read_response(reader)[0] == 400
            assert reader.read() == b""  # the server's FIN: it lingers
        server.proc.send_signal(signal.SIGSTOP)
        try:
            for i, (sock, reader) in enumerate(clients):
                sock.sendall(b"x" * 1000)
                if i % 2:
                    reader.close()
                    sock.close()
                else:
                    sock.shutdown(socket.SHUT_WR)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        settled_snapshot(server, lambda s: s["open"] == 0)
        assert native.open_fds(server.pid) == baseline
        for sock, reader in clients:
            reader.close()
            sock.close()
        stats = server.stop()

    assert stats["accepted"] == stats["closed"] == 2 * pairs
    assert stats["responses_4xx"] == 2 * pairs


def test_the_programs_under_test_are_built_with_asan_and_ubsan(build_dir):
    """So that a memory error or undefined behaviour fails the test that provokes it (native.Ephttpd.stop)."""
    for program in ("ephttpd", "pipetest"):
        linked = subprocess.run(["ldd", str(build_dir / program)], capture_output=True, text=True,
                                check=True).stdout
        assert "libasan" in linked and "libubsan" in linked, program


def test_unknown_backend_exits_2_naming_the_valid_ones(build_dir):
    proc = subprocess.run([str(build_dir / "ephttpd"), "--backend", "kqueue", "--port", "0"],
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=native.sanitized_env())
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("ephttpd: ")
    assert "kqueue" in proc.stderr
    for name in BACKENDS:
        assert name in proc.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_both_accept_and_their_stats_are_summed(build_dir, backend, tmp_path):
    connections, per_connection = 200, 5
    ready_file = tmp_path / "ready.json"
    with serving("ephttpd", backend, "--workers", "2", "--ready-file", str(ready_file)) as server:
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
