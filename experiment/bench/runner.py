"""`./run bench`: installs and builds what the items run natively, runs the items chosen (registry.ITEMS),
prints them, and writes the results under benchmarks/results/."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from .. import model, paths
from ..errors import UserError
from ..host import machine, tuning
from . import launch, native, registry

# What the items run natively, installed first as root on Debian: the native build, nginx, the loads, and
# iptables for measuring deadconn with loopback untracked.
NATIVE_PACKAGES = ["gcc", "make", "libc6-dev", "liburing-dev", "nginx-light", "httperf", "wrk", "iptables"]
RESULTS = paths.ROOT / "benchmarks" / "results"


WIDE = 160


def main(json_out: str | None = None, skip_harness: bool = False, only: str | None = None) -> dict:
    """Every item, or the one named by only; returns the results written."""
    items = registry.select(only)
    machine.ensure_packages(NATIVE_PACKAGES, "./run bench")
    native.build()
    cpus, fd_limit = launch.Cpus(), machine.fd_hard_limit()
    result = header(cpus, fd_limit)
    context = registry.Context(cpus, fd_limit, RESULTS, skip_harness, sections=result)
    measure(items, context, result)
    # The tables are wide (up to a dozen columns): a terminal's width, and never fewer than WIDE columns (a file
    # or a pipe has 80, which cut every cell to an ellipsis).
    console = Console(width=max(Console().width, WIDE))
    for item in items:
        item.show(console, result[item.key])
    write(result, Path(json_out) if json_out else None)
    return result


def header(cpus: launch.Cpus, fd_limit: int) -> dict:
    """The host and the settings the items ran under."""
    return {"schema_version": 1, "benchmark": "bench", "date": model.utc_now(), "kernel": os.uname().release,
            "cpu_model": machine.cpu_model(), "cpus": machine.cpu_count(), "fd_limit": fd_limit,
            "server_cpus": sorted(cpus.server), "client_cpus": sorted(cpus.clients),
            "load_seconds": launch.LOAD_SECONDS, "targets": registry.TARGETS,
            "load_at_start": list(os.getloadavg())}


def measure(items: list[registry.Item], context: registry.Context, result: dict) -> None:
    """Each item's section into result, in the items' order. The loads open and close a great many loopback
    connections; tracked, their entries would fill the conntrack table for the deadconn rounds after them
    (a full table drops SYNs): the items that ask for it run with loopback untracked, as a sweep with
    --tune-host, where this process may untrack it."""
    _state, finding = launch.untracking()
    result["loads_loopback_untracked"] = finding is not None
    with tuning.tune([finding] if finding else []):
        for item in items:
            if item.untracked:
                result[item.key] = item.run(context)
    for item in items:
        if not item.untracked:
            result[item.key] = item.run(context)


def write(result: dict, path: Path | None) -> Path:
    """The results as JSON at path, by default benchmarks/results/bench-<UTC stamp>.json; never over another."""
    stamp = model.utc_now().replace("-", "").replace(":", "")
    path = path or RESULTS / f"bench-{stamp}.json"
    try:
        model.write_json_atomic(path, result)
    except FileExistsError:
        raise UserError(f"{path} exists: results are never overwritten; choose another --json-out") from None
    print(f"results: {path}")
    return path
