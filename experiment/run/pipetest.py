"""The pipetest sweep: per variant x backend x token walk x pipe count, about two seconds of token passing in
the server's cpuset; passes per second and the pipes' visits from pipetest's own JSON. The walks (the plan's,
catalog.WALKS): stay, every token on its own pipe; stride, the 2002 pipetest's walk through all the pipes."""

from __future__ import annotations

from .. import model
from ..catalog import Series
from ..host import checks
from . import neighbours, services
from .context import Context, base_point, finish
from .jsonlines import last_json
from .plan import Line

PIPETEST_SECONDS = 2


PIPETEST_GENERATIONS = 100_000_000


def pipetest_series(ctx: Context, line: Line) -> None:
    """One line of the pipetest sweep, a backend with its token walk: each pipe count not yet recorded,
    measured, or recorded as skipped with the reason."""
    server_cpus = ctx.cpusets[line.variant]["server"]
    for level in line.levels:
        point = base_point(ctx, line, level)
        if ctx.run.has_point(point.id):
            continue
        if level.skip_reason:
            finish(ctx, point, model.SKIPPED, level.skip_reason)
            continue
        ctx.progress.describe(f"{line.name}: {level.value} pipes")
        _measure_point(ctx, point, line.series, server_cpus)


def _measure_point(ctx: Context, point: model.Point, series: Series, server_cpus: str) -> None:
    """One point: pipetest run to its end on the server's CPUs, its output kept raw and its JSON the figures."""
    service = services.pipetest(series.backend, point.x, PIPETEST_GENERATIONS, PIPETEST_SECONDS, server_cpus,
                                walk=series.walk)
    watching = neighbours.begin(ctx.watch, ctx.cpusets[point.variant]) if ctx.watch else None
    hygiene = checks.PointChecks.take()
    if isinstance(watching, neighbours.Watching):
        watching.open()
    managed, output, code = ctx.servers.run_to_end(ctx.server_image, service, timeout=PIPETEST_SECONDS * 10 + 60)
    if isinstance(watching, neighbours.Watching):
        watching.close()
    point.interference = neighbours.judged(watching, lambda: {*ctx.servers.ids(), *ctx.clients.ids()})
    raw = ctx.run.raw_path(f"{point.id}.json")
    raw.write_text(output)
    section: dict = {"cpuset": server_cpus, "command": managed.command, "exit_code": code,
                     "raw": str(raw.relative_to(ctx.run.path))}
    point.programs["pipetest"] = section
    point.set_checks(hygiene.finish())
    point.flags[checks.INTERFERED] = neighbours.flag(point.interference)
    result = last_json(output)
    if code != 0 or result is None:
        finish(ctx, point, model.FAILED, f"pipetest exited {code}: {output.strip()[-300:] or 'no output'}")
        return
    section["result"] = result
    point.figures = model.PipeFigures(passes_per_s=result["passes_per_s"], elapsed_s=result["elapsed_s"],
                                      events_per_wait=result.get("events_per_wait"),
                                      pipes_visited=result.get("pipes_visited"),
                                      visits_min=result.get("visits_min"), visits_max=result.get("visits_max"))
    finish(ctx, point)
