"""The load generators: httperf (the 2002 active load), wrk (capacity) and openload (a fixed offered rate, open
loop: images/openload), their command lines and their output parsed.

The 2002 study drove dphttpd with httperf as Davide Libenzi did in 2001 (lse-2002.json, libenzi_2001):
`--think-timeout 5 --timeout 5 --num-calls 2500 --num-conns 100 --hog --rate 100`: 100 keep-alive
connections opened at 100 per second, each making num-calls requests one after another. The metric is
httperf's reply rate. ActiveLoad keeps those values as its defaults; only num-calls is sized per point so a
point lasts about as long as planned at the reply rate it will see.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..catalog import HTTPERF, OPEN, WRK
from ..errors import UserError
from .jsonlines import last_json

# httperf samples the reply rate once per 5 s (RATE_INTERVAL in httperf.c): a shorter run has no samples.
REPLY_RATE_SAMPLE_S = 5.0
# num-calls bounds: below 10 calls per connection, connection setup dominates what is measured; the upper
# bound keeps a point finite when the expected reply rate is wildly overestimated (a rate of 10 M/s would
# ask for 100 calls per connection per second planned).
MIN_CALLS = 10
MAX_CALLS = 100_000


@dataclass(frozen=True)
class ActiveLoad:
    """httperf's active load; the defaults are the 2001/2002 values except server and port."""

    port: int
    server: str = "127.0.0.1"
    uri: str = "/"
    connections: int = 100
    rate: float = 100
    num_calls: int = 2500
    timeout: float = 5
    think_timeout: float = 5
    hog: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"httperf port {self.port} is not a TCP port: use 1-65535")
        for name in ("connections", "num_calls"):
            if getattr(self, name) < 1:
                raise UserError(f"httperf {name.replace('_', '-')} must be at least 1 "
                                f"(got {getattr(self, name)})")
        for name in ("rate", "timeout", "think_timeout"):
            if not getattr(self, name) > 0:
                raise UserError(f"httperf {name.replace('_', '-')} must be above 0 (got {getattr(self, name)})")


def _arg(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def command(load: ActiveLoad) -> list[str]:
    """The httperf argv for load."""
    argv = [HTTPERF]
    if load.hog:
        argv.append("--hog")
    argv += ["--server", load.server, "--port", str(load.port), "--uri", load.uri,
             "--num-conns", str(load.connections), "--rate", _arg(load.rate),
             "--num-calls", str(load.num_calls), "--timeout", _arg(load.timeout),
             "--think-timeout", _arg(load.think_timeout)]
    return argv


# The probe that sizes a point's load: its first calls per connection, the length it aims at when that was
# too short to tell, its connection rate (fast, so that it measures serving rather than the ramp), and the
# rate assumed when httperf's output is unreadable.
PROBE_CALLS = 50
PROBE_SECONDS = 1.5
PROBE_CONNECTION_RATE = 1000
PROBE_FALLBACK_RATE = 1000.0


def probe_rate(run: Callable[[ActiveLoad], str], server: str, port: int, connections: int) -> float:
    """The reply rate a load will see, from one or two short httperf runs: run(load) runs one and returns
    its output. One too short to tell is run again sized for PROBE_SECONDS. It is not a result."""
    calls, rate = PROBE_CALLS, PROBE_FALLBACK_RATE
    for _attempt in range(2):
        load = ActiveLoad(server=server, port=port, connections=connections, rate=PROBE_CONNECTION_RATE,
                          num_calls=calls)
        try:
            parsed = parse(run(load))
        except ValueError:
            return rate
        rate = max(parsed["reply_rate"]["overall"], 100.0)
        if parsed["total"]["test_duration_s"] >= PROBE_SECONDS / 2:
            break
        calls = calls_for_duration(rate, PROBE_SECONDS, connections)
    return rate


def calls_for_duration(reply_rate: float, duration_s: float, connections: int) -> int:
    """num-calls per connection so that connections * num-calls replies take about duration_s at reply_rate,
    kept within [MIN_CALLS, MAX_CALLS]."""
    if not reply_rate > 0 or not duration_s > 0 or connections < 1:
        raise ValueError(f"calls_for_duration needs reply_rate > 0, duration_s > 0, connections >= 1 "
                         f"(got {reply_rate}, {duration_s}, {connections})")
    calls = math.ceil(reply_rate * duration_s / connections)
    return max(MIN_CALLS, min(MAX_CALLS, calls))


# ---- httperf output ------------------------------------------------------------------------------------

_NUM = r"(-?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|inf|nan))"

# (section, line pattern, field names): every line httperf 0.9.0's basic statistics print (stat/basic.c).
_HTTPERF_LINES = [
    ("Total", r"Total: connections {n} requests {n} replies {n} test-duration {n} s",
     ["connections", "requests", "replies", "test_duration_s"]),
    ("Connection rate", r"Connection rate: {n} conn/s \({n} ms/conn, <={n} concurrent connections\)",
     ["per_s", "ms_per_conn", "max_concurrent"]),
    ("Connection time", r"Connection time \[ms\]: min {n} avg {n} max {n} median {n} stddev {n}",
     ["min", "avg", "max", "median", "stddev"]),
    ("Connection time connect", r"Connection time \[ms\]: connect {n}", ["connect"]),
    ("Connection length", r"Connection length \[replies/conn\]: {n}", ["replies_per_conn"]),
    ("Request rate", r"Request rate: {n} req/s \({n} ms/req\)", ["per_s", "ms_per_req"]),
    ("Request size", r"Request size \[B\]: {n}", ["bytes"]),
    ("Reply rate", r"Reply rate \[replies/s\]: min {n} avg {n} max {n} stddev {n} \({n} samples\)",
     ["min", "avg", "max", "stddev", "samples"]),
    ("Reply time", r"Reply time \[ms\]: response {n} transfer {n}", ["response", "transfer"]),
    ("Reply size", r"Reply size \[B\]: header {n} content {n} footer {n} \(total {n}\)",
     ["header", "content", "footer", "total"]),
    ("Reply status", r"Reply status: 1xx={n} 2xx={n} 3xx={n} 4xx={n} 5xx={n}",
     ["1xx", "2xx", "3xx", "4xx", "5xx"]),
    ("CPU time", r"CPU time \[s\]: user {n} system {n} \(user {n}% system {n}% total {n}%\)",
     ["user_s", "system_s", "user_pct", "system_pct", "total_pct"]),
    ("Net I/O", r"Net I/O: {n} KB/s \({n}\*10\^6 bps\)", ["kb_per_s", "mbit_per_s"]),
    ("Errors", r"Errors: total {n} client-timo {n} socket-timo {n} connrefused {n} connreset {n}",
     ["total", "client_timo", "socket_timo", "connrefused", "connreset"]),
    ("Errors (socket)", r"Errors: fd-unavail {n} addrunavail {n} ftab-full {n} other {n}",
     ["fd_unavail", "addrunavail", "ftab_full", "other"]),
]
_HTTPERF_RES = [(section, re.compile("^" + pattern.replace("{n}", _NUM) + r"\s*$", re.M), names)
                for section, pattern, names in _HTTPERF_LINES]
_INT_FIELDS = {"connections", "requests", "replies", "max_concurrent", "samples", "1xx", "2xx", "3xx",
               "4xx", "5xx", "total", "client_timo", "socket_timo", "connrefused", "connreset",
               "fd_unavail", "addrunavail", "ftab_full", "other"}


def _number(name: str, text: str) -> int | float:
    return int(text) if name in _INT_FIELDS and text.lstrip("-").isdigit() else float(text)


def parse(text: str) -> dict:
    """Every number of httperf's summary, keyed by section.

    reply_rate["avg"] is httperf's mean of its 5 s samples; when the run was too short for one sample
    (samples == 0) it is replies / test-duration instead, min/max/stddev are None, and
    reply_rate["avg_source"] says which. reply_rate["overall"] is always replies / test-duration.
    """
    lines: dict[str, dict] = {}
    missing = []
    for section, regex, names in _HTTPERF_RES:
        m = regex.search(text)
        if m is None:
            missing.append(section)
            continue
        lines[section] = {name: _number(name, value) for name, value in zip(names, m.groups(), strict=True)}
    if missing:
        raise ValueError(f"not httperf output: no {', '.join(repr(s) for s in missing)} line"
                         f"{'s' if len(missing) > 1 else ''}")

    total = lines["Total"]
    duration = total["test_duration_s"]
    overall = total["replies"] / duration if duration > 0 else 0.0
    reply_rate = dict(lines["Reply rate"], overall=overall, avg_source="samples")
    if reply_rate["samples"] == 0:
        reply_rate.update(min=None, max=None, stddev=None, avg=overall, avg_source="replies/test-duration")

    errors = dict(lines["Errors"], **lines["Errors (socket)"])
    burst = re.search(r"^Maximum connect burst length: (\d+)", text, re.M)
    argv = re.search(r"^(httperf --.*?)\s*$", text, re.M)
    return {
        "command": argv.group(1) if argv else None,
        "max_connect_burst": int(burst.group(1)) if burst else None,
        "total": total,
        "connection_rate": lines["Connection rate"],
        "connection_time_ms": dict(lines["Connection time"], **lines["Connection time connect"]),
        "connection_length_replies": lines["Connection length"]["replies_per_conn"],
        "request_rate": lines["Request rate"],
        "request_size_b": lines["Request size"]["bytes"],
        "reply_rate": reply_rate,
        "reply_time_ms": lines["Reply time"],
        "reply_size_b": lines["Reply size"],
        "reply_status": lines["Reply status"],
        "cpu": lines["CPU time"],
        "net_io": lines["Net I/O"],
        "errors": errors,
    }


# ---- wrk --------------------------------------------------------------------------------------------------

def wrk_command(url: str, connections: int = 100, threads: int = 1, duration_s: float = 10,
                timeout_s: float = 5) -> list[str]:
    """The wrk argv: `connections` keep-alive connections shared by `threads` threads for duration_s."""
    if connections < 1 or threads < 1 or connections < threads:
        raise UserError(f"wrk needs 1 <= threads <= connections (got {threads} threads, "
                        f"{connections} connections)")
    if not duration_s >= 1 or not timeout_s > 0:
        raise UserError(f"wrk needs a duration of at least 1 s and a timeout above 0 "
                        f"(got {duration_s} s, {timeout_s} s)")
    return [WRK, "--threads", str(threads), "--connections", str(connections),
            "--duration", f"{math.ceil(duration_s)}s", "--timeout", f"{_arg(timeout_s)}s", url]


# wrk's units (units.c): times in us/ms/s/m/h, counts with SI suffixes, bytes with binary suffixes.
_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SI = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}
_V = r"([\d.]+)"


def _time_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_MS[unit]


def parse_wrk(text: str) -> dict:
    """wrk's summary: throughput, latency (ms), totals and socket errors (0 when wrk printed none)."""
    patterns = {
        "Latency": rf"^\s*Latency\s+{_V}(us|ms|s|m|h)\s+{_V}(us|ms|s|m|h)\s+{_V}(us|ms|s|m|h)\s+{_V}%",
        "requests in": rf"^\s*(\d+) requests in {_V}(us|ms|s|m|h), {_V}(B|KB|MB|GB|TB|PB) read",
        "Requests/sec": rf"^Requests/sec:\s+{_V}\s*$",
        "Transfer/sec": rf"^Transfer/sec:\s+{_V}(B|KB|MB|GB|TB|PB)\s*$",
    }
    found = {name: re.search(p, text, re.M) for name, p in patterns.items()}
    missing = [name for name, m in found.items() if m is None]
    if missing:
        raise ValueError(f"not wrk output: no {', '.join(repr(s) for s in missing)} line"
                         f"{'s' if len(missing) > 1 else ''}")
    matched = {name: m for name, m in found.items() if m is not None}
    lat = matched["Latency"].groups()
    total = matched["requests in"].groups()
    transfer = matched["Transfer/sec"].groups()
    setup = re.search(r"^\s*(\d+) threads and (\d+) connections", text, re.M)
    req_sec = re.search(rf"^\s*Req/Sec\s+{_V}([kMGTP]?)\s+{_V}([kMGTP]?)\s+{_V}([kMGTP]?)", text, re.M)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "threads": int(setup.group(1)) if setup else None,
        "connections": int(setup.group(2)) if setup else None,
        "requests_per_s": float(matched["Requests/sec"].group(1)),
        "transfer_bytes_per_s": float(transfer[0]) * _BINARY[transfer[1]],
        "latency_ms": {"avg": _time_ms(lat[0], lat[1]), "stdev": _time_ms(lat[2], lat[3]),
                       "max": _time_ms(lat[4], lat[5]), "within_stdev_pct": float(lat[6])},
        "thread_requests_per_s": None if req_sec is None else {
            "avg": float(req_sec.group(1)) * _SI[req_sec.group(2)],
            "stdev": float(req_sec.group(3)) * _SI[req_sec.group(4)],
            "max": float(req_sec.group(5)) * _SI[req_sec.group(6)]},
        "requests": int(total[0]),
        "duration_s": _time_ms(total[1], total[2]) / 1e3,
        "bytes_read": float(total[3]) * _BINARY[total[4]],
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  (int(x) for x in socket.groups()) if socket else (0, 0, 0, 0),
                                  strict=True)),
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


# ---- openload (images/openload) ----------------------------------------------------------------------------

OPENLOAD = "openload"  # the program; its load's name in the catalog is OPEN
OPEN_DEFAULT_CONNECTIONS = 100  # as the 2002 study's httperf
# openload's own bounds (openload.c): beyond them it exits 2.
OPEN_MAX_RATE = 1e8
OPEN_MAX_DURATION_S = 86400.0
OPEN_MAX_TIMEOUT_S = 600.0
OPEN_MAX_TIMER_SLACK_US = 10_000
OPEN_MAX_BATCH_US = 10_000
OPEN_MAX_REQUESTS_OUT = 100_000_000  # requests a --requests-out file holds at most (reqlog.h's REQLOG_MAX)
# openload's defaults (openload.c), which OpenLoad passes on unless told otherwise.
OPEN_DEFAULT_TIMER_SLACK_US = 1
OPEN_DEFAULT_BATCH_US = 0
OPEN_TIMERS = ("auto", "epoll_pwait2", "timerfd")
# openload gives its connections this long to open (or --timeout when longer) before it gives up, exit 1.
OPEN_CONNECT_S = 10.0
# What openload prints: the percentiles of its latency objects, in microseconds.
OPEN_PERCENTILES = ("p50", "p90", "p99", "p99.9", "max")
OPEN_ERROR_KINDS = ("connect", "write", "read", "closed", "timeout", "parse", "unsent", "unanswered")


@dataclass(frozen=True)
class OpenLoad:
    """openload's load: `rate` requests/s over `connections` keep-alive connections for duration_s, each
    connection on its own fixed schedule at rate/connections; a request unanswered after timeout_s is an
    error, and the replies still due when duration_s ends are awaited that long at most."""

    port: int
    rate: float
    server: str = "127.0.0.1"
    path: str = "/"
    connections: int = OPEN_DEFAULT_CONNECTIONS
    duration_s: float = 10
    timeout_s: float = 5
    lag_threshold_us: int = 1000
    # How late the kernel may end the generator's sleeps (PR_SET_TIMERSLACK): larger batches wakeups, saving
    # CPU, and adds up to that much to the latency of requests sent on time.
    timer_slack_us: int = OPEN_DEFAULT_TIMER_SLACK_US
    # How late the generator lets the next request be before it wakes to send it with every other request due
    # by then (--batch-us): never early; the delay counts in each request's latency.
    batch_us: int = OPEN_DEFAULT_BATCH_US
    # How the generator sleeps until due (--timer): epoll_pwait2's timeout ("auto" where the kernel has it) or
    # a timerfd, armed again only when the time it waits for changes.
    timer: str = OPEN_TIMERS[0]
    # Where openload writes each request's due time and corrected latency after the run (--requests-out, a path
    # where it runs: in the client container); "" (the default): no such file. Its format: images/openload/
    # reqlog.h; experiment/host/tail.py reads it.
    requests_out: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"{OPEN} load port {self.port} is not a TCP port: use 1-65535")
        if not 0 < self.rate <= OPEN_MAX_RATE:
            raise UserError(f"{OPEN} load rate {self.rate:g} requests/s: give a rate above 0 and at most "
                            f"{OPEN_MAX_RATE:g}")
        if self.connections < 1:
            raise UserError(f"{OPEN} load connections must be at least 1 (got {self.connections})")
        if not 0 < self.duration_s <= OPEN_MAX_DURATION_S:
            raise UserError(f"{OPEN} load duration {self.duration_s:g} s: give above 0 and at most "
                            f"{OPEN_MAX_DURATION_S:g}")
        if not 0 < self.timeout_s <= OPEN_MAX_TIMEOUT_S:
            raise UserError(f"{OPEN} load timeout {self.timeout_s:g} s: give above 0 and at most "
                            f"{OPEN_MAX_TIMEOUT_S:g}")
        if not 1 <= self.timer_slack_us <= OPEN_MAX_TIMER_SLACK_US:
            raise UserError(f"{OPEN} load timer slack {self.timer_slack_us} us: give 1-{OPEN_MAX_TIMER_SLACK_US}")
        if not 0 <= self.batch_us <= OPEN_MAX_BATCH_US:
            raise UserError(f"{OPEN} load batch window {self.batch_us} us: give 0-{OPEN_MAX_BATCH_US}")
        if self.timer not in OPEN_TIMERS:
            raise UserError(f"{OPEN} load timer {self.timer!r}: choose {'|'.join(OPEN_TIMERS)}")
        if self.lag_threshold_us < 0:
            raise UserError(f"{OPEN} load lag threshold must be 0 us or more (got {self.lag_threshold_us})")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise UserError(f"{OPEN} load path {self.path!r}: start it with / and leave out spaces and line breaks")
        if self.requests_out and not self.requests_out.startswith("/"):
            raise UserError(f"{OPEN} load requests file {self.requests_out!r}: give an absolute path")
        if self.requests_out and math.ceil(self.rate * self.duration_s) > OPEN_MAX_REQUESTS_OUT:
            raise UserError(f"{OPEN} load requests file: rate x duration is over the {OPEN_MAX_REQUESTS_OUT:,} "
                            f"requests it can hold")

    @property
    def bound_s(self) -> float:
        """The longest the run can take: opening the connections, the load, then the drain."""
        return max(OPEN_CONNECT_S, self.timeout_s) + self.duration_s + self.timeout_s


def open_command(load: OpenLoad) -> list[str]:
    """The openload argv for load."""
    return [OPENLOAD, "--host", load.server, "--port", str(load.port), "--path", load.path,
            "--connections", str(load.connections), "--rate", _arg(load.rate), "--duration", _arg(load.duration_s),
            "--timeout", _arg(load.timeout_s), "--lag-threshold-us", str(load.lag_threshold_us),
            "--timer-slack-us", str(load.timer_slack_us), "--batch-us", str(load.batch_us),
            "--timer", load.timer, *(["--requests-out", load.requests_out] if load.requests_out else [])]


def _open_object(text: str) -> dict:
    """The last JSON object line of openload's output."""
    data = last_json(text, lambda d: d.get("program") == OPENLOAD)
    if data is None:
        raise ValueError("not openload output: no JSON object with \"program\": \"openload\"")
    return data


def parse_openload(text: str) -> dict:
    """openload's figures: offered and achieved rate (requests/s), the latency percentiles in ms (corrected:
    from each request's due time; and uncorrected, from its send), requests, replies, errors by kind, the
    two flags with what raised them (lagged: any late send; lagged_p99, lagged_p999: enough late sends to move
    that percentile), and the generator's CPU. raw keeps the whole object."""
    data = _open_object(text)
    try:
        latency = {f"{kind}_ms": {p: data[f"{kind}_us"][p] / 1e3 for p in OPEN_PERCENTILES}
                   for kind in ("latency", "uncorrected_latency")}
        errors = {kind: int(data["errors"][kind]) for kind in OPEN_ERROR_KINDS}
        lagged, overloaded, cpu = data["lagged"], data["overloaded"], data["cpu"]
        figures = {
            "offered_rate": float(data["offered_rate"]),
            "achieved_rate": float(data["achieved_rate"]),
            "achieved_share": float(overloaded["achieved_share"]),
            "connections": int(data["connections"]),
            "duration_s": float(data["duration_s"]),
            "elapsed_s": float(data["elapsed_s"]),
            "requests": int(data["requests"]),
            "sent": int(data["sent"]),
            "replies": int(data["replies"]),
            "non_2xx": int(data["non_2xx"]),
            **latency,
            "errors": errors,
            "error_total": sum(errors.values()),
            "lagged": bool(lagged["raised"]),
            "lagged_p99": bool(lagged["p99"]),
            "lagged_p999": bool(lagged["p99.9"]),
            "lag": {"late_sends": int(lagged["late_sends"]), "checked_sends": int(lagged["checked_sends"]),
                    "late_share": float(lagged["late_share"]), "max_ms": lagged["max_lag_us"] / 1e3,
                    "threshold_ms": lagged["threshold_us"] / 1e3},
            "overloaded": bool(overloaded["raised"]),
            "cpu": {"user_s": float(cpu["user_s"]), "system_s": float(cpu["system_s"]),
                    "busy_share": float(cpu["busy_share"])},
            "cpu_per_reply_us": float(cpu["per_reply_us"]) if data["replies"] else None,
            "interrupted": bool(data["interrupted"]),
            "raw": data,
        }
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not openload output: {exc!r} missing or malformed") from exc
    return figures
