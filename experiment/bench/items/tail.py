"""Item 11: whose tail is it? The open loop's p99 at 0 and at the most dead connections with and without the
stretches third parties held the server's CPU, and what the capture that sees them does to what it measures.

What is measured: natively, ephttpd (BACKENDS) pinned to the server CPU, deadconn holding 0 and the most dead
connections one server process can hold next to the load (plan.max_dead, as items 2 and 7 size it: at the
host's 20,000 open files, 19,500), and openload on one client CPU at RATE_SHARE of the backend's 0-dead
capacity (wrk over the open-loop sweep's PROBE_S against a fresh server, once per backend, before the
rounds; one rate per backend at both dead levels), launch.ACTIVE connections, LOAD_S seconds, writing each
request's due time and latency (--requests-out). Around openload's run, a capture of sched_switch on the
server's and the clients' CPUs (host/switches.py; perf kept on the clients' CPUs), its tasks judged while
ephttpd and deadconn still run (host/parties.py: this process's descendants are ours). Per run: openload's
own p99 and p99.9; the join's (host/tail.py) raw and kept percentiles and the share of replies excluded; the
server CPUs' interference (host/interference.py: share, longest seen stretch, flag); the server CPUs' three
longest third-party stretches, those perf did not see end included as the upper bounds they are; and the
server's CPU per reply (/proc/PID/stat over openload's run, as items 1, 2 and 7).

The capture's own effect: in every round, epoll at the most dead runs twice on the same server and dead
connections, once with the capture and once without perf at all, the order alternating round by round; both
write --requests-out, so that perf is all that differs.

ROUNDS rounds, the settings in an order rotated each round; the figures are medians with a distribution-free
95% interval (tail_figures.py)."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ... import catalog
from ...anatomy import perf
from ...host import interference, switches
from ...host import tail as request_tail
from ...host.interference import Party
from ...host.parties import THIRD_PARTY, Ours
from ...model import Tail
from ...run import loads
from ...run.openloop import PROBE_S
from ...run.plan import max_dead
from .. import launch, native
from ..launch import Cpus
from ..registry import Context
from . import tail_figures

ROUNDS = 6
LOAD_S = launch.LOAD_SECONDS
RATE_SHARE = 0.5  # of the backend's 0-dead capacity: the open-loop sweep's default (--rate 0.5x)
BACKENDS = ("epoll", catalog.URING_RECV)
OPEN_TIMEOUT_S = 2  # a request unanswered this long is an error, as item 6's openload runs
LONGEST = 3  # third-party stretches listed per run


@dataclass(frozen=True)
class Setting:
    """One configuration of a round: a backend at 0 or at the most dead connections; paired: also run without
    any capture, side by side with the run under it."""

    backend: str
    most: bool
    paired: bool = False


SETTINGS = (Setting("epoll", False), Setting(catalog.URING_RECV, False), Setting("epoll", True, paired=True),
            Setting(catalog.URING_RECV, True))


def run(context: Context) -> dict:
    return whose_tail(context.cpus, context.fd_limit)


def whose_tail(cpus: Cpus, fd_limit: int, rounds: int = ROUNDS, seconds: float = LOAD_S,
               probe_s: float = PROBE_S) -> dict:
    """Every setting in each round (the module's docstring); {"unavailable": why} where perf cannot record
    the switches here."""
    started = time.monotonic()
    perf_path, why = perf.ensure()
    why = why or switches.check(perf_path or "perf")
    if perf_path is None or why:
        return {"unavailable": f"perf cannot record {switches.EVENT} here: {why}"}
    one = cpus.one_client()
    rates = offered_rates(one, probe_s)
    most = {backend: max_dead(fd_limit, backend, launch.ACTIVE) for backend in BACKENDS}
    rows = [row for n in range(1, rounds + 1) for setting in setting_order(n)
            for row in _setting(one, perf_path, setting, most, rates, seconds, n)]
    return {"rounds": rounds, "load_s": seconds, "rate_share": RATE_SHARE, "probe_s": probe_s, "rates": rates,
            "most_dead": most, "rows": rows, **tail_figures.figures(rows, BACKENDS, most),
            "wall_s": time.monotonic() - started}


def setting_order(n: int) -> tuple[Setting, ...]:
    """Round n's settings (n from 1), rotated a step a round so that none always runs first."""
    shift = (n - 1) % len(SETTINGS)
    return SETTINGS[shift:] + SETTINGS[:shift]


def capture_order(n: int, paired: bool) -> tuple[bool, ...]:
    """Whether each run of a setting in round n is captured: a pair alternates which runs first."""
    if not paired:
        return (True,)
    return (True, False) if n % 2 else (False, True)


def offered_rates(cpus: Cpus, probe_s: float) -> dict[str, dict]:
    """Per backend, wrk's rate against a fresh server at 0 dead (the open-loop sweep's probe) and the rate
    openload offers it: RATE_SHARE of that."""
    found = {}
    for backend in BACKENDS:
        with launch.ephttpd(cpus, backend) as (port, _pids):
            capacity = launch.wrk(cpus, port, probe_s)["rate"]
        found[backend] = {"capacity": capacity, "rate": round(RATE_SHARE * capacity, 1)}
    return found


def _setting(cpus: Cpus, perf_path: str, setting: Setting, most: dict[str, int], rates: dict[str, dict],
             seconds: float, n: int) -> list[dict]:
    """One server holding the setting's dead connections, and openload's run(s) against it."""
    dead = most[setting.backend] if setting.most else 0
    rate = rates[setting.backend]["rate"]
    rows = []
    with launch.ephttpd(cpus, setting.backend) as (port, pids), launch.dead_connections(cpus, port, dead):
        for captured in capture_order(n, setting.paired):
            found = _run(cpus, perf_path if captured else None, port, pids, rate, seconds)
            rows.append({"round": n, "backend": setting.backend, "dead": dead, "capture": captured, **found})
    return rows


def _run(cpus: Cpus, perf_path: str | None, port: int, pids: list[int], rate: float, seconds: float) -> dict:
    """openload's run, under a capture of the switches when perf_path is given; judged while the server and
    deadconn still run."""
    with tempfile.TemporaryDirectory(prefix="epollbench-tail-") as folder:
        requests_path = Path(folder) / "requests.bin"
        if perf_path is None:
            load = _measured_load(cpus, port, pids, rate, seconds, requests_path)
            return {**load, **tail_fields(request_tail.join(request_tail.load(requests_path), []), kept=False)}
        capture = switches.Capture.start(perf_path, sorted(cpus.server | cpus.clients), Path(folder),
                                         sorted(cpus.clients - cpus.server) or None)
        try:
            capture.open()
            load = _measured_load(cpus, port, pids, rate, seconds, requests_path)
            capture.close()
        except BaseException:
            _abandon(capture)
            raise
        return {**load, **_captured(capture, perf_path, cpus, request_tail.load(requests_path))}


def _abandon(capture: switches.Capture) -> None:
    """perf stopped and its files gone, its switches unread: the run failed."""
    try:
        capture.recording.stop()
    except perf.PerfError:
        pass  # the run's own error is the one to raise
    finally:
        capture.recording.cleanup()


def _measured_load(cpus: Cpus, port: int, pids: list[int], rate: float, seconds: float,
                   requests_path: Path) -> dict:
    """openload's run and the server CPU it cost (CPU seconds over the run / openload's replies)."""
    before = launch.proc_cpu_s(pids)
    parsed = _openload(cpus, port, rate, seconds, requests_path)
    used = launch.proc_cpu_s(pids) - before
    replies = parsed["replies"]
    return {"offered": rate, "achieved_rate": parsed["achieved_rate"], "replies": replies,
            "errors": parsed["error_total"], "lagged": parsed["lagged"], "overloaded": parsed["overloaded"],
            "openload_p99_ms": parsed["latency_ms"]["p99"], "openload_p99.9_ms": parsed["latency_ms"]["p99.9"],
            "server_cpu_s": used, "cpu_us_per_reply": used * 1e6 / replies if replies else None}


def _openload(cpus: Cpus, port: int, rate: float, seconds: float, requests_path: Path) -> dict:
    load = loads.OpenLoad(port=port, rate=rate, connections=launch.ACTIVE, duration_s=seconds,
                          timeout_s=OPEN_TIMEOUT_S, requests_out=str(requests_path))
    proc = subprocess.run([str(native.BUILD / loads.OPENLOAD), *loads.open_command(load)[1:]],
                          capture_output=True, text=True, timeout=load.bound_s + 60, preexec_fn=cpus.pin_clients)
    if proc.returncode != 0:
        raise native.ProgramError(f"openload exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return loads.parse_openload(proc.stdout)


def _captured(capture: switches.Capture, perf_path: str, cpus: Cpus, requests: request_tail.Requests) -> dict:
    """The capture's figures of one run: the server CPUs' interference and longest third-party stretches,
    the clients' interference, and the tail with and without the third parties' stretches."""
    try:
        held = capture.finish(perf_path)
    except perf.PerfError as error:
        return {**tail_fields(request_tail.join(requests, []), kept=False), "capture_failed": str(error)}
    # Who is ours is read now, while ephttpd and deadconn (this process's children) still run.
    party: Party = functools.lru_cache(maxsize=None)(Ours.of_run((), os.getpid()).judge)
    window = (capture.start_ns, capture.end_ns)
    server = interference.from_switches(held, cpus.server, *window, party)
    clients = interference.from_switches(held, cpus.clients, *window, party)
    intervals = request_tail.third_party(held, cpus.server, party, *window)
    return {**tail_fields(request_tail.join(requests, intervals)), "interfered": server.interfered,
            "third_party_share": server.third_party_share, "interference": server.to_json(),
            "client_interference": clients.to_json(),
            "longest_third_party": longest_third_party(held, cpus.server, party, *window)}


def tail_fields(joined: Tail, kept: bool = True) -> dict:
    """The join's raw and kept p99 and p99.9 (ms) and excluded share; kept False: no capture, raw only."""
    raw, left = joined.raw, joined.kept if kept else None
    return {"raw_p99_ms": raw.p99 if raw else None, "raw_p99.9_ms": raw.p999 if raw else None,
            "kept_p99_ms": left.p99 if left else None, "kept_p99.9_ms": left.p999 if left else None,
            "excluded_share": joined.excluded_share if kept else None, "tail": joined.to_json()}


def longest_third_party(held: Iterable[switches.OnCpu], cpus: Iterable[int], party: Party, start_ns: int,
                        end_ns: int, count: int = LONGEST) -> list[dict]:
    """The count longest stretches third parties held any of cpus within the window, longest first; end_seen
    False: perf did not see the task leave, so ms is the most it can have held the CPU (switches.OnCpu)."""
    watched = set(cpus)
    found = [(inside, stretch) for stretch in held
             if stretch.cpu in watched and (inside := stretch.within(start_ns, end_ns))
             and party(stretch.pid, stretch.comm, stretch.tgid) == THIRD_PARTY]
    found.sort(key=lambda pair: -pair[0])
    return [{"comm": s.comm, "pid": s.pid, "cpu": s.cpu, "ms": inside / 1e6, "end_seen": s.end_seen}
            for inside, s in found[:count]]
