"""Item 8: what the kernel cost anatomy costs.

  perturbation  natively, ephttpd (poll, pinned to the server CPU) holding DEAD dead connections under wrk:
                in each round, the server's CPU per reply over a plain second, then over each phase of an
                anatomy window (perf record's profile, perf stat's syscall counting as the sweep counts
                them: raw_syscalls:sys_enter filtered by number), then over the counting phase of a window
                that counts each system call's own tracepoint (as the anatomy did before), then over a
                plain second again, all under the same wrk run. CPU time: the server's
                /proc/PID/schedstat (ns); replies and poll calls: its own counters. Reported per phase as
                the ratio to the mean of the two plain seconds around it, of CPU per reply and of poll
                calls per reply (a slower server finds more ready per poll: the counts a window reports
                move with its perturbation): the median over ROUNDS rounds and a 95% interval
                of that median (order statistics: stats.median_interval). The headline figures are never
                taken under perf: this says what the window's own figures carry.
  wall time     the quick profile's wall time with and without the anatomy is too long to take twice in a
                bench, so a small dead sweep (UP, poll, SMALL_DEAD dead connections, SMALL_DURATION_S
                points under wrk, whose points last exactly their duration: an httperf point is sized by a
                probe whose one or two runs move a point's time by a second, more than what is measured)
                runs in containers with and without --no-anatomy, in WALL_ROUNDS rounds (the order
                alternating); each round's difference in measuring time (the fold after the sweep
                included) per dead point is the anatomy's added time per point: the median [95% interval]
                over the rounds, with the windows' own wall time (AnatomyFigures.wall_s); extrapolated to
                the quick profile's dead points on this host and stated as such, as a share of the quick
                profile's wall time (item 4's when it ran here, else the last bench's); the targets are at
                most MAX_ADDED_S_PER_POINT per point and MAX_ADDED_SHARE.

Not measured: the slab snapshots' cost on their own (included in the wall time), the anatomy on other
servers than ephttpd, or on SMP.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ... import anatomy, model, paths
from ...errors import UserError
from ...run import loads, plan
from .. import native, stats
from ..registry import Context

DEAD = 5000
ROUNDS = 8
PLAIN_S = 1.0
WINDOW_S = 1.0  # as a sweep's (run/instruments.py WINDOW_S)
LOAD_S = 12     # wrk's run per round: plain, two windows with perf's start and teardown, plain
SMALL_DEAD = (0, 1000, 2000, DEAD)
SMALL_DURATION_S = 3
SMALL_LOAD = "wrk"
WALL_ROUNDS = 6
MAX_ADDED_S_PER_POINT = 1.5
MAX_ADDED_SHARE = 0.15
QUICK_TIMED_HERE = "item 4 (anatomy on)"  # the quick profile's wall time came from this bench's item 4


def _cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def run(context: Context) -> dict:
    """The perturbation, and the wall time extrapolated to the quick profile: item 4's when it ran in this
    bench, else the newest stored bench's."""
    timed = context.sections.get("harness")
    quick_wall, source = ((timed["wall_s"], QUICK_TIMED_HERE) if timed else last_quick_wall(context.results))
    return {"perturbation": perturbation(context.cpus.server, context.cpus.clients),
            "wall_time": wall_time(context.fd_limit, quick_wall, source)}


def perturbation(server_cpus: set[int], client_cpus: set[int], rounds: int = ROUNDS) -> dict:
    instruments = anatomy.prepare()
    if instruments.perf is None:
        return {"unavailable": instruments.reason}
    rows = []
    server = native.Ephttpd(backend="poll")
    with server:
        os.sched_setaffinity(server.pid, server_cpus)
        dead = subprocess.Popen(native.deadconn_command("--port", str(server.port), "-n", str(DEAD), "--timeout",
                                                        "120"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: os.sched_setaffinity(0, client_cpus))
        try:
            ready = json.loads((dead.stdout.readline() if dead.stdout else "") or "{}")
            if ready.get("event") != "ready":
                raise UserError(f"deadconn could not hold {DEAD} connections: {ready}")
            with tempfile.TemporaryDirectory(prefix="epollbench-anatomy-") as tmp:
                for n in range(1, rounds + 1):
                    rows.append({"round": n, **_round(instruments, server, client_cpus, Path(tmp) / str(n))})
        finally:
            dead.terminate()
            dead.wait(timeout=30)
        server.stop()
    return {"server": "ephttpd", "backend": "poll", "dead": DEAD, "rows": rows,
            "cpu_per_reply_ratio": {phase: _ratio(rows, phase, "plain") for phase in PHASES},
            "waits_per_reply_ratio": {phase: _ratio(rows, f"{phase}_waits", "plain_waits") for phase in PHASES},
            "plain_us_per_reply": stats.interval_record([r["plain"] for r in rows if r.get("plain")]),
            "plain_waits_per_reply": stats.interval_record([r["plain_waits"] for r in rows if r.get("plain_waits")])}


def _ratio(rows: list[dict], key: str, plain: str) -> dict:
    """The rounds' key / plain: stats.interval_record."""
    return stats.interval_record([r[key] / r[plain] for r in rows if r.get(key) and r.get(plain)])


Reading = tuple[int, int, int]  # the server's CPU ns, replies and wait calls (its counters) so far
PHASES = ("profile", "counting", "counting_tracepoints")


def _round(instruments: anatomy.Instruments, server: native.Ephttpd, client_cpus: set[int], out: Path) -> dict:
    argv = loads.wrk_command(f"http://127.0.0.1:{server.port}/", connections=100, duration_s=LOAD_S)
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=lambda: os.sched_setaffinity(0, client_cpus))
    edges: list[Reading] = []

    def reading() -> Reading:
        snap = server.snapshot()
        return _cpu_ns(server.pid), snap["responses_200"], snap["wait_calls"]

    def replies() -> int:
        edges.append(reading())
        return edges[-1][1]

    try:
        time.sleep(1.0)  # wrk's connections in
        first = reading()
        time.sleep(PLAIN_S)
        spans = {"plain_before": (first, reading())}
        # As the sweep counts, then each system call's own tracepoint (the counting phase alone is kept).
        for each in (instruments, dataclasses.replace(instruments, syscall_numbers={})):
            window = anatomy.measure(each, [server.pid], out / str(len(edges)), replies, WINDOW_S)
            if isinstance(window, anatomy.Unavailable):
                return {"unavailable": window.reason}
            window.finish()
        first = reading()
        time.sleep(PLAIN_S)
        spans["plain_after"] = (first, reading())
    finally:
        wrk.communicate(timeout=LOAD_S + 60)
    if len(edges) == 8:
        spans.update(zip(PHASES, ((edges[0], edges[1]), (edges[2], edges[3]), (edges[6], edges[7])), strict=True))
    return _row(spans)


def _row(spans: dict[str, tuple[Reading, Reading]]) -> dict:
    """Per span, CPU µs per reply (under its name) and wait calls per reply (NAME_waits); "plain" and
    "plain_waits" the means of the plain spans before and after."""
    row: dict[str, float | None] = {}
    for name, (a, b) in spans.items():
        ns = _per_reply(a, b, 0)
        row[name] = ns / 1e3 if ns is not None else None
        row[f"{name}_waits"] = _per_reply(a, b, 2)
    for suffix in ("", "_waits"):
        plain = [v for v in (row.get(f"plain_before{suffix}"), row.get(f"plain_after{suffix}")) if v is not None]
        row[f"plain{suffix}"] = statistics.mean(plain) if plain else None
    return row


def _per_reply(a: Reading, b: Reading, which: int) -> float | None:
    """Reading field `which` per reply between two readings."""
    return (b[which] - a[which]) / (b[1] - a[1]) if b[1] > a[1] else None


def _small_run(results_dir: str, with_anatomy: bool) -> dict:
    argv = [sys.executable, "-m", "invoke", "reproduce", "--sweeps", "dead", "--variants", "up", "--backends",
            "poll", "--dead", ",".join(map(str, SMALL_DEAD)), "--duration", str(SMALL_DURATION_S), "--load",
            SMALL_LOAD, "--no-report", "--results-dir", results_dir] + ([] if with_anatomy else ["--no-anatomy"])
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=paths.ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise UserError(f"the small sweep failed: {proc.stderr.strip()[-300:]}")
    run_dir = Path(results_dir) / "latest"
    record = json.loads((run_dir / "run.json").read_text())
    points = [model.read_point(p) for p in sorted((run_dir / "points").glob("*.json"))]
    windows = [p.anatomy.wall_s for p in points if isinstance(p.anatomy, model.AnatomyFigures) and p.anatomy.wall_s]
    return {"anatomy": with_anatomy, "wall_s": round(wall, 1), "timings": record.get("timings", {}),
            "measuring_s": record.get("timings", {}).get("measuring_s", 0.0),
            "dead_points": len([p for p in points if p.sweep == model.DEAD and p.ok]), "window_wall_s": windows,
            "unavailable": sorted({p.anatomy.reason for p in points if isinstance(p.anatomy, model.Unavailable)})}


def _small_pair(n: int) -> tuple[dict, dict]:
    """Round n's two small sweeps, (without, with) the anatomy, run in the order n's parity gives."""
    pair = {}
    for with_anatomy in ((False, True) if n % 2 else (True, False)):
        with tempfile.TemporaryDirectory(prefix="epollbench-anatomy-wall-") as tmp:
            pair[with_anatomy] = {"round": n, **_small_run(tmp, with_anatomy)}
    return pair[False], pair[True]


def quick_dead_points(fd_limit: int) -> int:
    quick = plan.make_plan("quick")
    return sum(len([lv for lv in plan.dead_levels(quick, fd_limit, s.backend) if not lv.skip_reason])
               for s in quick.series) * len(quick.variants) * quick.repeat


def wall_time(fd_limit: int, quick_wall_s: float | None, quick_source: str, rounds: int = WALL_ROUNDS) -> dict:
    runs, added = [], []
    for n in range(1, rounds + 1):
        off, on = _small_pair(n)
        runs += [off, on]
        added.append((on["measuring_s"] - off["measuring_s"]) / (on["dead_points"] or 1))
    per_point = stats.interval_record(added)
    quick_points = quick_dead_points(fd_limit)
    extrapolated = (per_point["median"] or 0.0) * quick_points
    result = {"runs": runs, "added_s_per_dead_point": per_point, "rounds_added_s": [round(a, 3) for a in added],
              "window_wall_s": stats.interval_record([w for run in runs for w in run["window_wall_s"]]),
              "quick_dead_points": quick_points, "quick_added_s_extrapolated": round(extrapolated, 1),
              "quick_wall_s": quick_wall_s, "quick_wall_source": quick_source,
              "target_s_per_point": MAX_ADDED_S_PER_POINT, "target_share": MAX_ADDED_SHARE}
    if quick_wall_s:
        # The quick run of item 4 measured with the anatomy on: its wall time without is that minus the added.
        base = quick_wall_s - extrapolated if quick_source == QUICK_TIMED_HERE else quick_wall_s
        result["quick_added_share_extrapolated"] = round(extrapolated / base, 3) if base > 0 else None
    return result


def last_quick_wall(results: Path) -> tuple[float | None, str]:
    """The quick profile's wall time of the newest stored bench that timed it (before the anatomy existed)."""
    for path in sorted(results.glob("bench-*.json"), reverse=True):
        try:
            harness = json.loads(path.read_text()).get("harness") or {}
        except (OSError, json.JSONDecodeError):
            continue
        if harness.get("wall_s"):
            return float(harness["wall_s"]), f"{path.name} (before the anatomy)"
    return None, "none stored"
