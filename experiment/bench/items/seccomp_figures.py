"""Item 9's figures from its rows: the places in each round's order, the per-round ratios and the filter's
cost per reply and per system call, each a median [95% interval] (stats.median_interval)."""

from __future__ import annotations

from ... import catalog
from ..stats import median_interval

# The backends compared: a readiness one, with a few system calls per reply, and the completion one, with
# a fraction of one; and where ephttpd runs.
BACKENDS = ("epoll", catalog.URING_RECV)
NATIVE, FILTERED, UNCONFINED = "native", "filtered", "unconfined"
PLACES = (NATIVE, FILTERED, UNCONFINED)
RATIOS = ((FILTERED, NATIVE), (UNCONFINED, NATIVE), (FILTERED, UNCONFINED))


def place_order(n: int) -> tuple[str, ...]:
    """The places in round n's order (n from 1): rotated one step a round, so that none always runs first
    (or last) for a backend and a drift within rounds falls on each alike."""
    shift = (n - 1) % len(PLACES)
    return PLACES[shift:] + PLACES[:shift]


def seccomp_ratios(rows: list[dict], backends: tuple[str, ...] = BACKENDS) -> dict:
    """Per backend, each a median [95% interval] of the rounds' own values (a round compares runs seconds
    apart): CPU per reply filtered/native (the container as a sweep runs it), unconfined/native and
    filtered/unconfined (the filter alone); the filter's cost per reply (ns), and per system call from the
    native syscalls per reply of the same round. A ratio needing a place with no row in a round leaves that
    round out; None where no round has it."""
    return {backend: _backend_ratios({(r["place"], r["round"]): r for r in rows if r["backend"] == backend})
            for backend in backends}


def _backend_ratios(rows: dict[tuple[str, int], dict]) -> dict:
    """seccomp_ratios for one backend's rows by (place, round)."""
    def cost(place: str, n: int) -> float | None:
        return rows[place, n]["cpu_us_per_reply"] if (place, n) in rows else None

    rounds = sorted({n for _place, n in rows})
    ratio = {f"{a}/{b}": [x / y for n in rounds if (x := cost(a, n)) and (y := cost(b, n))] for a, b in RATIOS}
    filter_ns: list[float] = []
    per_call: list[float] = []
    for n in rounds:
        filtered, unconfined = cost(FILTERED, n), cost(UNCONFINED, n)
        calls = rows[NATIVE, n].get("syscalls_per_reply") if (NATIVE, n) in rows else None
        if filtered and unconfined:
            filter_ns.append((filtered - unconfined) * 1e3)
            if calls:
                per_call.append((filtered - unconfined) * 1e3 / calls)
    return {**{key: median_interval(values) for key, values in ratio.items()},
            "filter_ns_per_reply": median_interval(filter_ns), "filter_ns_per_syscall": median_interval(per_call)}


def filter_per_call(probes: list[dict], rows: list[dict], backends: tuple[str, ...] = BACKENDS) -> dict:
    """From the syscall probes: the filter's ns per call (filtered minus unconfined, each round's own), its
    median [95% interval], and per backend what that predicts per reply (the median ns per call times the
    median native syscalls per reply, and that as a share of the native CPU per reply); None without an
    unconfined probe."""
    def probe(place: str, n: int) -> float | None:
        return next((p["ns_per_call"] for p in probes if (p["place"], p["round"]) == (place, n)), None)

    rounds = sorted({p["round"] for p in probes})
    diffs = [f - u for n in rounds if (f := probe(FILTERED, n)) is not None and (u := probe(UNCONFINED, n)) is not None]
    per_call = median_interval(diffs)
    return {"filter_ns_per_call": per_call,
            "filtered_ns_per_call": _probed(probes, FILTERED), "unconfined_ns_per_call": _probed(probes, UNCONFINED),
            "predicted": {backend: _predicted(per_call, rows, backend) for backend in backends}}


def _probed(probes: list[dict], place: str) -> tuple[float, float, float] | None:
    return median_interval([p["ns_per_call"] for p in probes if p["place"] == place and p["ns_per_call"] is not None])


def _predicted(per_call: tuple[float, float, float] | None, rows: list[dict], backend: str) -> dict | None:
    """The filter's cost per reply that the ns per call predicts for backend, from its native rows."""
    native = [r for r in rows if (r["backend"], r["place"]) == (backend, NATIVE)]
    calls = median_interval([r["syscalls_per_reply"] for r in native if r.get("syscalls_per_reply") is not None])
    cost = median_interval([r["cpu_us_per_reply"] for r in native if r.get("cpu_us_per_reply")])
    if per_call is None or calls is None:
        return None
    return {"ns_per_reply": per_call[0] * calls[0],
            "share_of_native_reply": per_call[0] * calls[0] / (cost[0] * 1e3) if cost else None}
