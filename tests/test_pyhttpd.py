"""pyhttpd's own behaviour beyond the HTTP contract it shares with ephttpd (test_http_contract.py): its
listening line, its usage errors, and asyncio's way of running out of descriptors."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time

import pytest
from httpclient import CLIENT_TIMEOUT, connect, one_request_answered, serving, settled_snapshot

from experiment.bench import native
from experiment.catalog import SERVERS

BACKENDS = SERVERS["python"].backends


@pytest.mark.parametrize("backend", BACKENDS)
def test_listening_line_names_the_backend_and_the_fd_limit(backend):
    with serving("pyhttpd", backend) as server:
        listening = server.listening
        assert listening["event"] == "listening"
        assert (listening["bind"], listening["backend"], listening["workers"]) == (
            "127.0.0.1", f"python-{backend}", 1)
        assert listening["fd_limit"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert 0 < listening["port"] < 65536
        server.stop()


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
    with serving("pyhttpd", "asyncio", nofile=limit) as server:
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
