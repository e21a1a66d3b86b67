"""Item 11's figures from its rows: per configuration the medians [95% interval] of the tail with and without
the third parties' stretches; per backend the growth from 0 to the most dead connections, each round's own
ratio, with and without them; and the capture's own effect, each round's ratio with / without perf. A ratio
compares runs of one round, seconds apart, so that the host's drift between rounds falls out of it."""

from __future__ import annotations

from .. import stats

# The fewest rounds whose extreme values make a 95% interval of the median (1 - 2/2**6 = 0.97; with five 0.94):
# a verdict on fewer is not given.
VERDICT_ROUNDS = 6

KEYS = ("backend", "dead", "capture")
METRICS = {"openload_p99_ms": stats.measured, "openload_p99.9_ms": stats.measured, "raw_p99_ms": stats.measured,
           "kept_p99_ms": stats.measured, "raw_p99.9_ms": stats.measured, "kept_p99.9_ms": stats.measured,
           "excluded_share": stats.measured, "third_party_share": stats.measured, "cpu_us_per_reply": stats.positive}
# What the growth from 0 to the most dead is read on, with and without the third parties' stretches.
GROWTH = {"raw_p99": "raw_p99_ms", "kept_p99": "kept_p99_ms", "raw_p99.9": "raw_p99.9_ms",
          "kept_p99.9": "kept_p99.9_ms"}
# What the capture's own effect is read on: the open loop's own tail and the server's CPU per reply.
COST = {"p99": "openload_p99_ms", "p99.9": "openload_p99.9_ms", "cpu_per_reply": "cpu_us_per_reply"}
SURVIVES, GONE, NO_GROWTH = ("survives the exclusion", "does not survive the exclusion",
                             "no growth beyond the noise to begin with")
FEW = f"not judged: fewer than {VERDICT_ROUNDS} rounds with both"
BEYOND, WITHIN = "beyond the noise", "within the noise"


def figures(rows: list[dict], backends: tuple[str, ...], most: dict[str, int]) -> dict:
    return {"summary": summary(rows), "growth": {b: growth(rows, b, most[b]) for b in backends},
            "capture_cost": capture_cost(rows, backends[0], most[backends[0]])}


def summary(rows: list[dict]) -> list[dict]:
    """One line per backend, dead level and capture: the median [95% interval] of each of METRICS, in how
    many rounds the server's CPUs were flagged interfered, and the longest third-party stretch of any round."""
    lines = stats.summarize(rows, KEYS, METRICS)
    for line in lines:
        same = [r for r in rows if all(r[k] == line[k] for k in KEYS)]
        line["interfered_rounds"] = sum(1 for r in same if r.get("interfered"))
        line["longest_third_party"] = max((s for r in same for s in r.get("longest_third_party") or []),
                                          key=lambda s: s["ms"], default=None)
    return lines


def per_round(rows: list[dict], metric: str, **match) -> dict[int, float]:
    """The metric's value in each round among the rows that match (one per round), where it was measured."""
    return {r["round"]: r[metric] for r in rows if all(r[k] == v for k, v in match.items()) and r.get(metric)}


def round_ratios(rows: list[dict], metric: str, over: dict, under: dict) -> dict:
    """The median [95% interval] of each round's metric in the rows matching over / in those matching under,
    as stats.interval_record (with n, the rounds that had both; a round without both is left out)."""
    tops, bottoms = per_round(rows, metric, **over), per_round(rows, metric, **under)
    return stats.interval_record([tops[n] / bottoms[n] for n in sorted(tops) if n in bottoms])


def growth(rows: list[dict], backend: str, most: int) -> dict:
    """The backend's tail at the most dead over its tail at 0 (both captured), with and without the third
    parties' stretches, and whether the growth survives their exclusion (growth_verdict)."""
    ratios = {name: round_ratios(rows, metric, {"backend": backend, "dead": most, "capture": True},
                                 {"backend": backend, "dead": 0, "capture": True})
              for name, metric in GROWTH.items()}
    return {"dead": most, **ratios, "verdict": growth_verdict(ratios["raw_p99"], ratios["kept_p99"]),
            "verdict_p99.9": growth_verdict(ratios["raw_p99.9"], ratios["kept_p99.9"])}


def growth_verdict(raw: dict, kept: dict) -> str:
    """SURVIVES when the whole interval of the kept ratio is above 1; GONE when it reaches 1 though the raw
    one did not; NO_GROWTH when even the raw interval reaches 1; FEW with fewer than VERDICT_ROUNDS ratios."""
    if min(raw["n"], kept["n"]) < VERDICT_ROUNDS:
        return FEW
    if raw["low"] <= 1:
        return NO_GROWTH
    return SURVIVES if kept["low"] > 1 else GONE


def capture_cost(rows: list[dict], backend: str, dead: int) -> dict:
    """The paired runs' ratios with the capture / without perf, per COST metric, each with noise_verdict."""
    ratios = {name: round_ratios(rows, metric, {"backend": backend, "dead": dead, "capture": True},
                                 {"backend": backend, "dead": dead, "capture": False})
              for name, metric in COST.items()}
    return {"backend": backend, "dead": dead, "ratios": ratios,
            "verdicts": {name: noise_verdict(ratio) for name, ratio in ratios.items()}}


def noise_verdict(ratio: dict) -> str:
    """BEYOND when the interval excludes 1, WITHIN when it holds it; FEW with fewer than VERDICT_ROUNDS ratios."""
    if ratio["n"] < VERDICT_ROUNDS:
        return FEW
    return BEYOND if ratio["low"] > 1 or ratio["high"] < 1 else WITHIN
