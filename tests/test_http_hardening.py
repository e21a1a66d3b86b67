"""What hostile or merely unusual clients found in our servers, held as part of the HTTP contract on every
backend of ephttpd and pyhttpd: a lingering close that must see the client's FIN even when it arrives with
the last data (edge-triggered epoll reports it once), a close after a 200 that must not turn unread input into
a reset, empty lines between pipelined requests (RFC 9112 §2.2), HEAD (RFC 9110 §9.1), and one connection or
a flood of connects that must not keep the loop from everyone else (through the counters, never a timing).

The races are made deterministic by stopping the server (SIGSTOP) while the client's bytes and FIN arrive."""

from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager

import pytest
from httpclient import (
    CLIENT_TIMEOUT,
    DEFAULT_MSGSIZE,
    assert_ok,
    connect,
    read_response,
    request,
    serving,
    settled_snapshot,
)

from experiment.catalog import EV_BACKENDS, SERVERS

EVERY_BACKEND = [pytest.param(program, backend, id=f"{program}-{backend}")
                 for program, backends in (("ephttpd", EV_BACKENDS), ("pyhttpd", SERVERS["python"].backends))
                 for backend in backends]
EPHTTPD_BACKENDS = [pytest.param("ephttpd", backend, id=f"ephttpd-{backend}") for backend in EV_BACKENDS]
LINGERING_CLIENTS = 40


@contextmanager
def stopped(server):
    """The server stopped (SIGSTOP) for the block: what the clients send meanwhile arrives all at once."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def answered_then_lingering(server, head: bytes, status: int) -> tuple[socket.socket, object]:
    """A connection whose request got `status` and the server's FIN: the server now discards its input."""
    sock = connect(server)
    reader = sock.makefile("rb")
    sock.sendall(head)
    assert read_response(reader)[0] == status
    assert sock.recv(1) == b"", "the server shut its side down after the error"
    return sock, reader


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
@pytest.mark.parametrize("head, status, ending", [
    (b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nfirst piece of the body", 405, "close"),
    (b"NOT A REQUEST LINE\r\n\r\n", 400, "shutdown"),
], ids=["405-then-body-and-close", "400-then-more-and-shutdown"])
def test_a_lingering_close_sees_a_fin_that_arrives_with_the_last_data(build_dir, program, backend, head, status,
                                                                      ending):
    with serving(program, backend) as server:
        clients = [answered_then_lingering(server, head, status) for _ in range(LINGERING_CLIENTS)]
        with stopped(server):
            for sock, reader in clients:
                sock.sendall(b"the rest of what the client had to say" * 10)
                if ending == "close":
                    reader.close()  # the file object holds the socket open too
                    sock.close()
                else:
                    sock.shutdown(socket.SHUT_WR)
        snap = settled_snapshot(server, lambda s: s["open"] == 0)
        assert snap["closed"] == snap["accepted"] == LINGERING_CLIENTS
        for sock, reader in clients:
            reader.close()
            sock.close()
        server.stop()


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
@pytest.mark.parametrize("closing", [request(connection="close"), request(version="1.0")], ids=["close", "1.0"])
def test_a_closing_200_with_unread_input_ends_in_an_orderly_eof_not_a_reset(build_dir, program, backend, closing):
    """More input than one read takes follows a request that closes the connection: closing at once would
    leave it unread and send a reset, which can destroy the response before the client reads it."""
    with serving(program, backend) as server, connect(server) as sock, sock.makefile("rb") as reader:
        with stopped(server):
            sock.sendall(closing + b"x" * (256 << 10))
        status, headers, body = read_response(reader)
        assert (status, headers["connection"], len(body)) == (200, "close", DEFAULT_MSGSIZE)
        assert reader.read(1) == b"", "an orderly end of the response, not ECONNRESET"
        sock.shutdown(socket.SHUT_WR)
        settled_snapshot(server, lambda s: s["open"] == 0)
        server.stop()


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_empty_lines_before_and_between_pipelined_requests_are_ignored(build_dir, program, backend):
    with serving(program, backend) as server, connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"\r\n" + request("/a") + b"\r\n" + request("/b") + b"\n" + request("/c"))
        for _ in range(3):
            assert_ok(read_response(reader))
        sock.sendall(b"\r\n")  # alone in its read: still nothing to answer, and no reason to close
        sock.sendall(request("/d"))
        assert_ok(read_response(reader))
        stats = server.stop()
        assert (stats["requests"], stats["responses_200"], stats["responses_4xx"]) == (4, 4, 0)


@pytest.mark.parametrize("program, backend", EVERY_BACKEND)
def test_head_gets_the_headers_of_get_and_no_body(build_dir, program, backend):
    with serving(program, backend) as server, connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n" + request("/after"))
        status_line = reader.readline()
        assert status_line.startswith(b"HTTP/1.1 200 ")
        headers = {}
        while (line := reader.readline()) != b"\r\n":
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        assert (headers["content-length"], headers["connection"]) == (str(DEFAULT_MSGSIZE), "keep-alive")
        assert_ok(read_response(reader)), "the next response starts right after HEAD's headers: no body between"
        sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        while reader.readline() not in (b"\r\n", b""):
            pass
        assert reader.read(1) == b"", "HTTP/1.0 HEAD closes, with no body"
        stats = server.stop()
        assert (stats["requests"], stats["responses_200"]) == (3, 3)


@pytest.mark.parametrize("program, backend", EPHTTPD_BACKENDS)
def test_one_connection_streaming_requests_is_cut_off_by_the_read_cap_and_still_fully_answered(
        build_dir, program, backend):
    """A connection whose every read fills the buffer is left, after ephttpd's cap of reads per event (1 here,
    so that the first full read reaches it), on the loop's own ready list and resumed after the others'
    events: edge-triggered epoll and io_uring would not announce it again."""
    requests = (4 << 20) // len(request())
    burst = request() * requests
    answered = {"bytes": 0}
    with serving(program, backend, "--reads-per-event", "1") as server, connect(server) as sock, \
            connect(server) as other:
        expected = requests * len(_response_bytes(server))  # one more request, on a connection of its own
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

        def drain():
            while answered["bytes"] < expected:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                answered["bytes"] += len(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        with stopped(server):
            sender = threading.Thread(target=sock.sendall, args=(burst,), daemon=True)
            sender.start()
            sender.join(0.5)  # as much as the buffers take while the server is stopped
        with other.makefile("rb") as other_reader:
            other.sendall(request())
            assert_ok(read_response(other_reader))
        sender.join(CLIENT_TIMEOUT * 6)
        reader.join(CLIENT_TIMEOUT * 6)
        assert answered["bytes"] == expected
        stats = server.stop()
    assert stats["requests"] == requests + 2
    assert stats["reads_capped"] > 0


@pytest.mark.parametrize("program, backend", EPHTTPD_BACKENDS)
def test_a_flood_of_connects_is_accepted_in_capped_rounds_and_every_one_is_served(build_dir, program, backend):
    count = 300
    with serving(program, backend) as server:
        with stopped(server):
            socks = [socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
                     for _ in range(count)]
        for sock in socks:
            sock.sendall(request(connection="close"))
        for sock in socks:
            with sock, sock.makefile("rb") as reader:
                assert_ok(read_response(reader), connection="close")
        stats = server.stop()
    assert stats["accepted"] == count
    assert stats["accepts_capped"] > 0


def _response_bytes(server) -> bytes:
    """ephttpd's keep-alive 200, as the client receives it."""
    with connect(server) as sock, sock.makefile("rb") as reader:
        sock.sendall(request())
        status_line = reader.readline()
        head = status_line
        while (line := reader.readline()) != b"\r\n":
            head += line
        return head + b"\r\n" + reader.read(DEFAULT_MSGSIZE)
