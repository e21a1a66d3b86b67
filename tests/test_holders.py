"""ephttpd --dead-holders: dead connections held by helper processes in the server's own epoll set
(images/ephttpd/holders.c), past what one process may open. Real processes: the sanitized ephttpd, its holders,
deadconn on the holders' port and a keep-alive client on the server's."""

from __future__ import annotations

import os
import resource
import signal

import pytest
from httpclient import (
    CLIENT_TIMEOUT,
    assert_ok,
    connect,
    deadconn,
    next_event,
    read_response,
    request,
    serving,
    settled_snapshot,
)

from experiment.bench import native

SHAREABLE = ["epoll", "epoll-et"]
# What a holder keeps open besides its connections: stderr, the shared epoll set, the dead-connection listener
# and its channel from the server (holders.c).
HOLDER_OWN_FDS = 4
# The server's own items in its set beside the holders': its listener and its wake-up pipe.
SERVER_OWN_ITEMS = 2
SETTLE = 1200  # snapshots 50 ms apart: a minute for tens of thousands of connections to open or close


def holders_of(snap: dict) -> dict:
    return snap["dead_holders"]


def holder_fds(pid: int) -> int:
    return native.open_fds(pid)


def keep_alive_answered(sock, reader) -> None:
    sock.sendall(request())
    assert_ok(read_response(reader))


@pytest.mark.parametrize("backend", SHAREABLE)
def test_thirty_thousand_dead_connections_through_holders_beside_a_keep_alive_client(build_dir, backend):
    """More dead connections than one process may open: two holders take them, the server's set holds them
    all, the server itself opens none of them and answers its keep-alive client throughout; when deadconn
    closes them every holder is back to its own descriptors and the set to the server's items."""
    dead = 30_000
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    holders = -(-dead // (hard - 64)) + 1  # one more than the cap strictly needs
    with serving("ephttpd", backend, "--dead-holders", str(holders)) as server:
        dead_port = server.listening["dead_port"]
        assert server.listening["dead_holders"] == holders and dead_port not in (0, server.port)
        server_fds = native.open_fds(server.pid)
        start = holders_of(server.snapshot())
        pids = [h["pid"] for h in start["per_holder"]]
        assert [holder_fds(pid) for pid in pids] == [HOLDER_OWN_FDS] * holders
        assert start["interest_set"] == SERVER_OWN_ITEMS and start["open"] == 0

        with connect(server) as sock, sock.makefile("rb") as reader:
            keep_alive_answered(sock, reader)
            with deadconn("--port", str(dead_port), "-n", str(dead), "--timeout", "120") as proc:
                ready = next_event(proc, timeout=180)
                assert (ready["event"], ready["held"]) == ("ready", dead), ready
                snap = settled_snapshot(server, lambda s: holders_of(s)["open"] == dead, attempts=SETTLE)
                held = holders_of(snap)
                # The kernel's count of the set: every dead connection, the server's own items, the client.
                assert held["interest_set"] == dead + SERVER_OWN_ITEMS + 1
                assert held["alive"] == holders and held["lost"] == 0
                opens = [h["open"] for h in held["per_holder"]]
                assert sum(opens) == dead
                assert all(h["refused"] == 0 for h in held["per_holder"])
                assert max(opens) <= held["cap"] < hard
                assert [holder_fds(pid) for pid in pids] == [n + HOLDER_OWN_FDS for n in opens]
                # The server opened none of them: its own descriptors are those it had, and the client's.
                assert native.open_fds(server.pid) == server_fds + 1
                assert snap["open"] == 1
                keep_alive_answered(sock, reader)

                proc.send_signal(signal.SIGTERM)
                assert next_event(proc) == {"event": "closed", "held": dead}
                assert proc.wait(timeout=CLIENT_TIMEOUT * 6) == 0
            snap = settled_snapshot(server, lambda s: holders_of(s)["open"] == 0, attempts=SETTLE)
            held = holders_of(snap)
            assert held["interest_set"] == SERVER_OWN_ITEMS + 1
            assert [h["closed"] for h in held["per_holder"]] == [h["accepted"] for h in held["per_holder"]]
            assert sum(h["accepted"] for h in held["per_holder"]) == dead
            assert [holder_fds(pid) for pid in pids] == [HOLDER_OWN_FDS] * holders
            keep_alive_answered(sock, reader)
        settled_snapshot(server, lambda s: s["open"] == 0)
        stats = server.stop()

    assert stats["dead_holders"]["interest_set"] == SERVER_OWN_ITEMS
    assert stats["responses_200"] == 3
    assert stats["accepted"] == 1  # the client alone: dead connections never reach the server's listener


@pytest.mark.parametrize("backend", SHAREABLE)
def test_a_holder_that_dies_is_reported_its_connections_lost_and_the_server_serves_on(build_dir, backend):
    dead, holders = 3000, 3
    with serving("ephttpd", backend, "--dead-holders", str(holders)) as server:
        with connect(server) as sock, sock.makefile("rb") as reader, \
                deadconn("--port", str(server.listening["dead_port"]), "-n", str(dead)) as proc:
            assert next_event(proc)["held"] == dead
            held = holders_of(settled_snapshot(server, lambda s: holders_of(s)["open"] == dead))
            victim = max(held["per_holder"], key=lambda h: h["open"])
            assert victim["open"] > 0
            os.kill(victim["pid"], signal.SIGKILL)

            after = holders_of(settled_snapshot(server, lambda s: holders_of(s)["alive"] == holders - 1))
            dead_one = after["per_holder"][victim["holder"]]
            assert (dead_one["alive"], dead_one["lost"], dead_one["exit"]) == (
                False, victim["open"], f"killed by signal {signal.SIGKILL}")
            assert after["lost"] == victim["open"]
            assert after["open"] == dead - victim["open"]
            # The kernel took the dead holder's connections out of the set when it closed them.
            assert after["interest_set"] == dead - victim["open"] + SERVER_OWN_ITEMS + 1
            keep_alive_answered(sock, reader)
            one_more = connect(server)
            with one_more, one_more.makefile("rb") as more:
                keep_alive_answered(one_more, more)
        stats = server.stop()

    assert stats["dead_holders"]["alive"] == holders - 1
    assert stats["dead_holders"]["lost"] == victim["open"]
    assert stats["responses_200"] == 2


def refusal(server: native.Ephttpd) -> str:
    """What a server that must refuse to start said on stderr (start() may have read it already); it exits 2."""
    with pytest.raises(native.ProgramError) as error:
        server.start()
    assert server.running.wait(timeout=CLIENT_TIMEOUT) == 2
    return f"{error.value}{server.running.stderr.read()}".strip()


@pytest.mark.parametrize("backend", ["poll", "select", "io_uring", "aio-poll"])
def test_holders_need_a_shareable_backend(build_dir, backend):
    server = native.Ephttpd(backend, ["--dead-holders", "2"], build=native.SANITIZED)
    err = refusal(server)
    if backend in ("io_uring", "aio-poll") and f"ephttpd: {backend}:" in err:
        pytest.skip(err.strip())
    assert err.splitlines()[-1] == (f"ephttpd: --dead-holders needs an interest set other processes can share: "
                                    f"--backend epoll or epoll-et, not {backend} (see images/ev/ev.h, foreign items)")


def test_holders_need_one_worker(build_dir):
    server = native.Ephttpd("epoll", ["--dead-holders", "2", "--workers", "2"], build=native.SANITIZED)
    assert refusal(server).splitlines()[-1] == (
        "ephttpd: --dead-holders works with one worker: the holders share that worker's interest set "
        "(drop --workers or --dead-holders)")
