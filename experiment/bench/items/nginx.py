"""Item 1: server CPU microseconds per reply of ephttpd (epoll) and Debian's nginx (epoll), same CPU, same
body, same load (wrk, then httperf), at 0 dead connections and at the most one server process can hold.
The httperf load is sized as a sweep sizes it (a probe opening its connections fast) and its reply rate
is, as a sweep's, httperf's mean of its 5 s samples, which leaves out the 2002 connection ramp; reply
rates measured with httperf, which is single-threaded and busy-polls, say more about httperf than about a
server on a 2-CPU host. stats.ROUNDS rounds; the ratio reported is the median of the rounds' ratios."""

from __future__ import annotations

from ...run.plan import max_dead
from .. import launch, stats
from ..launch import Cpus
from ..registry import Context

LOADS = ("wrk", "httperf")
SERVERS = ("ephttpd", "nginx")


def run(context: Context) -> dict:
    return versus_nginx(context.cpus, max_dead(context.fd_limit, "epoll", launch.ACTIVE))


def versus_nginx(cpus: Cpus, most: int, rounds: int = stats.ROUNDS) -> dict:
    """Each round runs ephttpd then nginx at each load and level, so that the ratio of one round compares
    runs taken minutes apart at most; the ratio reported is the median of the rounds'."""
    rows = [{**launch.point(cpus, server, "epoll", dead, load), "round": n}
            for n in range(1, rounds + 1) for load in LOADS for dead in (0, most) for server in SERVERS]
    ratios = {f"{load}@{dead}": stats.median(_ratios(rows, load, dead, rounds)) for load in LOADS for dead in (0, most)}
    return {"rows": rows, "summary": stats.cpu_summary(rows, ("load", "dead", "server")), "ephttpd_over_nginx": ratios}


def _ratios(rows: list[dict], load: str, dead: int, rounds: int) -> list[float]:
    """ephttpd's CPU per reply over nginx's, each round's own, where both counted replies."""
    per_round = []
    for n in range(1, rounds + 1):
        ours, theirs = (next(r for r in rows if (r["server"], r["load"], r["dead"], r["round"]) == (s, load, dead, n))
                        for s in SERVERS)
        if ours["cpu_us_per_reply"] and theirs["cpu_us_per_reply"]:
            per_round.append(ours["cpu_us_per_reply"] / theirs["cpu_us_per_reply"])
    return per_round
