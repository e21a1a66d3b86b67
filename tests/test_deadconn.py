"""deadconn against a real ephttpd: exact counts across worker processes, growth on stdin and on a FIFO,
fast clear failures, half versus whole requests, source addresses, and a clean close."""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import socket
import subprocess
import time

import pytest
from httpclient import EVENT_TIMEOUT, deadconn, next_event, send, serving, settled_snapshot

from experiment.bench import native
from experiment.host import machine


def load_deadconn():
    """deadconn.py as a module, for its pure helpers."""
    spec = importlib.util.spec_from_file_location("deadconn", native.DEADCONN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def terminate(proc: subprocess.Popen) -> tuple[dict, int]:
    """SIGTERM: the "closed" event and the exit status."""
    proc.send_signal(signal.SIGTERM)
    closed = next_event(proc)
    return closed, proc.wait(timeout=EVENT_TIMEOUT)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def sockets_of(pid: int) -> int:
    folder = f"/proc/{pid}/fd"
    return sum(os.readlink(f"{folder}/{fd}").startswith("socket:") for fd in os.listdir(folder))


@pytest.mark.parametrize("limit", ["per-worker", "nofile"])
def test_five_thousand_across_worker_processes_with_exact_counts(build_dir, limit):
    total = 5000
    args, nofile = (["--per-worker", "2000"], None) if limit == "per-worker" else ([], 1100)
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", str(total), *args,
                                                         nofile=nofile) as proc:
        ready = next_event(proc)
        assert ready["event"] == "ready", ready
        assert ready["held"] == ready["target"] == total
        assert ready["workers"] >= 2
        if nofile:
            assert ready["fd_limit"] == nofile
            assert ready["per_worker_limit"] < nofile
        else:
            assert ready["per_worker_limit"] == 2000
        assert sum(ready["failures"].values()) == 0
        workers = children(proc.pid)
        assert len(workers) == ready["workers"]
        held_by_each = [sockets_of(pid) for pid in workers]
        # Each worker has its channel to the parent beside its connections.
        assert sum(held_by_each) == total + len(workers)
        assert max(held_by_each) <= ready["per_worker_limit"] + 1
        snap = settled_snapshot(server, lambda s: s["open"] == total)
        assert snap["accepted"] == total
        closed, status = terminate(proc)
        assert closed == {"event": "closed", "held": total}
        assert status == 0
        stats = server.stop()
    assert stats["accepted"] >= total
    assert stats["refused"] == 0


def test_grows_on_stdin_and_holds_after_stdin_ends(build_dir):
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", "1000") as proc:
        assert next_event(proc)["held"] == 1000
        send(proc, "grow 1500")
        ready = next_event(proc)
        assert (ready["event"], ready["held"], ready["target"]) == ("ready", 2500, 2500)
        assert ready["seconds"] > 0 and ready["rate_per_s"] > 0
        assert ("conntrack_drops" in ready) == os.path.exists("/proc/net/stat/nf_conntrack")
        send(proc, "status")
        status = next_event(proc)
        assert (status["event"], status["held"]) == ("status", 2500)
        proc.stdin.close()  # no more commands: deadconn goes on holding
        time.sleep(0.5)
        assert proc.poll() is None
        assert settled_snapshot(server, lambda s: s["open"] == 2500)["accepted"] == 2500
        closed, status = terminate(proc)
        assert closed["held"] == 2500 and status == 0


def test_grows_and_quits_on_the_control_fifo(build_dir, tmp_path):
    fifo = tmp_path / "control"
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", "1000",
                                                         "--control", str(fifo)) as proc:
        assert next_event(proc)["held"] == 1000
        with open(fifo, "w") as control:
            control.write("grow 1500\n")
        ready = next_event(proc)
        assert (ready["event"], ready["held"]) == ("ready", 2500)
        assert settled_snapshot(server, lambda s: s["open"] == 2500)["accepted"] == 2500
        with open(fifo, "w") as control:
            control.write("quit\n")
        assert next_event(proc) == {"event": "closed", "held": 2500}
        assert proc.wait(timeout=EVENT_TIMEOUT) == 0
        settled_snapshot(server, lambda s: s["open"] == 0)
    assert not fifo.exists(), "deadconn made the FIFO, so it removes it"


def test_an_unreachable_port_fails_at_once_as_refused(build_dir):
    port = machine.free_port()
    with deadconn("--port", str(port), "-n", "1000", "--timeout", "30") as proc:
        failed = next_event(proc)
        status = proc.wait(timeout=EVENT_TIMEOUT)
        err = proc.stderr.read()
    assert failed["event"] == "failed"
    assert failed["reason"] == "refused"
    assert failed["held"] == 0 and failed["target"] == 1000
    assert failed["failures"]["refused"] > 0
    assert status != 0
    assert len(err.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in err and "refused" in err
    assert "Traceback" not in err


def test_dead_connections_send_half_a_request(build_dir):
    dead = 500
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", str(dead)) as proc:
        assert next_event(proc)["held"] == dead
        snap = settled_snapshot(server, lambda s: s["open"] == dead)
        terminate(proc)
        stats = server.stop()
    assert snap["requests"] == 0 and snap["responses_200"] == 0
    assert stats["accepted"] == dead
    assert stats["requests"] == stats["responses_200"] == stats["responses_4xx"] == 0


def test_complete_connections_send_one_whole_request_each_and_stay_open(build_dir):
    count = 500
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", str(count),
                                                         "--mode", "complete", "--per-worker", "200") as proc:
        ready = next_event(proc)
        assert (ready["event"], ready["held"], ready["mode"]) == ("ready", count, "complete")
        send(proc, "grow 100")
        assert next_event(proc)["held"] == count + 100
        snap = settled_snapshot(server, lambda s: s["open"] == count + 100)
        terminate(proc)
        stats = server.stop()
    assert snap["requests"] == snap["responses_200"] == count + 100
    assert stats["requests"] == count + 100


def test_connections_are_spread_over_the_source_addresses(build_dir):
    per_source, sources = 300, 3
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", str(per_source * sources),
                                                         "--sources", str(sources)) as proc:
        ready = next_event(proc)
        assert ready["sources"] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        counts = client_sources(server.port)
        terminate(proc)
    assert counts == dict.fromkeys(ready["sources"], per_source)


def client_sources(port: int) -> dict[str, int]:
    """Established connections to 127.0.0.1:port by source address, from /proc/net/tcp."""
    counts: dict[str, int] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, state = line.split()[1:4]
            if remote == f"0100007F:{port:04X}" and state == "01":
                address = socket.inet_ntoa(bytes.fromhex(local.split(":")[0])[::-1])
                counts[address] = counts.get(address, 0) + 1
    return counts


def test_sigterm_closes_every_connection(build_dir):
    count = 3000
    with serving("ephttpd", "epoll") as server:
        baseline = native.open_fds(server.pid)
        with deadconn("--port", str(server.port), "-n", str(count), "--per-worker", "1000") as proc:
            assert next_event(proc)["held"] == count
            settled_snapshot(server, lambda s: s["open"] == count)
            assert native.open_fds(server.pid) == baseline + count
            workers = children(proc.pid)
            closed, status = terminate(proc)
        assert closed == {"event": "closed", "held": count} and status == 0
        assert not any(os.path.exists(f"/proc/{pid}") for pid in workers), "deadconn reaps its workers"
        settled_snapshot(server, lambda s: s["open"] == 0)
        assert native.open_fds(server.pid) == baseline


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_interrupts_a_step_that_cannot_finish(build_dir, signum):
    """A listener that never accepts: its queue fills, handshakes stall, and the step would wait for
    --timeout; the signal must end it long before, with the connections it did hold closed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        with deadconn("--port", str(port), "-n", "100", "--timeout", "3600") as proc:
            time.sleep(1.0)
            workers = children(proc.pid)
            assert workers and proc.poll() is None
            proc.send_signal(signum)
            closed = next_event(proc)
            status = proc.wait(timeout=EVENT_TIMEOUT)
    assert closed["event"] == "closed"
    assert 0 <= closed["held"] < 100
    assert status == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers), "deadconn reaps its workers"


def test_a_connection_the_server_drops_is_not_counted_as_held(build_dir):
    """ephttpd refuses (accepts and closes) what it has no descriptor for: deadconn must not count those."""
    total = 500
    server = native.Ephttpd("epoll", [], nofile=300)
    with server, deadconn("--port", str(server.port), "-n", "100") as proc:
        assert next_event(proc)["held"] == 100
        send(proc, f"grow {total - 100}")
        event = next_event(proc)
        if event["event"] == "ready":  # the server had not refused them yet when deadconn checked
            snap = settled_snapshot(server, lambda s: s["accepted"] + s["refused"] == total)
            send(proc, "status")
            event = next_event(proc)
            assert event["event"] == "status"
            assert event["held"] == snap["open"]
            assert event["held"] + event["failures"]["reset"] == total
        else:
            assert (event["event"], event["reason"]) == ("failed", "reset")
            assert proc.wait(timeout=EVENT_TIMEOUT) != 0
    assert event["held"] < total
    assert event["failures"]["reset"] > 0


def test_bad_commands_are_ignored_with_a_message(build_dir):
    with serving("ephttpd", "epoll") as server, deadconn("--port", str(server.port), "-n", "10") as proc:
        assert next_event(proc)["held"] == 10
        for line in ("grow -1", "grow many", "shrink 5"):
            send(proc, line)
        send(proc, "grow 5")
        assert next_event(proc)["held"] == 15
        closed, status = terminate(proc)
        err = proc.stderr.read()
    assert status == 0
    assert len(err.splitlines()) == 3 and "Traceback" not in err


@pytest.mark.parametrize("args", [["--port", "70000"], ["-n", "-1"], ["--per-worker", "0"],
                                  ["--per-worker", "999999"], ["--timeout", "0"], ["--sources", "0"],
                                  ["--source-base", "10.255.255.1"], ["--mode", "half"], ["--bogus"],
                                  ["--host", "no-such-host.invalid"], ["-n", "2000000"]])
def test_bad_input_is_one_line_and_exit_2(build_dir, args):
    proc = subprocess.run(native.deadconn_command(*args), capture_output=True, text=True,
                          timeout=EVENT_TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("deadconn: ")


def test_help_names_every_option_with_its_default(build_dir):
    out = subprocess.run(native.deadconn_command("--help"), capture_output=True, text=True, check=True).stdout
    for option in ("--host", "--port", "--connections", "--mode", "--source-base", "--sources",
                   "--per-worker", "--timeout", "--control"):
        assert option in out
    assert out.count("default") >= 9


def test_water_fill_fills_the_least_loaded_first_and_never_past_capacity():
    water_fill = load_deadconn().water_fill
    assert water_fill([0, 0], [100, 100], 7) == [4, 3]
    assert water_fill([50, 10, 30], [100] * 3, 60) == [0, 40, 20]
    assert water_fill([90, 0], [100, 100], 110) == [10, 100]  # both end full
    assert water_fill([0, 0, 0], [10, 10, 1000], 30) == [10, 10, 10]
    assert water_fill([0, 0, 0], [2, 10, 1000], 30) == [2, 10, 18]  # equal shares, capped by room
    assert water_fill([5, 5, 5], [float("inf")] * 3, 0) == [0, 0, 0]
    with pytest.raises(ValueError):
        water_fill([90, 95], [100, 100], 16)


def test_pair_gives_each_worker_its_count_from_the_sources_in_order():
    pair = load_deadconn().pair
    plans = pair([3, 4], [("a", 5), ("b", 2)])
    assert plans == [[["a", 3]], [["a", 2], ["b", 2]]]
    assert pair([0, 2], [("a", 0), ("b", 2)]) == [[], [["b", 2]]]


@pytest.mark.parametrize("soft, hard, raised", [(1024, 4096, 4096), (4096, 4096, 4096),
                                                (1024, resource.RLIM_INFINITY, 123456)])
def test_the_fd_limit_rises_to_the_hard_one_and_an_unlimited_one_to_nr_open(monkeypatch, tmp_path, soft, hard, raised):
    """images/pylib/fdlimit.py, which deadconn and pyhttpd share."""
    fdlimit = load_deadconn().fdlimit
    (tmp_path / "nr_open").write_text("123456\n")
    monkeypatch.setattr(fdlimit, "NR_OPEN", str(tmp_path / "nr_open"))
    monkeypatch.setattr(fdlimit.resource, "getrlimit", lambda _: (soft, hard))
    set_to = []
    monkeypatch.setattr(fdlimit.resource, "setrlimit", lambda _, limits: set_to.append(limits))
    said = []
    assert fdlimit.raise_fd_limit(said.append) == raised
    assert set_to == ([] if soft == raised else [(raised, raised)])
    assert not said


def test_a_refused_fd_limit_is_said_and_the_soft_one_kept(monkeypatch):
    fdlimit = load_deadconn().fdlimit
    monkeypatch.setattr(fdlimit.resource, "getrlimit", lambda _: (1024, 4096))

    def refuse(_resource, _limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(fdlimit.resource, "setrlimit", refuse)
    said = []
    assert fdlimit.raise_fd_limit(said.append) == 1024
    assert said == ["cannot raise RLIMIT_NOFILE to 4096 (not allowed); keeping 1024"]
