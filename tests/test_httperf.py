import json
import shlex
import subprocess
from pathlib import Path

import pytest

from experiment.bench import native
from experiment.errors import UserError
from experiment.run import loads

DATA = Path(__file__).parent / "data" / "httperf"
REFERENCE = Path(__file__).resolve().parent.parent / "experiment" / "data" / "lse-2002.json"


def fixture(name: str) -> str:
    return (DATA / name).read_text()


def options(argv: list[str]) -> dict[str, str | None]:
    """--name value pairs (value None for a flag) of an httperf argv."""
    opts, i = {}, 0
    while i < len(argv):
        name = argv[i]
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts[name], i = argv[i + 1], i + 2
        else:
            opts[name], i = None, i + 1
    return opts


# ---- the command ------------------------------------------------------------------------------------------

def test_command_is_the_2001_load_against_our_server():
    published = options(shlex.split(json.loads(REFERENCE.read_text())["libenzi_2001"]["httperf_args"]))
    argv = loads.command(loads.ActiveLoad(port=8080))
    assert argv[0] == "httperf"
    ours = options(argv[1:])
    assert ours == dict(published, **{"--server": "127.0.0.1", "--port": "8080", "--uri": "/"})
    assert argv == ["httperf", "--hog", "--server", "127.0.0.1", "--port", "8080", "--uri", "/",
                    "--num-conns", "100", "--rate", "100", "--num-calls", "2500", "--timeout", "5",
                    "--think-timeout", "5"]


def test_command_keeps_fractional_values_and_drops_hog_when_asked():
    argv = loads.command(loads.ActiveLoad(port=80, rate=12.5, num_calls=7, timeout=0.5, hog=False))
    opts = options(argv[1:])
    assert "--hog" not in opts
    assert (opts["--rate"], opts["--num-calls"], opts["--timeout"]) == ("12.5", "7", "0.5")


@pytest.mark.parametrize("bad", [{"port": 0}, {"port": 70000}, {"connections": 0}, {"num_calls": 0},
                                 {"rate": 0}, {"timeout": -1}, {"think_timeout": 0}])
def test_active_load_rejects_impossible_values(bad):
    with pytest.raises(UserError):
        loads.ActiveLoad(**dict({"port": 8080}, **bad))


def test_calls_for_duration_sizes_a_point_and_stays_bounded():
    assert loads.calls_for_duration(20000, 10, 100) == 2000
    assert loads.calls_for_duration(1001, 1, 100) == 11  # rounded up: never shorter than planned
    assert loads.calls_for_duration(100, 1, 100) == loads.MIN_CALLS
    assert loads.calls_for_duration(1e12, 60, 1) == loads.MAX_CALLS
    with pytest.raises(ValueError):
        loads.calls_for_duration(0, 10, 100)
    with pytest.raises(ValueError):
        loads.calls_for_duration(1000, 10, 0)


# ---- parsing real outputs ---------------------------------------------------------------------------------

def test_parse_a_2001_style_run_with_two_reply_rate_samples():
    r = loads.parse(fixture("epoll-2500calls.txt"))
    assert r["command"].startswith("httperf --hog --think-timeout=5 --timeout=5 --client=0/1")
    assert r["max_connect_burst"] == 4
    assert r["total"] == {"connections": 100, "requests": 250000, "replies": 250000, "test_duration_s": 10.904}
    assert r["connection_rate"] == {"per_s": 9.2, "ms_per_conn": 109.0, "max_concurrent": 100}
    assert r["connection_time_ms"] == {"min": 8616.7, "avg": 10006.7, "max": 10392.9, "median": 9948.5,
                                       "stddev": 346.1, "connect": 0.4}
    assert r["connection_length_replies"] == 2500.0
    assert r["request_rate"] == {"per_s": 22928.0, "ms_per_req": 0.0}
    assert r["request_size_b"] == 62.0
    assert r["reply_rate"] == {"min": 16608.6, "avg": 21882.1, "max": 27155.6, "stddev": 7457.8,
                               "samples": 2, "overall": 250000 / 10.904, "avg_source": "samples"}
    assert r["reply_time_ms"] == {"response": 4.0, "transfer": 0.0}
    assert r["reply_size_b"] == {"header": 107.0, "content": 128.0, "footer": 0.0, "total": 235.0}
    assert r["reply_status"] == {"1xx": 0, "2xx": 250000, "3xx": 0, "4xx": 0, "5xx": 0}
    assert r["cpu"] == {"user_s": 0.26, "system_s": 5.41, "user_pct": 2.4, "system_pct": 49.6,
                        "total_pct": 52.0}
    assert r["net_io"] == {"kb_per_s": 6650.0, "mbit_per_s": 54.5}
    assert r["errors"] == {"total": 0, "client_timo": 0, "socket_timo": 0, "connrefused": 0, "connreset": 0,
                           "fd_unavail": 0, "addrunavail": 0, "ftab_full": 0, "other": 0}


def test_parse_a_run_too_short_for_a_sample_takes_the_rate_from_replies_and_duration():
    r = loads.parse(fixture("epoll-50calls.txt"))
    assert r["total"] == {"connections": 100, "requests": 5000, "replies": 5000, "test_duration_s": 0.995}
    assert r["connection_time_ms"]["median"] == 5.5
    assert r["reply_rate"] == {"min": None, "avg": 5000 / 0.995, "max": None, "stddev": None, "samples": 0,
                               "overall": 5000 / 0.995, "avg_source": "replies/test-duration"}
    assert r["cpu"]["total_pct"] == 78.2
    assert r["errors"]["total"] == 0


def test_parse_refused_connections():
    r = loads.parse(fixture("connrefused.txt"))
    assert r["total"] == {"connections": 100, "requests": 0, "replies": 0, "test_duration_s": 0.991}
    assert r["errors"] == {"total": 100, "client_timo": 0, "socket_timo": 0, "connrefused": 100, "connreset": 0,
                           "fd_unavail": 0, "addrunavail": 0, "ftab_full": 0, "other": 0}
    assert r["reply_rate"]["avg"] == 0.0
    assert r["reply_rate"]["avg_source"] == "replies/test-duration"
    assert r["reply_status"]["2xx"] == 0


def test_parse_names_what_is_missing():
    text = fixture("epoll-2500calls.txt")
    without = "\n".join(line for line in text.splitlines() if not line.startswith("Reply rate"))
    with pytest.raises(ValueError, match="no 'Reply rate' line"):
        loads.parse(without)
    with pytest.raises(ValueError, match="not httperf output: no 'Total', .*'Errors \\(socket\\)' lines"):
        loads.parse(fixture("wrk-epoll.txt"))
    with pytest.raises(ValueError, match="not httperf output"):
        loads.parse("")


def test_parse_wrk_clean_run():
    r = loads.parse_wrk(fixture("wrk-epoll.txt"))
    assert (r["threads"], r["connections"]) == (1, 100)
    assert r["requests_per_s"] == 40281.30
    assert r["transfer_bytes_per_s"] == 9.03 * 1024**2
    assert r["latency_ms"] == {"avg": 2.74, "stdev": 2.91, "max": 13.59, "within_stdev_pct": 82.92}
    assert r["thread_requests_per_s"] == {"avg": 40530.0, "stdev": 3540.0, "max": 46740.0}
    assert (r["requests"], r["duration_s"], r["bytes_read"]) == (121568, 3.02, 27.25 * 1024**2)
    assert r["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert r["non_2xx_3xx"] == 0


def test_parse_wrk_socket_errors():
    r = loads.parse_wrk(fixture("wrk-server-killed.txt"))
    assert r["socket_errors"] == {"connect": 0, "read": 102, "write": 66352, "timeout": 0}
    assert r["requests"] == 34748
    assert r["requests_per_s"] == 11305.78
    assert r["latency_ms"]["avg"] == 2.43


def test_parse_wrk_names_what_is_missing():
    with pytest.raises(ValueError, match="not wrk output: no 'Latency'"):
        loads.parse_wrk(fixture("epoll-50calls.txt"))


def test_wrk_command():
    assert loads.wrk_command("http://127.0.0.1:8080/", connections=50, threads=2, duration_s=2.5) == [
        "wrk", "--threads", "2", "--connections", "50", "--duration", "3s", "--timeout", "5s",
        "http://127.0.0.1:8080/"]
    with pytest.raises(UserError):
        loads.wrk_command("http://127.0.0.1:8080/", connections=1, threads=2)


# ---- against the real server ------------------------------------------------------------------------------

def test_httperf_replies_are_the_server_responses(build_dir):
    with native.Ephttpd(backend="epoll") as server:
        load = loads.ActiveLoad(port=server.port, connections=20, rate=200, num_calls=30)
        proc = subprocess.run(loads.command(load), capture_output=True, text=True, timeout=120)
        stats = server.stop()
    assert proc.returncode == 0, proc.stderr
    r = loads.parse(proc.stdout)
    assert r["errors"]["total"] == 0
    assert r["total"]["connections"] == stats["accepted"] == 20
    assert r["total"]["requests"] == stats["requests"] == 20 * 30
    assert r["total"]["replies"] == r["reply_status"]["2xx"] == stats["responses_200"] == 20 * 30
    assert r["reply_size_b"]["content"] == 128.0
    assert r["reply_rate"]["overall"] == pytest.approx(600 / r["total"]["test_duration_s"])


def test_wrk_counts_no_more_than_the_server_answered(build_dir):
    with native.Ephttpd(backend="epoll") as server:
        argv = loads.wrk_command(f"http://127.0.0.1:{server.port}/", connections=10, threads=1, duration_s=1)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        stats = server.stop()
    assert proc.returncode == 0, proc.stderr
    r = loads.parse_wrk(proc.stdout)
    assert r["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    # wrk counts the responses it read before its time was up; the server also answered those in flight.
    assert 0 < r["requests"] <= stats["responses_200"] <= r["requests"] + 10
