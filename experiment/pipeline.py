"""The whole pipeline behind `invoke reproduce`: the plan from the flags, the run (run/), then its report
(report/). The one place that knows all three stages; each stage knows only those before it."""

from __future__ import annotations

import time
from pathlib import Path

from .errors import UserError
from .host import images
from .model import Plan, RunRecord
from .report import render
from .run import doctor, dryrun, plan, runlog
from .run import reproduce as running
from .run.results import RESULTS, Run
from .run.services import LOOPBACK
from .run.steps import Options


def reproduce(profile: str = "quick", sweeps: str | None = None, variants: str | None = None,
              backends: str | None = None, dead: str | None = None, pipes: str | None = None,
              repeat: str | int | None = None, duration: str | float | None = None, resume: str | None = None,
              tune_host: bool = False, base_image: str | None = None, no_report: bool = False,
              results_dir: str | None = None, image: str | None = None, from_archive: str | None = None,
              published: str | None = None, server: str | None = None, server_image: str | None = None,
              server_cmd: str | None = None, server_port: str | int | None = None, server_engine: str | None = None,
              client_engine: str | None = None, server_address: str | None = None, load: str | None = None,
              dry_run: bool = False, no_anatomy: bool = False, walks: str | None = None,
              rate: str | None = None, connections: str | int | None = None, kernels: str | None = None,
              accel: str | None = None, kernel_modules: str | None = None) -> Run | None:
    """`invoke reproduce`'s flags as given (strings from the command line): builds the images, runs every
    sweep in containers, and renders the report. Bad flags are UserErrors. What it prints goes to the run's
    logs/harness.log too (run/runlog.py). With dry_run, says what the run would do and returns None."""
    with runlog.capture():
        the_plan = plan.make_plan(profile, sweeps=sweeps, variants=variants, backends=backends, dead=dead,
                                  pipes=pipes, repeat=_number(repeat, int, "--repeat"),
                                  duration=_number(duration, float, "--duration"), server=server,
                                  server_image=server_image, server_cmd=server_cmd, server_port=server_port,
                                  load=load, anatomy=not no_anatomy, walks=walks, rate=rate,
                                  connections=connections, kernels=kernels, accel=accel,
                                  kernel_modules=kernel_modules)
        if base_image and (image or from_archive):
            raise UserError("--base-image builds the images; --image and --from-archive use published ones: "
                            "give one or the other")
        options = Options(base_image=base_image or images.DEFAULT_BASE_IMAGE, tune_host=tune_host,
                                  resume=resume, render_report=not no_report,
                                  results_dir=Path(results_dir) if results_dir else RESULTS,
                                  image_ref=image, archive=from_archive, published_json=published,
                                  server_engine_url=server_engine, client_engine_url=client_engine,
                                  server_address=server_address or LOOPBACK)
        recorded = Run.open(resume, options.results_dir).record() if resume else None
        if dry_run:
            dryrun.describe(recorded.plan if recorded else the_plan, options.results_dir)
            return None
        _gate(the_plan, recorded, options)
        run = running.reproduce(the_plan, options)
        print(f"results: {run.path}")
        if options.render_report:
            _render_report(run)
        return run


def _render_report(run: Run) -> None:
    """The run's report, and the seconds it took in run.json's timings."""
    started = time.monotonic()
    print(f"report: {render.render(run)}")
    run.update_record(timings={**run.record().timings, "report_s": round(time.monotonic() - started, 1)})


def _gate(the_plan: Plan, recorded: RunRecord | None, options: Options) -> None:
    """The same checks as `invoke doctor` first, for the run as it will run (a resumed one's plan, engines and
    --tune-host as it recorded them): a failure stops here, before anything is built."""
    where = (recorded.engines if recorded else None) or {"server": options.server_engine_url,
                                                         "client": options.client_engine_url}
    tune_host = running.tunes_host(recorded, options.tune_host)[0] if recorded else options.tune_host
    doctor.gate(recorded.plan if recorded else the_plan, options.results_dir, where["server"], where["client"],
                tune_host, options.base_image)


def _number(value, kind, flag: str):
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{flag} {value!r}: give a number") from None
