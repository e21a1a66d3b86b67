"""The open-loop dead sweep's one offered rate (model.DEAD_OPEN): --rate in requests/s as given, or its share of
capacity (--rate 0.5x, the default): the lowest 0-dead capacity among the sweep's lines, so that every line
of a figure is offered the same rate and none is overloaded at 0 dead connections.

Capacity is wrk's rate (closed loop, the sweep's connections, one thread, PROBE_S seconds) against a fresh
server of each line in each of the sweep's variants, with no dead connections, in containers on the same
engines and cpusets as the sweep; it runs once, before the first point of the run, and run.json records it
("open_rate") with each line's capacity, so that a resumed run offers the same rate and a reader can check
it. Not a result: a short closed-loop probe, on a host where wrk's one thread and the server share CPUs.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import catalog
from ..catalog import Series
from ..errors import UserError
from ..host import machine
from . import loads, servers, services
from .context import Context
from .dead import SERVER_START_TIMEOUT_S, _save_log

# Seconds of wrk per line: long enough for a steady rate at ~100k requests/s, short against the sweep.
PROBE_S = 2.0


def offered_rate(ctx: Context, recorded: dict | None, say: Callable[[str], None]) -> dict:
    """The sweep's rate as run.json records it: {"rate", "requested", "share", "capacity", "lowest", "probe"}.
    recorded: what an earlier attempt of this run recorded (a resumed run offers that rate again)."""
    plan = ctx.plan
    if recorded and recorded.get("rate"):
        say(f"open loop: {recorded['rate']:,.0f} requests/s, as recorded when this run started")
        return recorded
    if plan.open_rate is not None:
        return {"rate": plan.open_rate, "requested": f"{plan.open_rate:g}", "share": None, "capacity": {},
                "lowest": None, "probe": None}
    share = plan.open_rate_share
    if share is None:
        raise ValueError("a plan's open loop has a rate or a share of capacity")
    capacity: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for variant in plan.open_variants:
        for series in plan.series:
            key = f"{variant}/{series.label}"
            ctx.progress.describe(f"open loop: capacity of {key} at 0 dead ({PROBE_S:g} s of wrk)")
            capacity[key], why = _capacity(ctx, variant, series)
            if why:
                reasons[key] = why
    measured = {k: v for k, v in capacity.items() if v}
    if not measured:
        raise UserError("the open-loop sweep's capacity probe measured no line ("
                        + "; ".join(f"{k}: {v}" for k, v in reasons.items())
                        + "): give --rate in requests/s instead of a share")
    lowest = min(measured, key=lambda k: measured[k])
    rate = round(share * measured[lowest], 1)
    say(f"open loop: {rate:,.0f} requests/s = {share:g} x {measured[lowest]:,.0f}/s, the lowest capacity at "
        f"0 dead ({lowest}, by wrk over {PROBE_S:g} s)")
    return {"rate": rate, "requested": f"{share:g}x", "share": share, "capacity": capacity, "lowest": lowest,
            "probe": {"load": catalog.WRK, "duration_s": PROBE_S, "connections": plan.open_connections,
                      "dead": 0, "failed": reasons}}


def _capacity(ctx: Context, variant: str, series: Series) -> tuple[float | None, str | None]:
    """wrk's requests/s against a fresh server of this line at 0 dead connections; (None, why) when it fails."""
    cpusets = ctx.cpusets[variant]
    choice = ctx.choices[series.server]
    port = choice.port or machine.free_port()
    service = choice.service(series.backend, port, ctx.plan.msgsize, cpusets["server"], ctx.fd_limit,
                             ctx.server_address)
    if service.readiness == "tcp" and servers.tcp_connects(ctx.server_address, port):
        return None, f"something already answers on {ctx.server_address}:{port}"
    server = ctx.servers.run(service.image or ctx.server_image, service)
    try:
        if not servers.wait_ready(server, service, ctx.server_address, port, SERVER_START_TIMEOUT_S):
            return None, f"server did not start: {server.output_tail() or 'no output'}"
        probe = services.wrk(f"http://{ctx.server_address}:{port}/", ctx.plan.open_connections, PROBE_S,
                             cpusets["clients"])
        _, output, code = ctx.clients.run_to_end(ctx.client_image, probe, PROBE_S + 60)
        try:
            rate = loads.parse_wrk(output)["requests_per_s"]
        except ValueError as e:
            return None, f"wrk output unreadable (exit code {code}): {e}"
        return (rate, None) if rate > 0 else (None, "wrk counted no requests")
    finally:
        ctx.servers.stop(server)
        _save_log(ctx, server, f"open-capacity-{variant}-{series.slug}.{server.role}.log")
        ctx.servers.remove(server)
