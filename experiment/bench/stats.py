"""The one interval the benchmark states: a median with a distribution-free 95% interval (order statistics),
which needs no assumption about how the noisy host spreads the values."""

from __future__ import annotations

import math
import statistics


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
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
