"""Interference: what third parties (parties.py) took of a point's CPUs while it was measured, and the flag
that says whether it was enough to matter.

From a capture of the switches on the CPUs (switches.py), for a set of CPUs and a window: the CPU time third
parties held there, as a share of the window times the CPUs; the longest stretch one third party held one of
the CPUs, and which; and every third party by name with its total. A stretch counts inside the window only
(one that crosses an edge is clipped). Time no one can be named for is apart, as unattributed: a stretch
whose task perf did not see leave (switches.OnCpu.end_seen), a CPU that showed no switch at all. The
stretches of the first kind are also kept by the name of the task they began with (unseen_exits), with the
longest of them (longest_unseen): that task held the CPU at most that long.

The flag: *interfered* when third parties took more than THIRD_PARTY_SHARE of the CPUs' time over the window,
or held one of them longer than THIRD_PARTY_STRETCH_MS at a stretch. A stretch is what a tail sees: at 59k
requests/s, 20 ms of a neighbour on the server's CPU puts ~1,200 requests behind it while it takes well
under 2 % of a 6 s point; the share is what a throughput or a CPU-per-reply figure sees. The thresholds do
not move to spare a host whose neighbours flag most of its points: that is the finding. The flag is cleared
only when even the most the unseen stretches could add keeps both readings under their thresholds, and is
left undecided (None) when only that most would cross one.

Where perf cannot record the switches, stat_fallback.py estimates the share from /proc/stat alone; the
stretch is then unknown, and the flag is raised on the share or left undecided (None), never cleared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..model import Held, Interference
from .parties import THIRD_PARTY
from .switches import OnCpu

# The flag's thresholds, named once: over this share of the CPUs' time, or one stretch longer than this.
THIRD_PARTY_SHARE = 0.02
THIRD_PARTY_STRETCH_MS = 1.0
# The longest stretches third parties held the CPUs that a point keeps, longest first (the tail's anatomy).
HOLDS = 3
# How the readings were taken.
SCHED_SWITCH = "sched_switch"
PROC_STAT = "proc_stat"
Party = Callable[[int, str, int | None], str]  # (pid, comm, its process) -> parties.OURS, THIRD_PARTY or IDLE


def interfered(share: float, longest_ms: float | None, share_at_most: float = 0.0,
               longest_at_most_ms: float = 0.0) -> bool | None:
    """The flag: True when the share or the longest stretch is over its threshold; False when neither is, nor
    what they could be at most (the unseen stretches added); None when only that most is over, or when the
    longest stretch is unknown and the share under its threshold."""
    if share > THIRD_PARTY_SHARE or (longest_ms is not None and longest_ms > THIRD_PARTY_STRETCH_MS):
        return True
    if longest_ms is None or share_at_most > THIRD_PARTY_SHARE or longest_at_most_ms > THIRD_PARTY_STRETCH_MS:
        return None
    return False


def from_switches(stretches: Iterable[OnCpu], cpus: Iterable[int], start_ns: int, end_ns: int,
                  party: Party) -> Interference:
    """The interference on cpus over [start_ns, end_ns] (CLOCK_MONOTONIC) from a capture's stretches, each task
    judged once by party."""
    if end_ns <= start_ns:
        raise ValueError(f"an empty window: {start_ns} to {end_ns} ns")
    watched = sorted(set(cpus))
    if not watched:
        raise ValueError("no CPUs to judge")
    judged: dict[tuple[int, str], str] = {}
    held, unseen = _Tally(), _Tally()
    seen: set[int] = set()
    for stretch in stretches:
        inside = stretch.within(start_ns, end_ns)
        if stretch.cpu not in watched or not inside:
            continue
        seen.add(stretch.cpu)
        if not stretch.end_seen:
            unseen.add(stretch, inside)
            continue
        key = (stretch.pid, stretch.comm)
        if key not in judged:
            judged[key] = party(stretch.pid, stretch.comm, stretch.tgid)
        if judged[key] == THIRD_PARTY:
            held.add(stretch, inside)
    window_ns = end_ns - start_ns
    silent_ns = window_ns * len(set(watched) - seen)  # no switch at all: whoever held those CPUs is not known
    capacity_ns = window_ns * len(watched)
    longest = held.longest()
    longest_ms = longest.ms if longest else 0.0
    flag = interfered(held.ns / capacity_ns, longest_ms, (held.ns + unseen.ns + silent_ns) / capacity_ns,
                      max(longest_ms, unseen.longest_ns / 1e6, window_ns / 1e6 if silent_ns else 0.0))
    return Interference(flag, SCHED_SWITCH, watched, window_ns / 1e9, held.ns / 1e9, held.ns / capacity_ns,
                        longest, held.by_name(), (unseen.ns + silent_ns) / 1e9, unseen.by_name(), unseen.longest(),
                        holds=held.holds())


class _Tally:
    """Stretches of third parties inside a window: their time in all, by comm, and the longest HOLDS of them."""

    def __init__(self) -> None:
        self.ns = 0
        self.names: dict[str, int] = {}
        self.top: list[tuple[int, OnCpu]] = []  # (ns inside, stretch), longest first, at most HOLDS

    def add(self, stretch: OnCpu, inside_ns: int) -> None:
        self.ns += inside_ns
        self.names[stretch.comm] = self.names.get(stretch.comm, 0) + inside_ns
        if len(self.top) < HOLDS or inside_ns > self.top[-1][0]:
            self.top = sorted([*self.top, (inside_ns, stretch)], key=lambda held: -held[0])[:HOLDS]

    @property
    def longest_ns(self) -> int:
        return self.top[0][0] if self.top else 0

    def by_name(self) -> dict[str, float]:
        return {comm: ns / 1e9 for comm, ns in sorted(self.names.items(), key=lambda kv: -kv[1])}

    def holds(self) -> list[Held]:
        return [Held(stretch.comm, stretch.pid, stretch.cpu, ns / 1e6) for ns, stretch in self.top]

    def longest(self) -> Held | None:
        return next(iter(self.holds()), None)
