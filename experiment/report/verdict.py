"""What counts as a change between two measurements of one point: compare's rule, which the comparison of two
runs and the Kernels section of one run over several kernels both apply.

A difference is called a change only by a stated rule (Verdict): where both sides repeated the point, their
repetitions' ranges do not overlap; where either ran it once, B/A is further from 1 than the noise allowance
(NOISE, ±15% by default). A point whose measured repetitions were disturbed on either side (other load on
the host, a throttled cgroup, a moved CPU clock: DISTURBED) is no change whatever its numbers, and is said to
be disturbed (BenchExec's rule: flag a disturbed measurement, never read it). Everything else is "within
noise".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import Series
from ..host import checks
from .data import FLAG_TEXT, Group

# B/A within 1 ± NOISE is no change where a side has one repetition, so no spread of its own.
NOISE = 0.15
# The checks' flags that make a point's numbers no evidence of a change (a saturated client is expected).
DISTURBED = (checks.OTHER_LOAD, checks.CPU_THROTTLED, checks.CPU_FREQUENCY_CHANGED)


@dataclass(frozen=True)
class Verdict:
    change: bool
    rule: str  # why, in words: "ranges apart", "within both runs' ranges", "beyond ±15%", ...
    disturbed: bool = False  # no change because a run's measurement was disturbed, whatever the numbers


@dataclass
class ComparedPoint:
    group_a: Group
    group_b: Group

    @property
    def key(self) -> tuple[str, str, Series, int]:
        g = self.group_a
        return (g.sweep, g.variant, g.series, g.x)

    def ratio(self, metric_key: str) -> float | None:
        a, b = self.group_a.median(metric_key), self.group_b.median(metric_key)
        return b / a if a and b is not None else None

    def verdict(self, metric_key: str, noise: float = NOISE) -> Verdict | None:
        """Whether B differs from A beyond the noise, by the rule the module docstring states."""
        a, b = self.group_a.values(metric_key), self.group_b.values(metric_key)
        ratio = self.ratio(metric_key)
        if not a or not b or ratio is None:
            return None
        disturbed = sorted({FLAG_TEXT[f] for g in (self.group_a, self.group_b) for f in DISTURBED if g.flagged(f)})
        if disturbed:
            return Verdict(False, "disturbed: " + ", ".join(disturbed), disturbed=True)
        if len(a) >= 2 and len(b) >= 2:
            apart = max(a) < min(b) or max(b) < min(a)
            return Verdict(apart, f"the {len(a)} and {len(b)} repetitions' ranges "
                                  + ("do not overlap" if apart else "overlap"))
        beyond = abs(ratio - 1) > noise
        return Verdict(beyond, f"one repetition: B/A {'beyond' if beyond else 'within'} ±{noise:.0%}")


def rule_text(noise: float) -> str:
    return (f"a change is B's and A's repetitions' ranges apart, or with one repetition B/A beyond "
            f"±{noise:.0%}")
