"""The tail without the interference (experiment/host/tail.py) and what it reads: openload's --requests-out file
(images/openload/reqlog.c through ctypes, then the program against ephttpd), the join of that file with third
parties' stretches (merged intervals, the guard after each, the percentiles on both sides against openload's
own), the stretches picked out of a capture's, the file fetched out of a client container before its removal,
and the command that asks for it (loads.OpenLoad.requests_out)."""

from __future__ import annotations

import ctypes
import os
import random
import resource
import struct
import subprocess

import pytest
from test_openload import HIST_HALF, nearest_rank, run_openload, shared_library

from experiment.bench import native
from experiment.errors import UserError
from experiment.host import images, machine, tail
from experiment.host.parties import IDLE, OURS, THIRD_PARTY
from experiment.host.switches import OnCpu
from experiment.run import loads, services
from experiment.run.containers import Containers

RATE = 5000  # requests/s: a request due every 200 us, a whole number of ns
DURATION_S = 2
MS = 1_000_000  # ns


# ---- the file, as reqlog.c writes it ---------------------------------------------------------------------

DUE_AT = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64)


@pytest.fixture(scope="module")
def reqlog(tmp_path_factory):
    dll = shared_library(tmp_path_factory, "reqlog.c")
    dll.reqlog_create.restype = ctypes.c_void_p
    dll.reqlog_create.argtypes = [ctypes.c_uint64]
    dll.reqlog_destroy.argtypes = [ctypes.c_void_p]
    dll.reqlog_reply.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64]
    dll.reqlog_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, DUE_AT]
    return dll


def test_the_file_is_one_little_endian_record_per_request_due_in_due_order(reqlog, tmp_path):
    """Five slots, replies to requests 0, 1 and 3 (one of them 0 ns, one large), three due when the run ended:
    three records, due_at(n) and the latency or -1, two little-endian int64s each, nothing else."""
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    log = reqlog.reqlog_create(5)
    path = tmp_path / "requests.bin"
    try:
        for n, latency in ((0, 250_000), (1, 0), (3, 2**40)):
            reqlog.reqlog_reply(log, n, latency)
        out = libc.fopen(str(path).encode(), b"wb")
        assert reqlog.reqlog_write(log, out, 3, DUE_AT(lambda n: 10**15 + n * 333_333)) == 0
        assert libc.fclose(out) == 0
    finally:
        reqlog.reqlog_destroy(log)
    data = path.read_bytes()
    assert data == struct.pack("<6q", 10**15, 250_000, 10**15 + 333_333, 0, 10**15 + 666_666, -1)
    requests = tail.read(data)
    assert list(requests.due_ns) == [10**15, 10**15 + 333_333, 10**15 + 666_666]
    assert list(requests.latency_ns) == [250_000, 0, -1]


def test_more_requests_than_it_keeps_are_refused_before_any_memory(reqlog):
    assert reqlog.reqlog_create(100_000_001) is None


def test_a_file_of_partial_records_is_refused():
    with pytest.raises(ValueError, match="not a whole number of 16-byte records"):
        tail.read(b"\0" * 24)


# ---- openload writes it --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def written(build_dir, tmp_path_factory):
    """One run of the sanitized openload with --requests-out against the optimised ephttpd, well below its
    capacity: RATE requests/s over 10 connections for DURATION_S; its JSON and the file's requests."""
    path = tmp_path_factory.mktemp("requests") / "requests.bin"
    with native.Ephttpd(build=native.BUILD) as server:
        data = run_openload(build_dir / "openload", server.port, "--rate", str(RATE), "--connections", "10",
                            "--duration", str(DURATION_S), "--requests-out", str(path))
    return data, tail.load(path), path.stat().st_size


def test_openload_writes_a_record_for_each_request_due_on_its_schedule(written):
    data, requests, size = written
    schedule = data["schedule"]
    assert schedule["clock"] == "CLOCK_MONOTONIC"
    assert schedule["end_ns"] - schedule["start_ns"] == DURATION_S * 10**9
    assert len(requests) == data["requests"] == RATE * DURATION_S and size == 16 * len(requests)
    due = requests.due_ns
    assert due[0] == schedule["start_ns"] and due[-1] < schedule["end_ns"]
    assert all(b - a == 10**9 // RATE for a, b in zip(due, due[1:], strict=False))  # 1/rate apart, exactly here
    assert data["replies"] == len(requests), data["errors"]
    assert all(x > 0 for x in requests.latency_ns)


def test_the_raw_side_agrees_with_openloads_histogram_within_its_precision(written):
    """The same replies: the count and the maximum are exact; each percentile of openload's histogram is the
    highest value of the true sample's bucket, so at or above it by less than 1/HIST_HALF of it (below
    2 x HIST_HALF ns it is exact), and the join's nearest rank is that true sample."""
    data, requests, _ = written
    joined = tail.join(requests, [])
    assert joined.raw is not None and joined.raw.count == joined.replies == data["latency_us"]["count"]
    ordered = sorted(requests.latency_ns)
    for key, field, pct in (("p50", "p50", 50), ("p90", "p90", 90), ("p99", "p99", 99), ("p99.9", "p999", 99.9),
                            ("max", "max", 100)):
        true = nearest_rank(ordered, pct)
        assert round(getattr(joined.raw, field) * 1e6) == true
        histogram = round(data["latency_us"][key] * 1e3)
        assert true <= histogram and (histogram - true) * HIST_HALF < max(true, 2 * HIST_HALF), (key, true)
    assert round(joined.raw.max * 1e6) == round(data["latency_us"]["max"] * 1e3)


def test_with_no_interval_every_reply_is_kept_and_both_sides_are_equal(written):
    _, requests, _ = written
    joined = tail.join(requests, [])
    assert joined.kept == joined.raw and joined.excluded == 0 and joined.excluded_share == 0
    assert joined.requests == joined.replies == len(requests)


@pytest.mark.parametrize(("after_ms", "excluded"), [(tail.AFTER_MS, 1001 + 50), (0, 1001)])
def test_an_interval_excludes_the_requests_due_inside_it_and_in_the_guard_after_it(written, after_ms, excluded):
    """200 ms of a third party half a second in: at RATE/s, a request due every 200 us, its 1001 requests (both
    ends in) and the 50 of the 10 ms guard are excluded; intervals before and after the run exclude none."""
    _, requests, _ = written
    start = requests.due_ns[2500]
    first = requests.due_ns[0]
    joined = tail.join(requests, [(first - 10**9, first - 11 * MS), (start, start + 200 * MS),
                                  (requests.due_ns[-1] + 1, requests.due_ns[-1] + 10**9)], after_ms)
    assert joined.excluded == excluded
    assert joined.kept is not None and joined.kept.count == len(requests) - excluded
    assert joined.excluded_share == excluded / len(requests)
    kept = sorted(x for n, x in enumerate(requests.latency_ns) if not 2500 <= n < 2500 + excluded)
    assert joined.kept == tail.percentiles(kept)


# ---- the join's parts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("intervals", "guard", "merged"), [
    ([], 0, []),
    ([(10, 20)], 5, [(10, 25)]),
    ([(30, 40), (10, 20)], 0, [(10, 20), (30, 40)]),  # sorted
    ([(10, 20), (15, 30)], 0, [(10, 30)]),  # overlapping
    ([(10, 20), (12, 14)], 0, [(10, 20)]),  # one inside another
    ([(10, 20), (20, 30)], 0, [(10, 30)]),  # touching: both ends are in
    ([(10, 20), (24, 30)], 5, [(10, 35)]),  # within the guard of the one before
    ([(10, 20), (26, 30)], 5, [(10, 25), (26, 35)]),
    ([(10, 10)], 0, [(10, 10)]),  # an instant
])
def test_intervals_are_widened_by_the_guard_sorted_and_merged(intervals, guard, merged):
    assert tail.merge(intervals, guard) == merged


def test_an_interval_that_ends_before_it_starts_is_a_value_error():
    with pytest.raises(ValueError, match="ends before it starts"):
        tail.merge([(20, 10)])


def synthetic(due: list[int], latency: list[int]) -> tail.Requests:
    return tail.read(struct.pack(f"<{2 * len(due)}q", *(v for pair in zip(due, latency, strict=True) for v in pair)))


def test_requests_without_a_reply_are_in_no_percentile_and_no_count_of_replies():
    requests = synthetic([100, 200, 300, 400], [5 * MS, -1, 7 * MS, -1])
    joined = tail.join(requests, [(300, 300)], after_ms=0)
    assert (joined.requests, joined.replies, joined.excluded) == (4, 2, 1)
    assert joined.raw == tail.Percentiles(5.0, 7.0, 7.0, 7.0, 7.0, 2)
    assert joined.kept == tail.Percentiles(5.0, 5.0, 5.0, 5.0, 5.0, 1)


def test_no_reply_at_all_or_every_reply_excluded_leaves_that_side_empty():
    assert tail.join(synthetic([100], [-1]), []).raw is None
    joined = tail.join(synthetic([100, 200], [MS, 2 * MS]), [(0, 500)])
    assert joined.kept is None and joined.excluded == joined.replies == 2 and joined.excluded_share == 1
    assert joined.to_json()["kept"] is None and joined.to_json()["excluded"] == joined.to_json()["replies"]


def test_a_file_out_of_due_order_joins_as_the_same_file_in_order():
    rng = random.Random(7)
    pairs = [(n * 1000, rng.randrange(1, 10**8)) for n in range(5000)]
    shuffled = pairs[:]
    rng.shuffle(shuffled)
    intervals = [(1_000_000, 1_200_000), (3_000_500, 3_000_500)]
    in_order = tail.join(synthetic(*map(list, zip(*pairs, strict=True))), intervals, after_ms=0.1)
    assert tail.join(synthetic(*map(list, zip(*shuffled, strict=True))), intervals, after_ms=0.1) == in_order
    assert in_order.excluded == 301 + 100  # a request every 1 us: 200 us and 100 us of guard (both ends in), a guard


def test_percentiles_are_the_nearest_rank():
    ordered = list(range(1, 1001))  # 1..1000 ns
    found = tail.percentiles(ordered)
    assert found is not None
    assert [round(v * 1e6) for v in (found.p50, found.p90, found.p99, found.p999, found.max)] == [
        500, 900, 990, 999, 1000]
    assert tail.percentiles([7]) == tail.Percentiles(7e-6, 7e-6, 7e-6, 7e-6, 7e-6, 1)
    assert tail.percentiles([]) is None


def judge(pid: int, comm: str) -> str:
    return IDLE if pid == 0 else OURS if comm in ("ephttpd", "openload") else THIRD_PARTY


def test_third_parties_stretches_on_the_servers_cpus_become_intervals_clipped_to_the_window():
    """Of a capture on CPUs 0-1 over [1000, 9000]: a third party's stretches on CPUs 0 and 1, one open at
    its start and one at its end (clipped to the window), one whose end perf did not see (counted to its end
    as recorded); ours, idle, another CPU's, and one outside the window are not; each task judged once."""
    stretches = [
        OnCpu(0, 7, "tokio-rt-worker", None, 1500),
        OnCpu(0, 0, "swapper/0", 1500, 2000),
        OnCpu(0, 50, "ephttpd", 2000, 3000),
        OnCpu(0, 7, "tokio-rt-worker", 3000, 4000, end_seen=False),
        OnCpu(1, 9, "kworker/1:1", 4500, 4600),
        OnCpu(1, 9, "kworker/1:1", 8000, None),
        OnCpu(2, 9, "kworker/2:1", 5000, 6000),
        OnCpu(1, 9, "kworker/1:1", 9500, 9600),
    ]
    asked: list[tuple[int, str]] = []

    def party(pid: int, comm: str, tgid: int | None = None) -> str:
        asked.append((pid, comm))
        return judge(pid, comm)

    found = tail.third_party(stretches, [0, 1], party, 1000, 9000, longer_than_ms=0)
    assert found == [(1000, 1500), (3000, 4000), (4500, 4600), (8000, 9000)]
    assert sorted(asked) == sorted(set(asked))
    assert tail.third_party(stretches, [0, 1], party, 1000, 9000, longer_than_ms=0.0006) == [(3000, 4000),
                                                                                              (8000, 9000)]
    assert tail.merge(found, 600) == [(1000, 2100), (3000, 5200), (8000, 9600)]


def test_half_a_million_requests_and_two_thousand_intervals_join_exactly():
    """500,000 requests (a 6 s point at ~83k/s), 2,000 intervals each over one of them."""
    n, every = 500_000, 12_000
    requests = synthetic([k * every for k in range(n)], [1000 + k % 997 for k in range(n)])
    intervals = [(k * 3_000_000, k * 3_000_000 + 1) for k in range(2000)]  # one request each, at 0 guard
    joined = tail.join(requests, intervals, after_ms=0)
    assert joined.excluded == 2000 and joined.kept is not None and joined.kept.count == n - 2000


# ---- the command, and the file out of a container --------------------------------------------------------------

def test_the_file_is_asked_for_only_when_a_path_is_given(build_dir):
    assert "--requests-out" not in loads.open_command(loads.OpenLoad(port=9, rate=100))
    argv = loads.open_command(loads.OpenLoad(port=9, rate=100, requests_out="/tmp/requests.bin"))
    assert argv[argv.index("--requests-out") + 1] == "/tmp/requests.bin"
    proc = subprocess.run([str(build_dir / "openload"), *argv[1:]], capture_output=True, text=True, timeout=30,
                          env=native.sanitized_env())
    assert proc.returncode == 1 and proc.stderr == "openload: cannot connect to 127.0.0.1:9: Connection refused\n"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"requests_out": "requests.bin"}, "give an absolute path"),
    ({"requests_out": "/r", "rate": 1e6, "duration_s": 101}, "over the 100,000,000 requests"),
])
def test_a_bad_requests_file_is_a_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        loads.OpenLoad(**{"port": 8080, "rate": 100, **kwargs})


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--rate", "1000000", "--duration", "101"], 2, "--requests-out keeps at most 100000000 requests"),
    (["--rate", "100"], 1, "--requests-out /nonexistent/requests.bin: No such file or directory"),
])
def test_openload_refuses_a_file_it_cannot_keep_or_make_before_it_connects(build_dir, args, code, message):
    proc = subprocess.run([str(build_dir / "openload"), "--port", "9", *args, "--requests-out",
                           "/nonexistent/requests.bin"], capture_output=True, text=True, timeout=30,
                          env=native.sanitized_env())
    assert proc.returncode == code and proc.stdout == ""
    assert proc.stderr.startswith("openload: ") and proc.stderr.count("\n") == 1 and message in proc.stderr


@pytest.fixture(scope="module")
def built(client, tmp_path_factory):
    return images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path_factory.mktemp("build"))


@pytest.mark.docker
def test_the_file_comes_out_of_the_client_container_before_it_is_removed(client, built):
    """openload with --requests-out in the client container against ephttpd in the server container, run to
    its end with a fetch that reads the file (and a path that is not there): the file is openload's, one record
    per request; the container is gone after."""
    containers = Containers(client, f"test-tail-{os.getpid()}", resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    port = machine.free_port()
    fetched: dict[str, object] = {}

    def fetch(managed) -> None:
        fetched["file"] = containers.read_file(managed, "/tmp/requests.bin")
        with pytest.raises(FileNotFoundError):
            containers.read_file(managed, "/tmp/nothing.bin")
        fetched["id"] = managed.container.id

    try:
        server = containers.run(built["server"].tag, services.server("epoll", port, 128, "0"))
        assert server.next_json(("listening",), 30), server.output_tail()
        load = loads.OpenLoad(port=port, rate=2000, connections=10, duration_s=1, timeout_s=2,
                              requests_out="/tmp/requests.bin")
        _, output, code = containers.run_to_end(built["client"].tag, services.openload(load, "0"),
                                                load.bound_s + 30, fetch)
        assert code == 0, output
        parsed = loads.parse_openload(output)
        data = fetched["file"]
        assert isinstance(data, bytes)
        requests = tail.read(data)
        assert len(requests) == parsed["requests"] == parsed["replies"] == 2000
        schedule = parsed["raw"]["schedule"]
        assert schedule["start_ns"] == requests.due_ns[0] and requests.due_ns[-1] < schedule["end_ns"]
        assert not client.containers.list(all=True, filters={"id": str(fetched["id"])})
        assert containers.stop(server, timeout=30) == 0
    finally:
        containers.remove_all()
