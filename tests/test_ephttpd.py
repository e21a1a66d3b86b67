"""ephttpd's own behaviour beyond the HTTP contract it shares with pyhttpd (test_http_contract.py): a request
and the FIN in one event, no descriptor left behind (lingering ones included), no connection holding the loop,
one recv and one send per keep-alive request (io_uring-recv: one send SQE and no recv or send call), its usage
errors, io_uring-recv's exit on a kernel feature missing, several workers whose stats are summed, and the build
the tests run: under AddressSanitizer and UBSan."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

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

from experiment.bench import native
from experiment.catalog import EPHTTPD_BACKENDS as BACKENDS
from experiment.catalog import EV_BACKENDS as READINESS_BACKENDS
from experiment.catalog import URING_RECV


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


def unread_bytes(local_port: int, remote_port: int) -> int:
    """The receive queue of the loopback socket local_port -> remote_port, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, _state, queues = line.split()[1:5]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                return int(queues.split(":")[1], 16)
    raise AssertionError(f"no socket 127.0.0.1:{local_port} -> :{remote_port} in /proc/net/tcp")


# ephttpd.c's: a read that fills its buffer ends a connection's turn, and so do that many accepts the listener's.
READ_SIZE = 65536
ACCEPTS_PER_TURN = 64


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_burst_on_one_connection_is_read_in_turns_while_another_is_served(build_dir, backend):
    """Megabytes of pipelined requests on one connection (long targets, so that their answers stay small)
    wait in the server's socket as it resumes from SIGSTOP, beside another connection's request. A read that
    fills the buffer ends a connection's turn (reads_capped) and the ready list gives it the next, after a
    wait that does not block (ready_served): on every backend, edge-triggered ones too, which would not
    report the socket again. Every request is answered. io_uring-recv has no such caps (the kernel bounds a
    multishot recv's turn itself): it must answer every request all the same."""
    count = 600
    burst = request("/" + "x" * 7000) * count
    with serving("ephttpd", backend) as server, connect(server) as sock, connect(server) as other:
        settled_snapshot(server, lambda s: s["open"] == 2)
        server.proc.send_signal(signal.SIGSTOP)
        try:
            other.sendall(request())
            sock.setblocking(False)
            sent = 0
            try:
                while sent < len(burst):
                    sent += sock.send(burst[sent:])
            except BlockingIOError:
                pass
            assert unread_bytes(server.port, sock.getsockname()[1]) > READ_SIZE, "the premise: a read will fill"
        finally:
            server.proc.send_signal(signal.SIGCONT)
        sock.settimeout(CLIENT_TIMEOUT)
        with ThreadPoolExecutor(1) as sender:
            rest = sender.submit(sock.sendall, burst[sent:])
            with other.makefile("rb") as reader:
                assert_ok(read_response(reader))
            with sock.makefile("rb") as reader:
                for _ in range(count):
                    assert_ok(read_response(reader))
            rest.result(CLIENT_TIMEOUT)
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == count + 1
    if backend in READINESS_BACKENDS:
        assert stats["reads_capped"] >= 1
        assert stats["ready_served"] >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_queue_of_connections_is_accepted_in_turns(build_dir, backend):
    """Hundreds of connections queue while the server is stopped: the listener's turn ends after
    ACCEPTS_PER_TURN of them (accepts_capped), and the ready list gives it the next (ready_served) without a
    new wakeup, which an edge-triggered backend would not give. Every connection is answered, by io_uring-recv
    too, whose multishot accept takes one connection per completion and has no such cap."""
    count = 300
    with serving("ephttpd", backend) as server:
        server.proc.send_signal(signal.SIGSTOP)
        try:
            socks = [connect(server) for _ in range(count)]
        finally:
            server.proc.send_signal(signal.SIGCONT)
        for sock in socks:
            sock.sendall(request(connection="close"))
        for sock in socks:
            with sock, sock.makefile("rb") as reader:
                assert_ok(read_response(reader), connection="close")
        stats = server.stop()

    assert stats["accepted"] == stats["responses_200"] == count
    if backend in READINESS_BACKENDS:
        assert stats["accepts_capped"] >= count // ACCEPTS_PER_TURN
        assert stats["ready_served"] >= 1


@pytest.mark.needs_host("attaches strace to a running server: needs CAP_SYS_PTRACE", tools=["strace"])
@pytest.mark.parametrize("backend", READINESS_BACKENDS)
def test_a_keep_alive_request_costs_one_recv_one_send_and_one_wait(build_dir, backend, tmp_path):
    """The steady state the measurements rest on: per keep-alive request one recv, one send and one wait that
    returns its event; caps, the ready list and lingering closes add nothing to it."""
    count = 200
    trace = tmp_path / "strace.out"
    with serving("ephttpd", backend) as server, connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request())
        assert_ok(read_response(reader))
        before = settled_snapshot(server, lambda s: s["responses_200"] == 1)
        strace = subprocess.Popen(["strace", "-p", str(server.pid), "-o", str(trace), "-e",
                                   "trace=recvfrom,recvmsg,read,sendto,sendmsg,write,writev"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            attached = strace.stderr.readline()
            assert "attached" in attached, attached
            for _ in range(count):
                sock.sendall(request())
                assert_ok(read_response(reader))
        finally:
            strace.send_signal(signal.SIGINT)
            strace.wait(CLIENT_TIMEOUT)
            strace.stderr.close()
        after = server.snapshot()
        server.stop()

    calls = [line.split("(")[0] for line in trace.read_text().splitlines() if "(" in line]
    assert (calls.count("recvfrom"), calls.count("sendto")) == (count, count)
    assert len(calls) == 2 * count, sorted(set(calls))
    assert after["wait_calls"] - before["wait_calls"] == count


def keep_alive_round(server, sock, reader, count: int) -> tuple[dict, dict]:
    """count keep-alive requests one after another on sock; the snapshots before and after them."""
    before = settled_snapshot(server, lambda s: s["responses_200"] >= 1)
    for _ in range(count):
        sock.sendall(request())
        assert_ok(read_response(reader))
    return before, settled_snapshot(server, lambda s: s["responses_200"] == before["responses_200"] + count)


def test_io_uring_recv_counts_one_send_submitted_and_two_completions_per_keep_alive_request(build_dir):
    """io_uring-recv's counters, beside the shared ones: a keep-alive request arrives as one completion of the
    connection's multishot recv (nothing to submit: it stays armed) and its response goes out as one send SQE,
    which completes once. A readiness backend's lines have no such counters."""
    count = 300
    with serving("ephttpd", URING_RECV) as server, connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request())
        assert_ok(read_response(reader))
        before, after = keep_alive_round(server, sock, reader, count)
        stats = server.stop()
    assert after["submissions"] - before["submissions"] == count
    assert after["completions"] - before["completions"] == 2 * count
    assert after["events"] - before["events"] == count
    assert after["recv_rearmed"] == 0
    # At start: the wake-up pipe's poll and the accept; then the recv armed and a send per request.
    assert stats["submissions"] == 2 + 1 + (count + 1)
    with serving("ephttpd", "epoll") as server:
        snapshot = server.snapshot()
        server.stop()
    assert not {"submissions", "completions", "recv_rearmed"} & set(snapshot)


@pytest.mark.needs_host("attaches strace to a running server: needs CAP_SYS_PTRACE", tools=["strace"])
def test_io_uring_recv_serves_a_keep_alive_request_without_a_recv_or_send_call(build_dir, tmp_path):
    """The completion model's steady state: the kernel reads and writes, the loop only enters the ring, once
    to wait for the request and once to submit its send, whose completion that enter returns at once (2 per
    request at one connection; under many connections one enter serves many)."""
    count = 200
    trace = tmp_path / "strace.out"
    with serving("ephttpd", URING_RECV) as server, connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request())
        assert_ok(read_response(reader))
        settled_snapshot(server, lambda s: s["responses_200"] == 1)
        strace = subprocess.Popen(["strace", "-p", str(server.pid), "-o", str(trace), "-e",
                                   "trace=io_uring_enter,recvfrom,recvmsg,read,sendto,sendmsg,write,writev"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            attached = strace.stderr.readline()
            assert "attached" in attached, attached
            before, after = keep_alive_round(server, sock, reader, count)
        finally:
            strace.send_signal(signal.SIGINT)
            strace.wait(CLIENT_TIMEOUT)
            strace.stderr.close()
        server.stop()

    calls = [line.split("(")[0] for line in trace.read_text().splitlines() if "(" in line]
    # The snapshots' signals add a read of the wake-up pipe and a write of the line, a few each.
    assert not {"recvfrom", "recvmsg", "sendto", "sendmsg", "writev"} & set(calls), sorted(set(calls))
    assert count <= calls.count("io_uring_enter") <= 2 * count + 10
    assert after["wait_calls"] - before["wait_calls"] <= calls.count("io_uring_enter")


FEATURES = {"defer-taskrun": ("IORING_SETUP_DEFER_TASKRUN", "6.1"),
            "buffer-rings": ("IORING_REGISTER_PBUF_RING", "5.19"),
            "multishot-recv": ("IORING_RECV_MULTISHOT", "6.0")}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("feature", FEATURES)
def test_io_uring_recv_exits_2_naming_a_missing_kernel_feature_and_never_falls_back(build_dir, feature, workers):
    """This kernel has every feature the loop needs, so the check is told to find one missing
    (EPHTTPD_URING_PRETEND_MISSING): ephttpd must exit 2 before listening, naming the feature and the Linux
    release that brought it, and serve with no other backend. With workers the parent checks before forking."""
    proc = subprocess.run([str(build_dir / "ephttpd"), "--backend", URING_RECV, "--port", "0", "--workers",
                           str(workers)], capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                          env={**native.sanitized_env(), "EPHTTPD_URING_PRETEND_MISSING": feature})
    flag, release = FEATURES[feature]
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"ephttpd: {URING_RECV}: ")
    assert flag in proc.stderr and f"Linux {release}" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_io_uring_recv_refuses_an_unknown_pretended_feature(build_dir):
    proc = subprocess.run([str(build_dir / "ephttpd"), "--backend", URING_RECV, "--port", "0"], capture_output=True,
                          text=True, timeout=CLIENT_TIMEOUT,
                          env={**native.sanitized_env(), "EPHTTPD_URING_PRETEND_MISSING": "sqpoll"})
    assert proc.returncode == 2
    assert "sqpoll" in proc.stderr and all(name in proc.stderr for name in FEATURES)


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


def test_the_tests_run_the_programs_under_address_and_undefined_behaviour_sanitizers(build_dir):
    """Every test of the native programs runs this build: a sanitizer report aborts the program."""
    for program in ("ephttpd", "pipetest"):
        linked = subprocess.run(["ldd", str(build_dir / program)], capture_output=True, text=True).stdout
        assert "libasan" in linked and "libubsan" in linked, linked
