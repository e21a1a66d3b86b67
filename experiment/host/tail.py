"""The tail without the interference: an open-loop point's corrected latency percentiles over all its requests
and over those a third party (parties.py) on the server's CPUs cannot have held up.

openload --requests-out writes each request's due time and corrected latency (images/openload/reqlog.h: one
record per request due, two little-endian int64s, due_ns then latency_ns, in due order; a negative latency,
-1, for a request without a reply); a capture of the switches on the server's CPUs (switches.py) gives the
stretches third parties held them. Both are CLOCK_MONOTONIC nanoseconds (perf -k CLOCK_MONOTONIC; openload's
clock, which a container shares with its host), so they join directly. A request is *excluded* when it was due
inside a third party's stretch or within AFTER_MS after its end, and *kept* otherwise: a request due during a
stretch finds the server's CPU taken, and those due just after it find the server still working off the
backlog (at 59k requests/s, 20 ms of a neighbour puts ~1,200 requests behind it). Only the stretches longer than
the interfered flag's (interference.THIRD_PARTY_STRETCH_MS, 1 ms) count: the kernel's threads take a server's
CPU for microseconds dozens of times a second here, and the guard after each would leave out most requests
for delays shorter than a millisecond, which no tail is made of.

Both sides are recomputed here from the file, by one method, so that they differ by the requests excluded and
nothing else. The raw side differs slightly from openload's own figures, which come from its histogram: those
are at or above the true sample by less than 1/1024 of it (images/openload/hist.h). The method: the nearest
rank, the smallest latency with at least p % of the latencies at or below it (hist.h's rank), over the
requests with a reply; max is the largest. A request without a reply is in neither side's percentiles, as in
openload's.

A stretch whose end perf did not see (switches.OnCpu.end_seen False) counts here until its end as recorded, the
next switch recorded on that CPU: an upper bound of the task's hold, so it may exclude requests it did not
delay, never keep one it did. The intervals are widened by the guard, sorted and merged, then each is found in
the due times by bisection: O(n + m log n) for n requests and m intervals.
"""

from __future__ import annotations

import operator
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ..model import Percentiles, Tail
from .interference import THIRD_PARTY_STRETCH_MS, Party
from .parties import THIRD_PARTY
from .switches import OnCpu

AFTER_MS = 10.0  # the guard: a request due this long after a third party's stretch ends is excluded too
RECORD = 16  # bytes: reqlog.h's REQLOG_RECORD, due_ns and latency_ns
# The percentiles, by name, in tenths of a percent (whole numbers: the ranks are exact).
PERCENTILES = (("p50", 500), ("p90", 900), ("p99", 990), ("p99.9", 999))


@dataclass(frozen=True)
class Requests:
    """A --requests-out file: request n due at due_ns[n] (CLOCK_MONOTONIC ns), answered latency_ns[n] ns later
    (negative: no reply)."""

    due_ns: array
    latency_ns: array

    def __len__(self) -> int:
        return len(self.due_ns)


def read(data: bytes) -> Requests:
    """The requests of a --requests-out file's bytes; ValueError when its size is not whole records."""
    if len(data) % RECORD:
        raise ValueError(f"not a --requests-out file: {len(data)} bytes is not a whole number of {RECORD}-byte "
                         f"records")
    values = array("q")
    if values.itemsize != 8:
        raise RuntimeError(f"this Python's array 'q' is {values.itemsize} bytes, not 8")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return Requests(values[0::2], values[1::2])


def load(path: Path) -> Requests:
    return read(path.read_bytes())


def merge(intervals: Iterable[tuple[int, int]], guard_ns: int = 0) -> list[tuple[int, int]]:
    """The intervals [start, end + guard_ns] (ns, both ends in), sorted, those that overlap or touch made one;
    ValueError for one that ends before it starts."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if end < start:
            raise ValueError(f"an interval that ends before it starts: {start} to {end} ns")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end + guard_ns))
        else:
            merged.append((start, end + guard_ns))
    return merged


def third_party(stretches: Iterable[OnCpu], cpus: Iterable[int], party: Party, start_ns: int, end_ns: int,
                longer_than_ms: float = THIRD_PARTY_STRETCH_MS) -> list[tuple[int, int]]:
    """The stretches third parties held any of cpus longer than longer_than_ms, as intervals (start_ns, end_ns)
    clipped to the capture's window [start_ns, end_ns] (an open end becomes that bound), each task judged once
    by party. A stretch whose end perf did not see counts to its end as recorded: an upper bound (the module's
    docstring)."""
    watched = set(cpus)
    judged: dict[tuple[int, str], str] = {}
    found = []
    shortest_ns = longer_than_ms * 1e6
    for stretch in stretches:
        if stretch.cpu not in watched or stretch.within(start_ns, end_ns) <= shortest_ns:
            continue
        key = (stretch.pid, stretch.comm)
        if key not in judged:
            judged[key] = party(stretch.pid, stretch.comm, stretch.tgid)
        if judged[key] == THIRD_PARTY:
            found.append((start_ns if stretch.start_ns is None else max(start_ns, stretch.start_ns),
                          end_ns if stretch.end_ns is None else min(end_ns, stretch.end_ns)))
    return found


def percentiles(ordered: Sequence[int]) -> Percentiles | None:
    """The percentiles of latencies in ns, sorted; None when there are none."""
    n = len(ordered)
    if not n:
        return None
    p50, p90, p99, p999 = (ordered[max(1, -(-tenths * n // 1000)) - 1] / 1e6 for _, tenths in PERCENTILES)
    return Percentiles(p50, p90, p99, p999, ordered[-1] / 1e6, n)


def join(requests: Requests, intervals: Iterable[tuple[int, int]], after_ms: float = AFTER_MS) -> Tail:
    """The tail over all of requests and over those not due inside any of intervals (third parties' stretches
    on the server's CPUs, (start_ns, end_ns) each) or within after_ms after one."""
    due, latency = _by_due(requests)
    kept: list[int] = []
    begin = 0
    for start, end in merge(intervals, round(after_ms * 1e6)):
        first = bisect_left(due, start, begin)
        kept.extend(latency[begin:first])
        begin = max(first, bisect_right(due, end, first))
    kept.extend(latency[begin:])
    raw = sorted(filter(_replied, latency))
    kept_replies = sorted(filter(_replied, kept))
    excluded = len(raw) - len(kept_replies)
    return Tail(percentiles(raw), percentiles(kept_replies), len(requests), len(raw), excluded,
                excluded / len(raw) if raw else 0.0, after_ms)


_replied = (-1).__lt__  # a latency of 0 or more: a reply (a C-level test, for the half million of a point)


def _by_due(requests: Requests) -> tuple[Sequence[int], Sequence[int]]:
    """The due times and latencies in due order: as they are when the file is (openload writes it so)."""
    due, latency = requests.due_ns, requests.latency_ns
    if all(map(operator.le, due, islice(due, 1, None))):
        return due, latency
    pairs = sorted(zip(due, latency, strict=True))
    return [d for d, _ in pairs], [x for _, x in pairs]
