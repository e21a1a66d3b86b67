"""The HTTP contract every server of ours keeps, on every backend it has (ephttpd in C, pyhttpd in Python):
keep-alive, pipelining in order, responses larger than a socket buffer, HEAD, an empty line before a request
ignored, bad requests answered then closed, a closing response followed by our FIN and not a reset, dead
connections held without wakeups, descriptor limits met by refusing, and counters that agree with what the
client counted. A measurement compares backends only because every one of them keeps this contract."""

from __future__ import annotations

import http.client
import time

import pytest
from httpclient import (
    CLIENT_TIMEOUT,
    DEFAULT_MSGSIZE,
    FD_SETSIZE,
    assert_closed,
    assert_ok,
    connect,
    deadconn,
    head_request,
    next_event,
    one_request_answered,
    quiet_snapshot,
    read_response,
    request,
    send,
    serving,
    settled_snapshot,
)

from experiment.catalog import EPHTTPD_BACKENDS as SERVER_BACKENDS
from experiment.catalog import SERVERS

PYTHON_BACKENDS = SERVERS["python"].backends


def pairs(ephttpd=SERVER_BACKENDS, pyhttpd=PYTHON_BACKENDS) -> list:
    """(program, backend) for pytest.mark.parametrize, named like "ephttpd-epoll"."""
    return [pytest.param(program, backend, id=f"{program}-{backend}")
            for program, backends in (("ephttpd", ephttpd), ("pyhttpd", pyhttpd)) for backend in backends]


EVERY_BACKEND = pairs()
# Python answers a request in tens of microseconds, C in a few: fewer of them, the same check.
KEEP_ALIVE_REQUESTS = {"ephttpd": 10_000, "pyhttpd": 2_000}
DEAD_HELD = {"ephttpd": 5000, "pyhttpd": 2000}
# select watches only descriptors below FD_SETSIZE, beside the ones the server holds itself (an interpreter
# holds more); what it does past them is tested on its own.
DEAD_HELD_UNDER_SELECT = {"ephttpd": 1000, "pyhttpd": 900}
COUNTERS = ("accepted", "refused", "closed", "open", "requests", "responses_200", "responses_4xx", "wait_calls",
            "events", "peak_open", "user_cpu_s", "sys_cpu_s")

MALFORMED = [
    ("bad request line", b"HELLO\r\n\r\n", 400),
    ("missing version", b"GET /\r\n\r\n", 400),
    ("HTTP/2 request line", b"GET / HTTP/2.0\r\n\r\n", 400),
    ("garbage bytes", bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]), 400),
    ("lone blank line", b"\r\n\r\n", 400),
    ("header without colon", b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n", 400),
    ("GET with a body", b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("HEAD with a body", b"HEAD / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("9 KiB header", b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * 9216 + b"\r\n\r\n", 431),
    ("POST", b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    ("DELETE", b"DELETE /x HTTP/1.0\r\n\r\n", 405),
]


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_thousands_of_keep_alive_requests_on_one_connection(build_dir, program, backend):
    count = KEEP_ALIVE_REQUESTS[program]
    with serving(program, backend) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
        for i in range(count):
            conn.request("GET", f"/{i}")
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
    # One readable event per request, none for the writes: the loop does not wake for nothing.
    assert count <= stats["events"] <= count + 10


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_pipelined_requests_are_all_answered_in_order(build_dir, program, backend):
    count = 100
    burst = b"".join(request(f"/{i}") for i in range(count - 1)) + request("/last", connection="close")
    with serving(program, backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(burst)
            for _ in range(count - 1):
                assert_ok(read_response(reader))
            assert_ok(read_response(reader), connection="close")
            assert reader.read() == b""
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == count


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_large_pipelined_responses_flow_through_a_full_socket_buffer(build_dir, program, backend):
    """5 MB of answers to one send: the server must wait for writability and go on where it stopped."""
    count, msgsize = 50, 100_000
    with serving(program, backend, "--msgsize", str(msgsize)) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(request() * count)
            for _ in range(count):
                assert_ok(read_response(reader), msgsize=msgsize)
            sock.sendall(request(connection="close"))
            assert_ok(read_response(reader), msgsize=msgsize, connection="close")
        settled_snapshot(server, lambda s: s["open"] == 0)
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == count + 1


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_keep_alive_follows_the_http_version_and_connection_header(build_dir, program, backend):
    with serving(program, backend) as server:
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


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_a_request_arriving_in_pieces_is_answered_once_complete(build_dir, program, backend):
    with serving(program, backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            for _ in range(3):
                for byte in request(connection="keep-alive"):
                    sock.send(bytes([byte]))
                assert_ok(read_response(reader))
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == 3


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_head_is_answered_with_the_head_of_get_and_no_body(build_dir, program, backend):
    """RFC 9110 section 9.1: a general-purpose server MUST support HEAD. The answer is GET's head, its
    Content-Length that of GET's body, and no body: were one sent, the next response would not begin where
    the client reads it, nor would the connection end after the last."""
    with serving(program, backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(request() + head_request() + head_request() + request() + head_request(connection="close"))
            get = read_response(reader)
            assert_ok(get)
            for _ in range(2):
                assert read_response(reader, to_head=True) == (200, get[1], b"")
            assert_ok(read_response(reader))
            assert read_response(reader, to_head=True) == (200, {**get[1], "connection": "close"}, b"")
            assert reader.read() == b""
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(head_request(version="1.0"))
            assert read_response(reader, to_head=True) == (200, {**get[1], "connection": "close"}, b"")
            assert reader.read() == b""
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == 6
    assert stats["responses_4xx"] == 0


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_a_pipeline_mixing_get_and_head_is_answered_in_order_through_a_full_socket_buffer(build_dir, program,
                                                                                         backend):
    count, msgsize = 60, 100_000
    heads = [i % 3 == 1 or i % 7 == 0 for i in range(count)]
    with serving(program, backend, "--msgsize", str(msgsize)) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(b"".join(head_request() if head else request() for head in heads))
            for head in heads:
                status, headers, body = read_response(reader, to_head=head)
                assert (status, headers["content-length"], len(body)) == (200, str(msgsize), 0 if head else msgsize)
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == count


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_an_empty_line_before_a_request_line_is_ignored(build_dir, program, backend):
    """RFC 9112 section 2.2: a server SHOULD ignore at least one empty line received before a request line
    (a client may end a request with an extra CRLF). One is ignored; two are a malformed request (MALFORMED)."""
    with serving(program, backend) as server:
        with connect(server) as sock, sock.makefile("rb") as reader:
            sock.sendall(b"\r\n" + request() + b"\r\n" + request() + b"\n" + request())
            for _ in range(3):
                assert_ok(read_response(reader))
            for byte in b"\r\n" + request(connection="close"):  # a CR alone may still begin the empty line
                sock.send(bytes([byte]))
            assert_ok(read_response(reader), connection="close")
            assert reader.read() == b""
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == 4
    assert stats["responses_4xx"] == 0


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_a_closing_200_with_input_unread_ends_in_our_fin_not_a_reset(build_dir, program, backend):
    """A 200 that ends the connection ("Connection: close", or HTTP/1.0) while more input is on its way: a
    socket closed with input unread, or receiving more, answers with a reset, which can destroy the response
    before the client reads it and is never the orderly end the client is owed. The server sends its FIN
    and reads on until the client closes."""
    unread = 1 << 20  # far more than one read takes
    with serving(program, backend) as server:
        for head in (request(connection="close"), request(version="1.0")):
            with connect(server) as sock, sock.makefile("rb") as reader:
                sock.sendall(head + b"x" * unread)
                assert_ok(read_response(reader), connection="close")
                assert reader.read() == b""
        settled_snapshot(server, lambda s: s["open"] == 0)
        stats = server.stop()

    assert stats["requests"] == stats["responses_200"] == 2


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_malformed_requests_get_an_error_and_close_and_the_server_serves_on(build_dir, program, backend):
    with serving(program, backend) as server:
        for name, data, expected in MALFORMED:
            with connect(server) as sock, sock.makefile("rb") as reader:
                sock.sendall(data)
                status, headers, _ = read_response(reader)
                assert (name, status, headers["connection"]) == (name, expected, "close")
                if expected == 405:
                    assert headers["allow"] == "GET, HEAD"
                assert_closed(sock)
            one_request_answered(server)
        settled_snapshot(server, lambda s: s["open"] == 0)
        stats = server.stop()

    assert stats["responses_4xx"] == len(MALFORMED)
    assert stats["responses_200"] == len(MALFORMED)
    assert stats["requests"] == 2 * len(MALFORMED)
    assert stats["accepted"] == stats["closed"] == 2 * len(MALFORMED)


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_dead_connections_are_held_without_wakeups(build_dir, program, backend):
    held = (DEAD_HELD_UNDER_SELECT if backend == "select" else DEAD_HELD)[program]
    # deadconn gives up (and says why) well before the test stops waiting for it.
    with serving(program, backend) as server, deadconn("--host", "127.0.0.1", "--port", str(server.port),
                                                       "-n", str(held), "--timeout", "30") as proc:
        ready = next_event(proc)
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
        send(proc, "status")
        status = next_event(proc)
        assert (status["event"], status["held"]) == ("status", held)
        assert after["user_cpu_s"] + after["sys_cpu_s"] - cpu_before < 1.0  # nothing like a busy loop

        one_request_answered(server)
        stats = server.stop()

    assert stats["accepted"] >= held + 1
    assert stats["responses_200"] == 1


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_snapshots_and_stats_agree_with_what_the_client_counted(build_dir, program, backend):
    connections = requests = ok = errors = 0
    with serving(program, backend) as server:
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
    assert stats["user_cpu_s"] >= snapshot["user_cpu_s"] and stats["sys_cpu_s"] >= snapshot["sys_cpu_s"]
    assert snapshot["user_cpu_s"] + snapshot["sys_cpu_s"] > 0
    if program == "pyhttpd":  # an interpreter's start alone is user time; a C server's may round to none
        assert snapshot["user_cpu_s"] > 0
    assert stats["per_worker"] == [{"worker": 0, "pid": server.pid, **{
        k: v for k, v in stats.items() if k not in ("event", "backend", "workers", "fd_limit", "per_worker")}}]


@pytest.mark.parametrize("program, backend", pairs(ephttpd=["select"], pyhttpd=["select"]))
def test_select_refuses_and_counts_connections_beyond_fd_setsize(build_dir, program, backend):
    total = 1100
    with serving(program, backend) as server:
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


# asyncio, out of descriptors, pauses accepting instead of refusing: test_pyhttpd.py tests that on its own.
@pytest.mark.parametrize("program, backend", pairs(pyhttpd=[b for b in PYTHON_BACKENDS if b != "asyncio"]))
def test_out_of_descriptors_refuses_without_spinning(build_dir, program, backend):
    limit, total = 64, 200
    with serving(program, backend, nofile=limit) as server:
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
