"""What the bench prints: one function per item, named as registry.ITEMS names it, given the console and the
item's section of the results; and the one way a median [95% interval] is written."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from . import stats
from .items import completion as completion_item
from .items import generators as generators_item
from .registry import TARGETS
from .stats import ROUNDS


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _num(value, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def interval(value: tuple | dict | None, fmt: str = ".2f") -> str:
    """A median [95% interval]: stats.median_interval's tuple or item 8's record (stats.interval_record)."""
    if isinstance(value, dict):
        value = None if value.get("median") is None else (value["median"], value["low"], value["high"])
    return "-" if value is None else f"{value[0]:{fmt}} [{_num(value[1], fmt)}, {_num(value[2], fmt)}]"


def nginx(console: Console, vs: dict) -> None:
    console.print(_table(f"1. server CPU per reply: ephttpd vs nginx (epoll, one CPU; medians of {ROUNDS} rounds)",
                         ["load", "dead", "server", "replies/s", "server busy %", "CPU µs/reply"],
                         [[x["load"], _num(x["dead"]), x["server"], _num(x["rate"]), _num(x["server_busy_pct"]),
                           _num(x["cpu_us_per_reply"], ".2f")] for x in vs["summary"]]))
    for key, ratio in vs["ephttpd_over_nginx"].items():
        console.print(f"  ephttpd / nginx CPU per reply, {key} dead: {_num(ratio, '.2f')} "
                      f"(target <= {TARGETS['ephttpd_vs_nginx_cpu_ratio']})")


def capacity(console: Console, cap: dict) -> None:
    console.print(_table(f"2. ephttpd capacity on one CPU (wrk; medians of {ROUNDS} rounds)",
                         ["backend", "dead", "replies/s", "server busy %", "CPU µs/reply", "replies/CPU-s"],
                         [[x["backend"], _num(x["dead"]), _num(x["rate"]), _num(x["server_busy_pct"]),
                           _num(x["cpu_us_per_reply"], ".2f"), _num(x["replies_per_cpu_s"])] for x in cap["summary"]]))
    for backend, kept in cap["capacity_kept"].items():
        console.print(f"  {backend}: at the most dead connections, {kept:.1%} of its 0-dead replies per CPU-second "
                      f"({cap['rate_kept'][backend]:.1%} of its replies/s)")
    console.print(f"  poll: {_num(cap['poll_ns_per_dead_per_reply'], '.1f')} ns per extra dead connection per reply")


def deadconn(console: Console, d: dict) -> None:
    rates = ", ".join(f"{k} loopback {_num(v)}/s" for k, v in d["median_rate_per_s"].items())
    console.print(f"3. deadconn: {d['rows'][0]['connections']:,} connections, medians: {rates} "
                  f"(target >= {TARGETS['deadconn_per_s']:,}/s)")


def harness(console: Console, h: dict | None) -> None:
    if not h:
        return
    t = h["timings"]
    console.print(f"4. harness: quick profile {h['wall_s']:.0f} s wall: images {_num(t.get('images_s'), '.0f')} s, "
                  f"setup {_num(t.get('setup_s'), '.0f')} s, measuring {_num(t.get('measuring_s'), '.0f')} s, "
                  f"report {_num(t.get('report_s'), '.0f')} s; measuring share {_num(h['measuring_share'], '.0%')} "
                  f"(targets <= {TARGETS['quick_profile_s']} s, >= {TARGETS['quick_measuring_share']:.0%})")


def pipetest(console: Console, p: dict) -> None:
    console.print(_table("5. pipetest (token passes/s)", ["backend", "pipes", "passes/s"],
                         [[x["backend"], _num(x["pipes"]), _num(x.get("passes_per_s"))] for x in p["rows"]]))


def generators(console: Console, g: dict) -> None:
    s = g["summary"]
    console.print(f"6. load generators on one CPU (ephttpd epoll, medians [95% interval] of {generators_item.ROUNDS} "
                  f"rounds): wrk {interval(s['wrk']['rate_interval'], ',.0f')}/s at "
                  f"{interval(s['wrk']['cpu_us_per_request_interval'])} µs/request, httperf "
                  f"{interval(s['httperf']['rate_interval'], ',.0f')}/s at "
                  f"{interval(s['httperf']['cpu_us_per_request_interval'])} µs/request")
    console.print(_table("   openload per variant (timer slack, batch window; µs)",
                         ["variant", "offered/s", "achieved/s", "CPU µs/request",
                          f"CPU / {generators_item.BASELINE.name}'s", "late share", "mean lag µs", "waits/reply",
                          "p99 ms", "lagged (p99)", "overloaded"],
                         [[x["variant"], _num(x["offered"]), interval(x["rate"], ",.0f"),
                           interval(x["cpu_us_per_request"]), interval(x["cpu_vs_baseline"], ".3f"),
                           interval(x["late_share"], ".4f"),
                           interval(x["mean_lag_us"], ".1f"), interval(x["waits_per_reply"]),
                           interval(x["p99_ms"], ".3f"),
                           f"{x['lagged_rounds']}/{x['rounds']}", f"{x['overloaded_rounds']}/{x['rounds']}"]
                          for x in s["openload_variants"]]))
    goal = s["goal"]
    console.print(f"   openload's defaults ({goal['variant']}) at {goal['rate']:,}/s (target >= "
                  f"{TARGETS['openload_per_s']:,}/s, not lagged for p99): {goal['verdict']}, achieved share "
                  f"{interval(goal['achieved_share'], '.4f')}; met only where the whole interval is and no round "
                  "was lagged or overloaded")


def completion(console: Console, c: dict) -> None:
    console.print(_table(f"7. completion vs readiness under wrk (medians [95% interval] of "
                         f"{completion_item.ROUNDS} rounds)",
                         ["series", "dead", "CPU µs/reply", "syscalls/reply", "replies/s"],
                         [[x["series"], _num(x["dead"]), interval(x["cpu_us_per_reply"]),
                           interval(x["syscalls_per_reply"], ".3f"), interval(x["rate"], ",.0f")]
                          for x in c["summary"]]))
    for key, value in c["ratios"].items():
        console.print(f"  {key}: {interval(value, '.3f')}")
    goals = c["goals"]
    console.print(f"  goals: io_uring-recv/epoll at 0 dead <= {goals['cpu_vs_epoll_at_zero']}, most/zero <= "
                  f"{goals['most_over_zero']}, syscalls/reply <= {goals['syscalls_per_reply']}: met only where "
                  "the whole interval is")


def anatomy(console: Console, a: dict) -> None:
    p = a["perturbation"]
    if "unavailable" in p:
        console.print(f"8. anatomy perturbation: unavailable ({p['unavailable']})")
    else:
        ratios = p["cpu_per_reply_ratio"]
        console.print(f"8. anatomy, {p['server']} {p['backend']} at {p['dead']:,} dead, {len(p['rows'])} rounds: "
                      f"CPU per reply {interval(p['plain_us_per_reply'], '.2f')} µs plain; while perf profiles "
                      f"x{interval(ratios['profile'], '.3f')}, while it counts syscalls "
                      f"x{interval(ratios['counting'], '.3f')} (filtered by number; on each one's tracepoint "
                      f"x{interval(ratios.get('counting_tracepoints'), '.3f')}) (median [95% interval])")
        waits = p.get("waits_per_reply_ratio")
        if waits:
            console.print(f"   poll calls per reply {interval(p['plain_waits_per_reply'], '.4f')} plain; while it "
                          f"counts x{interval(waits['counting'], '.3f')} (filtered), "
                          f"x{interval(waits['counting_tracepoints'], '.3f')} (tracepoints)")
    w = a["wall_time"]
    share = w.get("quick_added_share_extrapolated")
    added = w["added_s_per_dead_point"]
    console.print(f"   anatomy wall time: +{interval(added)} s per dead point (median [95% interval] of "
                  f"{added['n']} rounds of a small sweep with and without; target <= {w['target_s_per_point']} s), "
                  f"each window {interval(w['window_wall_s'])} s; extrapolated to the quick profile's "
                  f"{w['quick_dead_points']} dead points: +{w['quick_added_s_extrapolated']:.0f} s on "
                  f"{_num(w['quick_wall_s'])} s ({w['quick_wall_source']}) = {_num(share, '.0%')} "
                  f"(target <= {w['target_share']:.0%})")


def seccomp(console: Console, c: dict) -> None:
    console.print(_table(f"9. the container and its seccomp filter under wrk at 0 dead (medians [95% interval] of "
                         f"{c['rounds']} rounds)", ["backend", "place", "CPU µs/reply", "syscalls/reply", "replies/s"],
                         [[x["backend"], x["place"], interval(x["cpu_us_per_reply"]),
                           interval(x["syscalls_per_reply"], ".3f"), interval(x["rate"], ",.0f")]
                          for x in c["summary"]]))
    for place, how in c["places"].items():
        if "unavailable" in how:
            console.print(f"  {place}: unavailable ({how['unavailable']})")
    for backend, ratios in c["ratios"].items():
        console.print(f"  {backend}: " + ", ".join(f"{key} {interval(value, '.3f' if '/' in key else '.0f')}"
                                                   for key, value in ratios.items()))
    _syscall_probe(console, c["syscall_probe"])


def _syscall_probe(console: Console, probe: dict) -> None:
    console.print(f"  the filter per system call (getppid in the server image, filtered - unconfined): "
                  f"{interval(probe['filter_ns_per_call'], '.1f')} ns (filtered "
                  f"{interval(probe['filtered_ns_per_call'], '.1f')}, unconfined "
                  f"{interval(probe['unconfined_ns_per_call'], '.1f')})")
    for backend, predicted in probe["predicted"].items():
        if predicted:
            console.print(f"  {backend}: predicted filter cost {predicted['ns_per_reply']:.0f} ns per reply "
                          f"({_num(predicted['share_of_native_reply'], '.1%')} of its native CPU per reply)")


def walk(console: Console, w: dict) -> None:
    if "unavailable" in w:
        console.print(f"10. pipetest's walks: unavailable ({w['unavailable']})")
        return
    for backend, found in w["backends"].items():
        for name, summary in found["walks"].items():
            if "error" in summary:
                console.print(f"10. pipetest {backend} ({name}): {summary['error']}")
                continue
            per_pass = ", ".join(f"{_num(int(p))} pipes {ns:,.0f} ns" for p, ns in summary["ns_per_pass"].items())
            console.print(f"10. pipetest {backend} ({name}) per pass: {per_pass}; grew {summary['grew_ns']:,.0f} ns "
                          f"(kernel {summary['kernel_grew_ns']:,.0f}, user {summary['user_grew_ns']:,.0f}); most: "
                          + ", ".join(f"{f['function']} +{f['grew_ns']:,.0f}" for f in summary["functions"][:5]))


def _held(stretch: dict | None) -> str:
    """A third party's stretch: its task and ms; "≤" where perf did not see it end (an upper bound)."""
    if stretch is None:
        return "-"
    return f"{stretch['comm']} {'' if stretch['end_seen'] else '≤'}{stretch['ms']:.1f} ms"


def tail(console: Console, t: dict) -> None:
    if "unavailable" in t:
        console.print(f"11. whose tail: unavailable ({t['unavailable']})")
        return
    rates = ", ".join(f"{b} {r['rate']:,.0f}/s" for b, r in t["rates"].items())
    console.print(_table(f"11. whose tail: openload at {t['rate_share']:g} x each backend's 0-dead capacity ({rates}), "
                         f"{t['load_s']:g} s; ms, median [95% interval] of {t['rounds']} rounds; kept: without the "
                         "requests due in a third party's stretch over 1 ms on the server's CPU or 10 ms after it",
                         ["backend", "dead", "perf", "openload p99 / p99.9", "p99 raw", "p99 kept", "p99.9 raw",
                          "p99.9 kept", "excluded", "third parties", "interfered", "longest third party"],
                         [[x["backend"], _num(x["dead"]), "on" if x["capture"] else "off",
                           f"{_num(stats.middle(x['openload_p99_ms']), '.2f')} / "
                           f"{_num(stats.middle(x['openload_p99.9_ms']), '.2f')}",
                           interval(x["raw_p99_ms"]), interval(x["kept_p99_ms"]), interval(x["raw_p99.9_ms"]),
                           interval(x["kept_p99.9_ms"]), _num(stats.middle(x["excluded_share"]), ".1%"),
                           _num(stats.middle(x["third_party_share"]), ".1%"),
                           f"{x['interfered_rounds']}/{x['rounds']}" if x["capture"] else "-",
                           _held(x["longest_third_party"])] for x in t["summary"]]))
    for backend, g in t["growth"].items():
        console.print(f"  {backend}: p99 at {g['dead']:,} / 0 dead x{interval(g['raw_p99'])} raw, "
                      f"x{interval(g['kept_p99'])} kept: {g['verdict']}; p99.9 "
                      f"x{interval(g['raw_p99.9'])} raw, x{interval(g['kept_p99.9'])} kept: {g['verdict_p99.9']}")
    cost = t["capture_cost"]
    found = ", ".join(f"{name.replace('_', ' ')} x{interval(ratio, '.3f')} ({cost['verdicts'][name]})"
                      for name, ratio in cost["ratios"].items())
    console.print(f"  the capture's own effect, {cost['backend']} at {cost['dead']:,} dead, with perf / without, "
                  f"same server, per round: {found}; the item took {t['wall_s']:.0f} s")
