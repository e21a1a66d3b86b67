"""Item 6: the load generators, each on one client CPU, against ephttpd (epoll, 0 dead) on the server CPU, over
ROUNDS interleaved rounds, medians with a distribution-free 95% interval (stats.median_interval): wrk's and
httperf's rate and their own CPU per request; openload at OPEN_RATE in each of VARIANTS (its timer, timer
slack and batch window, in an order rotated each round), then at SATURATION_RATE, more than it can send on
one CPU, with its defaults (the rate it reaches there is its ceiling). Per openload row: the achieved rate,
its CPU per request (getrusage of each child), the share of its sends it found late (`lagged`'s late_share),
its mean lag, its loop's waits per reply, lagged (any late send, and for p99: late sends at least 1% of all, the
rule openload's flags and the goal use) and overloaded."""

from __future__ import annotations

import resource
import subprocess
from dataclasses import dataclass

from ...run import loads
from .. import launch, native, stats
from ..launch import Cpus
from ..registry import Context

ROUNDS = 6
OPEN_RATE = 100_000       # requests/s: the rate openload must reach on one CPU, not lagged
SATURATION_RATE = 200_000  # beyond both openload's and the server's ceiling on one CPU
# openload's share of the offered rate below which it says overloaded (openload.c's OVERLOAD_TOLERANCE).
ACHIEVED_SHARE = 0.99


@dataclass(frozen=True)
class Variant:
    """How openload sleeps: its timer slack (--timer-slack-us), its batch window (--batch-us) and its timer
    (--timer; a timerfd has no slack)."""

    timer_slack_us: int
    batch_us: int
    timer: str = loads.OPEN_TIMERS[0]

    @property
    def name(self) -> str:
        if self.timer == "timerfd":
            return f"timerfd batch {self.batch_us}"
        return f"slack {self.timer_slack_us} batch {self.batch_us}"


DEFAULT = Variant(loads.OPEN_DEFAULT_TIMER_SLACK_US, loads.OPEN_DEFAULT_BATCH_US)
# What each variant's CPU per request is divided by in its own round: waking at each due time, 1 us of slack.
BASELINE = Variant(1, 0)
VARIANTS = (Variant(1, 0), Variant(20, 0), Variant(50, 0), Variant(1, 20), Variant(1, 50),
            Variant(1, 0, "timerfd"), Variant(1, 20, "timerfd"), Variant(1, 50, "timerfd"))


def run(context: Context) -> dict:
    return generators(context.cpus)


def generators(cpus: Cpus, rounds: int = ROUNDS) -> dict:
    """Each round, one ephttpd epoll on the server CPU, and on the client CPU wrk, httperf, openload in each
    variant at OPEN_RATE, then openload with its defaults at SATURATION_RATE."""
    one = cpus.one_client()
    rows = [row for n in range(1, rounds + 1) for row in _round(one, n)]
    return {"rows": rows, "summary": summary(rows)}


def _round(cpus: Cpus, n: int) -> list[dict]:
    turn = n % len(VARIANTS)
    order = VARIANTS[turn:] + VARIANTS[:turn]
    with launch.ephttpd(cpus, "epoll") as (port, _pids):
        rows = [generator(cpus, port, "wrk"), generator(cpus, port, "httperf")]
        rows += [generator(cpus, port, "openload", OPEN_RATE, variant) for variant in order]
        rows.append(generator(cpus, port, "openload", SATURATION_RATE, DEFAULT))
    return [{**row, "round": n} for row in rows]


def summary(rows: list[dict]) -> dict:
    """wrk's and httperf's rate and CPU per request (medians, and [95% interval]s beside them); openload's
    highest sustained offered rate with its defaults and the CPU per request there; every variant's line;
    and whether the defaults reach OPEN_RATE."""
    found: dict = {name: _closed_loop(rows, name) for name in ("wrk", "httperf")}
    sustained = [best for n in sorted({r["round"] for r in rows}) if (best := _sustained(rows, n))]
    found["openload"] = {"max_sustained_rate": stats.median([r["offered"] for r in sustained]),
                         "cpu_us_per_request": stats.median([r["cpu_us_per_request"] for r in sustained
                                                             if r["cpu_us_per_request"]])}
    lines = variant_lines(rows)
    return {**found, "openload_variants": lines, "goal": goal(lines)}


def _closed_loop(rows: list[dict], name: str) -> dict:
    line = stats.summarize([r for r in rows if r["generator"] == name], ("generator",),
                           {"rate": stats.measured, "cpu_us_per_request": stats.positive})[0]
    return {"rate": stats.middle(line["rate"]), "cpu_us_per_request": stats.middle(line["cpu_us_per_request"]),
            "rate_interval": line["rate"], "cpu_us_per_request_interval": line["cpu_us_per_request"]}


def _sustained(rows: list[dict], n: int) -> dict | None:
    """Round n's openload row with its defaults at the highest offered rate it achieved, or None."""
    return max((r for r in rows if r["generator"] == "openload" and r["round"] == n and not r["overloaded"]
                and r["variant"] == DEFAULT.name), key=lambda r: r["offered"], default=None)


VARIANT_METRICS = {"rate": stats.measured, "achieved_share": stats.measured, "cpu_us_per_request": stats.positive,
                   "late_share": stats.measured, "mean_lag_us": stats.measured, "busy_share": stats.measured,
                   "waits_per_reply": stats.measured, "p50_ms": stats.measured, "p99_ms": stats.measured,
                   "p99.9_ms": stats.measured}


def variant_lines(rows: list[dict]) -> list[dict]:
    """One line per variant and offered rate: the median [95% interval] of each of VARIANT_METRICS and of its
    CPU per request over BASELINE's in the same round at the same rate, and in how many rounds it was lagged
    and overloaded."""
    opened = [r for r in rows if r["generator"] == "openload"]
    lines = stats.summarize(opened, ("variant", "offered", "timer", "timer_slack_us", "batch_us"), VARIANT_METRICS)
    for line in lines:
        same = [r for r in opened if (r["variant"], r["offered"]) == (line["variant"], line["offered"])]
        line["cpu_vs_baseline"] = stats.median_interval([r["cpu_us_per_request"] / base for r in same
                                                         if r["cpu_us_per_request"]
                                                         and (base := _baseline_cpu(opened, r))])
        # Lagged as openload's p99 rule has it: late sends at least 1% of all, enough to have moved p99.
        line["lagged_rounds"] = sum(r["lagged_p99"] for r in same)
        line["overloaded_rounds"] = sum(r["overloaded"] for r in same)
    return lines


def _baseline_cpu(opened: list[dict], row: dict) -> float | None:
    """BASELINE's CPU per request in row's round at row's offered rate, or None."""
    return next((r["cpu_us_per_request"] for r in opened if r["variant"] == BASELINE.name
                 and (r["round"], r["offered"]) == (row["round"], row["offered"])), None)


def goal(lines: list[dict]) -> dict:
    """Whether openload with its defaults reaches OPEN_RATE, not lagged: "met" when no round was lagged or
    overloaded and the whole interval of the achieved share is within openload's tolerance, "median" when only
    the median is (and at most half the rounds were lagged or overloaded), else "missed"."""
    line = next((x for x in lines if (x["variant"], x["offered"]) == (DEFAULT.name, OPEN_RATE)), None)
    if line is None or line["achieved_share"] is None:
        return {"rate": OPEN_RATE, "variant": DEFAULT.name, "verdict": "missed", "achieved_share": None}
    share, low, _high = line["achieved_share"]
    flagged = max(line["lagged_rounds"], line["overloaded_rounds"])
    verdict = ("met" if low >= ACHIEVED_SHARE and flagged == 0 else
               "median" if share >= ACHIEVED_SHARE and 2 * flagged <= line["rounds"] else "missed")
    return {"rate": OPEN_RATE, "variant": DEFAULT.name, "verdict": verdict, "achieved_share": line["achieved_share"],
            "lagged_rounds": line["lagged_rounds"], "overloaded_rounds": line["overloaded_rounds"],
            "rounds": line["rounds"]}


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def generator(cpus: Cpus, port: int, name: str, rate: float | None = None, variant: Variant = DEFAULT) -> dict:
    """One load generator's run on the client CPU: its rate and its own CPU per request (the children's
    rusage over the run; each run's process is reaped before the next starts)."""
    before = _child_cpu_s()
    found = _openload(cpus, port, rate, variant) if name == "openload" else _CLOSED[name](cpus, port)
    cpu_s = _child_cpu_s() - before
    replies = found.pop("requests")
    return {"generator": name, "rate": found.pop("rate"), "requests": replies,
            "cpu_us_per_request": cpu_s * 1e6 / replies if replies else None, **found}


def _wrk(cpus: Cpus, port: int) -> dict:
    result = launch.wrk(cpus, port)
    return {"requests": result["replies"], "rate": result["rate"]}


def _httperf(cpus: Cpus, port: int) -> dict:
    load = loads.ActiveLoad(port=port, connections=launch.ACTIVE, rate=loads.PROBE_CONNECTION_RATE,
                            num_calls=loads.calls_for_duration(150_000, launch.LOAD_SECONDS, launch.ACTIVE))
    parsed = loads.parse(launch.run_httperf(cpus, load, launch.LOAD_SECONDS))
    return {"requests": parsed["total"]["replies"], "rate": parsed["reply_rate"]["overall"]}


_CLOSED = {"wrk": _wrk, "httperf": _httperf}


def _openload(cpus: Cpus, port: int, rate: float | None, variant: Variant) -> dict:
    load = loads.OpenLoad(port=port, rate=float(rate or 0), connections=launch.ACTIVE,
                          duration_s=launch.LOAD_SECONDS, timeout_s=2, timer_slack_us=variant.timer_slack_us,
                          batch_us=variant.batch_us, timer=variant.timer)
    proc = subprocess.run([str(native.BUILD / loads.OPENLOAD), *loads.open_command(load)[1:]],
                          capture_output=True, text=True, timeout=load.bound_s + 60, preexec_fn=cpus.pin_clients)
    parsed = loads.parse_openload(proc.stdout)
    lag = parsed["raw"]["lagged"]
    return {"requests": parsed["replies"], "rate": parsed["achieved_rate"], "offered": rate,
            "overloaded": parsed["overloaded"], "lagged": parsed["lagged"], "lagged_p99": parsed["lagged_p99"],
            "p99_ms": parsed["latency_ms"]["p99"],
            "variant": variant.name, "timer": variant.timer, "timer_slack_us": variant.timer_slack_us,
            "batch_us": variant.batch_us, "waits_per_reply": parsed["raw"]["cpu"]["waits_per_reply"],
            "achieved_share": parsed["achieved_share"], "p50_ms": parsed["latency_ms"]["p50"],
            "p99.9_ms": parsed["latency_ms"]["p99.9"], "busy_share": parsed["cpu"]["busy_share"],
            "late_share": lag["late_share"],
            "mean_lag_us": lag["mean_lag_us"], "late_sends": lag["late_sends"],
            "checked_sends": lag["checked_sends"]}
