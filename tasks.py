"""epollbench tasks: `invoke --list`; `invoke --help TASK` explains every flag.

The tasks stay thin: each calls one function of the experiment package. A UserError becomes a one-line
message and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from invoke import Exit, Task, task


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from experiment.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise Exit(f"epollbench: {e}", code=2) from None

    return wrapper


class _LetterShortflags(Task):
    """Invoke gives a flag the first character of its name that no other flag has taken, and for
    --server-image, whose letters before the dash all are, that is the dash: "--" would be its short flag."""

    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, taken_names | {"_", "-"})


# The lists in the help texts come from where the names are defined (the catalog, the model), so that a backend,
# server, load or walk added there is in --help too.
def _sweeps_help() -> str:
    from experiment.model import SWEEPS

    return (f"comma list of {','.join(SWEEPS)} (default: the profile's; dead-open: the dead sweep under the "
            "open-loop load, UP in both profiles)")


def _variants_help() -> str:
    from experiment.catalog import VARIANTS

    return f"comma list of {','.join(VARIANTS)} (default: the profile's)"


def _backends_help() -> str:
    from experiment import catalog

    others = ", ".join(f"{kind.program} {','.join(kind.backends)}" for kind in catalog.SERVERS.values()
                       if kind.name not in (catalog.DEFAULT_SERVER, catalog.CUSTOM))
    not_ev = [b for b in catalog.EPHTTPD_BACKENDS if b not in catalog.PIPETEST_BACKENDS]
    return (f"comma list of {','.join(catalog.EPHTTPD_BACKENDS)} (ephttpd's; pipetest skips {','.join(not_ev)}; "
            f"{others}): each server runs those of them it has (default: ephttpd the profile's, any other server "
            "all of its own)")


def _servers_help() -> str:
    from experiment import catalog

    kinds = [f"{kind.name} ({'default: ' if kind.name == catalog.DEFAULT_SERVER else ''}{kind.about}"
             + (f": {','.join(kind.backends)})" if kind.name != catalog.CUSTOM else ")")
             for kind in catalog.SERVERS.values()]
    return (f"the servers under test, a comma list drawn in the same figures: {', '.join(kinds)}; pipetest runs "
            f"only in a run with {catalog.DEFAULT_SERVER}")


def _loads_help() -> str:
    from experiment import catalog

    loads = [f"{load.name} ({'default: ' if load.name == catalog.HTTPERF else ''}{load.description})"
             for load in catalog.LOADS.values()]
    return ", ".join(loads[:-1]) + f" or {loads[-1]}"


def _walks_help() -> str:
    from experiment import catalog

    walks = [f"{walk} ({catalog.WALK_ABOUT[walk]})" for walk in catalog.WALKS]
    return f"pipetest's token walks, a comma list (default: all): {', '.join(walks[:-1])} and {walks[-1]}"


# The flags of a run in guests, which doctor takes too.
GUESTS_HELP = {
    "kernels": "measure every point once per kernel, each in a QEMU guest: Debian versions (6.1, 6.12, 7.2; a full "
               "Debian version pins one; -rt the PREEMPT_RT flavour), path/to/bzImage, or host; fetched once "
               "into ~/.cache/epollbench",
    "accel": "the guests' accelerator: auto (KVM where a probe guest boots, else TCG, saying why), kvm or tcg",
    "kernel_modules": "the lib/modules folder of a kernel file given to --kernels (make modules_install "
                      "INSTALL_MOD_PATH=DIR)",
}


@task(klass=_LetterShortflags, help={
    "profile": "quick (default: UP and SMP, poll and epoll, ~5 dead levels, 4 pipe sizes, <= 10 min) "
               "or paper (the 2002 steps 0..60000, every backend, 3 repetitions)",
    "sweeps": _sweeps_help(),
    "variants": _variants_help(),
    "backends": _backends_help(),
    "dead": "comma list of dead-connection levels, e.g. 0,1000,5000 (default: the profile's)",
    "pipes": "comma list of pipetest sizes, e.g. 10,100,1000 (default: the profile's)",
    "repeat": "repetitions of every series (default: the profile's)",
    "duration": "seconds of load per dead point, closed and open loop (default: the profile's: 10, open 4)",
    "resume": "continue the interrupted run RUN (a folder or an id under results/), skipping finished points",
    "tune_host": "as root, raise somaxconn etc. for the run and restore them at its end (a resume tunes the host "
                 "as its run was started, with or without it)",
    "base_image": "base of both images (default debian:bookworm-slim; bootstrapped with mmdebstrap "
                  "from the host's apt mirror when it cannot be pulled)",
    "no_report": "do not render the report at the end",
    "results_dir": "where run folders go (default: results/)",
    "image": "use the published images REGISTRY/NAME:TAG (pulls REGISTRY/NAME-server:TAG and "
             "REGISTRY/NAME-client:TAG) instead of building",
    "from_archive": "use the images of FILE.tar.gz written by `invoke publish` instead of building",
    "published": "the published.json to check the images' digests against (default: FILE.published.json "
                 "beside --from-archive); alone, it says where to take the images from",
    "server": _servers_help(),
    "server_image": "a server of your own: the image to run it from (on the server's engine, or pulled); "
                    "needs --server-cmd and --server-port; alone, or as custom in --server's list",
    "server_cmd": "a server of your own: its command in the image, as one string; {port}, {bind} and "
                  "{msgsize} are replaced by the run's values",
    "server_port": "a server of your own: the TCP port it listens on",
    "server_engine": "the Docker engine that runs the server and pipetest: unix://, tcp:// or ssh:// "
                     "(default: DOCKER_HOST or the local socket)",
    "client_engine": "the Docker engine that runs deadconn and the load (default: the server's engine); "
                     "the client image is copied there",
    "server_address": "the IPv4 address the server listens on and the clients target (default 127.0.0.1; "
                      "an address of the server's host when the clients run on another machine)",
    "load": _loads_help(),
    "rate": "the open loop's offered rate: requests/s (50000) or a share of the lowest capacity at 0 dead "
            "connections, measured with wrk before the first point (0.5x, the default)",
    "connections": "the open loop's keep-alive connections (default 100)",
    "dry_run": "print the plan: points per sweep, variant and line, the levels skipped and why, the expected "
               "time; build and start nothing",
    "no_anatomy": "leave out the kernel cost anatomy (on by default): after each dead point's measurement, a "
                  "window of its own with perf (syscalls, context switches, where the CPU goes) and slabinfo "
                  "(memory per dead connection)",
    "walks": _walks_help(),
    **GUESTS_HELP,
})
@_user_errors
def reproduce(c, profile="quick", sweeps=None, variants=None, backends=None, dead=None, pipes=None,
              repeat=None, duration=None, resume=None, tune_host=False, base_image=None, no_report=False,
              results_dir=None, image=None, from_archive=None, published=None, server=None, server_image=None,
              server_cmd=None, server_port=None, server_engine=None, client_engine=None, server_address=None,
              load=None, dry_run=False, no_anatomy=False, walks=None, rate=None, connections=None, kernels=None,
              accel=None, kernel_modules=None):
    """Build the images, run every sweep in containers, and render the report (--dry-run: only say what it would
    do)."""
    from experiment import pipeline

    pipeline.reproduce(profile=profile, sweeps=sweeps, variants=variants, backends=backends, dead=dead, pipes=pipes,
                       repeat=repeat, duration=duration, resume=resume, tune_host=tune_host, base_image=base_image,
                       no_report=no_report, results_dir=results_dir, image=image, from_archive=from_archive,
                       published=published, server=server, server_image=server_image, server_cmd=server_cmd,
                       server_port=server_port, server_engine=server_engine, client_engine=client_engine,
                       server_address=server_address, load=load, dry_run=dry_run, no_anatomy=no_anatomy,
                       walks=walks, rate=rate, connections=connections, kernels=kernels, accel=accel,
                       kernel_modules=kernel_modules)


@task(positional=["run"], help={"run": "a run folder or id under results/ (default: results/latest)"})
@_user_errors
def report(c, run=None):
    """Render (again) the HTML and markdown report of a run."""
    from experiment.report import render
    from experiment.run.results import Run

    print(render.render(Run.open(run)))


@task(positional=["run"], help={"run": "run folder or id under results/ (default: results/latest)",
                                "format": "csv or json",
            "output": "file to write (default: standard output)"})
@_user_errors
def export(c, run=None, format="csv", output=None):
    """A run's points as flat CSV rows (one per point) or as one JSON array of the point records."""
    from experiment.report import export as exporting
    from experiment.run.results import Run

    text = exporting.export(Run.open(run).points(), format)
    if output:
        Path(output).write_text(text)
        print(output)
    else:
        print(text, end="")


@task(positional=["run"], help={"run": "run folder or id under results/ (default: results/latest)"})
@_user_errors
def attach(c, run=None):
    """Write results/<run>/attach/: issue.md to paste into a GitHub issue, the two key figures and report.zip."""
    from experiment.report import attach as attaching
    from experiment.run.results import Run

    made = attaching.attach(Run.open(run))
    print(made.issue_md)
    for line in made.gh_commands:
        print(line)


@task
@_user_errors
def schemas(c):
    """Write schemas/run.schema.json and schemas/point.schema.json from the model (the published JSON Schemas)."""
    from experiment import model
    from experiment.paths import ROOT

    for kind in (model.RUN, model.POINT):
        path = ROOT / "schemas" / f"{kind}.schema.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(model.json_schema(kind), indent=2) + "\n")
        print(path)


@task(help={"run_a": "the baseline run", "run_b": "the run compared with it", "out": "output folder",
            "noise": "with one repetition, B/A within 1 ± this fraction is no change (default 0.15)"})
@_user_errors
def compare(c, run_a, run_b, out=None, noise=None):
    """Render a side-by-side comparison of two runs with the ratio B/A per point, changes beyond noise marked."""
    from experiment.report import comparison
    from experiment.run.results import Run

    print(comparison.write(Run.open(run_a), Run.open(run_b), Path(out) if out else None,
                           comparison.noise_fraction(noise)))


@task(help={"profile": "the profile whose plan the checks judge the host for (default quick)",
            "dead": "comma list of dead-connection levels (default: the profile's)",
            "sweeps": _sweeps_help(),
            "tune_host": "judge as for a run with --tune-host (the sysctls it would raise; needs root)",
            "results_dir": "where run folders go (default: results/)",
            "server_engine": "the server's Docker engine (default: DOCKER_HOST or the local socket)",
            "client_engine": "the clients' Docker engine (default: the server's)",
            **GUESTS_HELP,
            "kernels": "judge the host for a run in guests of these kernels (as reproduce's --kernels): QEMU, the "
                       "accelerator, each kernel as the cache has it, fetching nothing"})
@_user_errors
def doctor(c, profile="quick", dead=None, sweeps=None, tune_host=False, results_dir=None, server_engine=None,
           client_engine=None, kernels=None, accel=None, kernel_modules=None):
    """Check the host for a run in seconds, building nothing: one line per check, ok / warn / fail and the fix."""
    from experiment.run import doctor as checking

    if not checking.main(profile, dead, sweeps, tune_host, results_dir, server_engine, client_engine,
                         kernels=kernels, accel=accel, kernel_modules=kernel_modules):
        raise Exit(code=1)


@task(help={"results_dir": "where the run folders are (default: results/)",
            "run": "only what this run (an id or a folder) left: its containers and host tuning, no images",
            "engine": "the Docker engine (default: DOCKER_HOST or the local socket)"})
@_user_errors
def clean(c, results_dir=None, run=None, engine=None):
    """Remove what killed runs left: containers of runs that are not running, image tags of ours no run
    refers to, and the sysctls and loopback rules a --tune-host run could not put back."""
    from experiment.run import leftovers

    leftovers.main(results_dir, run, engine)


@task(help={"base_image": "base of both images (default debian:bookworm-slim)"})
@_user_errors
def build_images(c, base_image=None):
    """Build (or reuse from cache) the server and client images."""
    from experiment.host import engine, images

    log_dir = Path("results/.build-logs")
    client = engine.connect(log_dir=log_dir)
    for target, built in images.build(client, base_image or images.DEFAULT_BASE_IMAGE, log_dir).items():
        print(f"{target}: {built.tag} {built.id}")


@task(help={"to": "REGISTRY/NAME:TAG (pushes REGISTRY/NAME-server:TAG and REGISTRY/NAME-client:TAG) or "
                  "FILE.tar.gz (docker save of both, gzipped, for machines without a registry)",
            "published": "where to write published.json (default: ./published.json for a registry, "
                         "FILE.published.json beside an archive)",
            "base_image": "base of both images (default debian:bookworm-slim)"})
@_user_errors
def publish(c, to, published=None, base_image=None):
    """Build (or reuse) the images, push them to a registry or save them to FILE.tar.gz, write published.json."""
    from experiment.host import engine, images
    from experiment.host import publish as publishing

    log_dir = Path("results/.build-logs")
    client = engine.connect(log_dir=log_dir)
    built = images.build(client, base_image or images.DEFAULT_BASE_IMAGE, log_dir)
    publishing.publish(client, built, to, Path(published) if published else None)


@task(help={"k": "only tests matching this pytest -k expression", "no_docker": "skip the Docker tests",
            "pytest_args": "more arguments for pytest, as one string"})
@_user_errors
def test(c, k=None, no_docker=False, pytest_args=""):
    """Install what the tests need (host packages, Docker engine), then run ruff, mypy and pytest."""
    from dev import testenv

    testenv.prepare(docker=not no_docker)
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    c.run(f"{sys.executable} -m mypy", pty=False)
    args = ["-ra"]
    if k:
        args += ["-k", k]
    if no_docker:
        args += ["-m", "not docker"]
    c.run(f"{sys.executable} -m pytest {' '.join(args)} {pytest_args}", pty=False)


@task
@_user_errors
def clean_room(c):
    """CI's .ci/run in a fresh clone of HEAD, in a container with Debian's base system and python3 only.

    Then one tiny reproduce there from a freshly bootstrapped base image. Every package, tool and service the
    tests need must be installed by the project itself; run it before a stop that touches dependencies."""
    from dev import cleanroom

    code = cleanroom.run()
    if code:
        raise Exit(code=code)


def _bench_only_help() -> str:
    """--only's help: the items as the bench's table names them (it imports no item)."""
    from experiment.bench import registry

    return registry.help_text()


@task(help={"json_out": "where to write the JSON results (default benchmarks/results/bench-<stamp>.json)",
            "skip_harness": "leave out the timed quick profile run (item 4), which takes about 5 minutes",
            "only": _bench_only_help()})
@_user_errors
def bench(c, json_out=None, skip_harness=False, only=None):
    """ephttpd vs nginx per reply, capacity per backend, deadconn's rate, the harness, pipetest, completion vs
    readiness, the container's and its seccomp filter's cost, pipetest's walks under perf: one run."""
    from experiment.bench import runner

    runner.main(json_out, skip_harness=skip_harness, only=only)


@task
@_user_errors
def compose(c):
    """Regenerate compose/*.yml from the runner's container definitions."""
    from experiment.run import composefiles

    for path in composefiles.write():
        print(path)
