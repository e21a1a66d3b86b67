"""Item 3: deadconn's opening rate (connections/s) up to the most the host allows (two server processes),
with loopback tracked by conntrack and, where this process may change that, untracked (--tune-host's
rule). stats.ROUNDS rounds, medians."""

from __future__ import annotations

from ...host import tuning
from ...run.plan import max_dead
from .. import launch, native, stats
from ..registry import Context


def run(context: Context) -> dict:
    return deadconn_rate(context.fd_limit)


def open_dead(fd_limit: int) -> dict:
    """Two ephttpd workers hold twice what one process can; deadconn opens that many, unpinned."""
    workers = 2
    count = workers * max_dead(fd_limit, "epoll", launch.ACTIVE)
    server = native.Ephttpd(backend="epoll", extra_args=["--workers", str(workers)])
    with server, launch.dead_connections(None, server.port, count) as ready:
        return {"connections": ready["held"], "seconds": ready["seconds"], "rate_per_s": ready["rate_per_s"],
                "workers": ready["workers"], "server_workers": workers,
                "conntrack_drops": ready.get("conntrack_drops")}


def deadconn_rate(fd_limit: int, rounds: int = stats.ROUNDS) -> dict:
    """deadconn's opening rate, round after round; where this process may exempt loopback from connection
    tracking (root, iptables or nft: what --tune-host does), each round measures it both ways."""
    state, finding = launch.untracking()
    rows = []
    for n in range(1, rounds + 1):
        rows.append({**open_dead(fd_limit), "round": n, "loopback_tracked": state["tracked"]})
        if finding is not None:
            with tuning.tune([finding]):
                rows.append({**open_dead(fd_limit), "round": n, "loopback_tracked": False})
    by_tracking = {}
    for tracked in dict.fromkeys(r["loopback_tracked"] for r in rows):
        rates = [r["rate_per_s"] for r in rows if r["loopback_tracked"] == tracked]
        by_tracking["tracked" if tracked else "untracked" if tracked is False else "unknown"] = stats.median(rates)
    return {"rows": rows, "median_rate_per_s": by_tracking}
