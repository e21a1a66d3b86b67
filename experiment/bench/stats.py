"""The statistics the benchmark states: medians over interleaved rounds, and the one interval, a median with a
distribution-free 95% interval (order statistics), which needs no assumption about how the noisy host spreads
the values."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

# Rounds of items 1, 2, 3 and 6, interleaved so that the machine's drift hits every row alike; medians reported.
ROUNDS = 3

Interval = tuple[float, float, float]


def median_interval(values: list[float], level: float = 0.95) -> Interval | None:
    """The median and a distribution-free interval around it: order statistics k and n-k+1, k the largest
    with P(Binomial(n, 1/2) < k) <= (1 - level) / 2 (with 6 values: the least and the greatest)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    k, tail = 0, 0.0
    while k < n // 2:
        nxt = tail + math.comb(n, k) / 2 ** n
        if nxt > (1 - level) / 2:
            break
        tail, k = nxt, k + 1
    k = max(k, 1)
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


def interval_record(values: list[float]) -> dict:
    """median_interval as item 8's JSON records it: median, low, high and how many values."""
    found = median_interval(values)
    if found is None:
        return {"median": None, "low": None, "high": None, "n": 0}
    median, low, high = found
    return {"median": median, "low": low, "high": high, "n": len(values)}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def middle(interval: Interval | None) -> float | None:
    """The median of a median_interval, or None."""
    return None if interval is None else interval[0]


def measured(value: Any) -> bool:
    """A value that was read: every one but None."""
    return value is not None


def positive(value: Any) -> bool:
    """A cost or a share: None or zero means that nothing was counted."""
    return bool(value)


def summarize(rows: list[dict], keys: tuple[str, ...], metrics: Mapping[str, Callable[[Any], bool]]) -> list[dict]:
    """One line per distinct value of keys among the rows, in the order first seen: the keys, how many rows
    ("rounds"), and per metric the median [95% interval] (median_interval) of the rows' values that its
    predicate keeps (measured or positive: neither keeps None, which a row without the metric gives); None
    where none is kept."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [{**dict(zip(keys, key, strict=True)), "rounds": len(same),
             **{name: median_interval([r[name] for r in same if keep(r.get(name))])
                for name, keep in metrics.items()}}
            for key, same in groups.items()]


def cpu_summary(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Items 1 and 2: one line per distinct keys, the medians over rounds of rate, busy share and CPU per
    reply, and replies per server CPU-second (the server's capacity if its CPU were fully busy)."""
    lines = summarize(rows, keys, {"rate": measured, "server_busy_pct": positive, "cpu_us_per_reply": positive})
    for line in lines:
        for name in ("rate", "server_busy_pct", "cpu_us_per_reply"):
            line[name] = middle(line[name])
        cost = line["cpu_us_per_reply"]
        line["replies_per_cpu_s"] = 1e6 / cost if cost else None
    return lines
