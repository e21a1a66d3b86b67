"""The pipetest sweep: per variant x backend x token walk x pipe count, about two seconds of token passing in
the server's cpuset; passes per second and the pipes' visits from pipetest's own JSON. The walks (the plan's,
catalog.WALKS): stay, every token on its own pipe; stride, the 2002 pipetest's walk through all the pipes."""

from __future__ import annotations

from .. import catalog, model
from ..catalog import Series
from ..host import checks
from . import services
from .context import Context, base_point, finish, last_json
from .plan import pipe_levels

PIPETEST_SECONDS = 2


PIPETEST_GENERATIONS = 100_000_000


def pipetest_series(ctx: Context, variant: str, backend: str, repetition: int) -> None:
    for walk in ctx.plan.walks:
        _walk_series(ctx, variant, Series(catalog.EPHTTPD, backend, walk), repetition)


def _walk_series(ctx: Context, variant: str, line: Series, repetition: int) -> None:
    cs = ctx.cpusets[variant]
    backend = line.backend
    for level in pipe_levels(ctx.plan, ctx.fd_limit, backend):
        point = base_point(ctx, model.PIPETEST, variant, line, repetition, level)
        if ctx.run.has_point(point.id):
            continue
        if level.skip_reason:
            finish(ctx, point, model.SKIPPED, level.skip_reason)
            continue
        ctx.progress.describe(f"pipetest {variant} {line.label} r{repetition}: {level.value} pipes")
        service = services.pipetest(backend, level.value, PIPETEST_GENERATIONS, PIPETEST_SECONDS,
                                    cs["server"], walk=line.walk)
        hygiene = checks.PointChecks.take()
        managed, output, code = ctx.servers.run_to_end(ctx.server_image, service,
                                                       timeout=PIPETEST_SECONDS * 10 + 60)
        raw = ctx.run.raw_path(f"{point.id}.json")
        raw.write_text(output)
        section = {"cpuset": cs["server"], "command": managed.command, "exit_code": code,
                   "raw": str(raw.relative_to(ctx.run.path))}
        point.programs["pipetest"] = section
        point.set_checks(hygiene.finish())
        result = last_json(output)
        if code != 0 or result is None:
            finish(ctx, point, model.FAILED, f"pipetest exited {code}: {output.strip()[-300:] or 'no output'}")
            continue
        section["result"] = result
        point.figures = model.PipeFigures(passes_per_s=result["passes_per_s"], elapsed_s=result["elapsed_s"],
                                          events_per_wait=result.get("events_per_wait"),
                                          pipes_visited=result.get("pipes_visited"),
                                          visits_min=result.get("visits_min"), visits_max=result.get("visits_max"))
        finish(ctx, point)
