"""`invoke reproduce`: a run from its plan, in named steps (_measure_all): the engines connected and the images
placed on them, the servers under test, the host assessed (limits, preflight, metadata, cpusets), then the
sweep: every line planned() lists, in its order, each measured by its sweep's module (dead.py, pipetest.py).

The server may run on one Docker engine and the clients on another (--server-engine, --client-engine): the
server listens on --server-address, which the clients target; each engine's containers get that engine's
open-file limit and CPUs.

Points are written one file each as soon as they are measured; a point that fails is recorded with its
reason and the sweep goes on; a level the host cannot reach is recorded as skipped with the reason.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.utils import parse_repository_tag

from .. import anatomy, catalog, model
from ..errors import UserError
from ..host import engine, images, journal, machine, metadata, preflight, process, publish, tracefs
from ..host.tuning import tune
from ..model import Plan
from . import durations, instruments, openloop, results, runlog, servers
from .containers import Containers
from .context import Context
from .dead import dead_series
from .pipetest import pipetest_series
from .plan import (
    OPENLOAD_FD_OVERHEAD,
    choices,
    count_points,
    dead_holders,
    max_dead,
    max_pipes,
    planned,
    series_levels,
)
from .progress import Progress
from .services import LOOPBACK

Say = Callable[[str], None]

# The address a client host connects to a server from, asked of a client container (the client image has
# Python): a UDP socket's connect() picks the route's source address without sending anything.
SOURCE_ADDRESS_SCRIPT = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                         "s.connect((sys.argv[1], 9)); print(s.getsockname()[0])")


@dataclass(frozen=True)
class Options:
    """Everything `invoke reproduce` was asked, beside the plan."""

    base_image: str = images.DEFAULT_BASE_IMAGE
    tune_host: bool = False
    resume: str | None = None
    render_report: bool = True
    results_dir: Path = results.RESULTS
    image_ref: str | None = None
    archive: str | None = None
    published_json: str | None = None
    # The Docker engines of the server and of the clients (None: DOCKER_HOST or the local socket), and the
    # address the server listens on and the clients target.
    server_engine_url: str | None = None
    client_engine_url: str | None = None
    server_address: str = LOOPBACK


def cpusets(server_cpus: list[int], client_cpus: list[int] | None = None, same_host: bool = True) -> dict:
    """UP: the server on the first CPU of its host, the clients on the others (all of theirs when they run on
    another host). SMP: everyone on all CPUs of their host."""
    client_cpus = server_cpus if client_cpus is None else client_cpus
    server_all, client_all = ",".join(map(str, server_cpus)), ",".join(map(str, client_cpus))
    up_clients = client_all
    if same_host:
        up_clients = ",".join(str(c) for c in client_cpus if c != server_cpus[0]) or client_all
    return {"up": {"server": str(server_cpus[0]), "clients": up_clients},
            "smp": {"server": server_all, "clients": client_all}}


def check_address(address: str) -> str:
    """--server-address: an IPv4 address (deadconn and httperf speak IPv4)."""
    try:
        return str(ipaddress.IPv4Address(address))
    except ipaddress.AddressValueError:
        raise UserError(f"--server-address {address!r}: give the IPv4 address the server listens on and the "
                        "clients reach it at, e.g. 127.0.0.1 or 192.0.2.10") from None


def engine_url(url: str | None) -> str:
    """An engine flag's URL; not given: DOCKER_HOST's, or the local socket."""
    return url or engine.default_url()


def reproduce(plan: Plan, options: Options, say: Say = print) -> results.Run:
    """Builds the images, runs every planned point not yet done, and returns the run.

    SIGTERM is handled like Ctrl-C: the run's containers are removed, tuned sysctls restored, finished
    points kept, and the run marked interrupted so that --resume can continue it. Any other exception marks
    it failed with the message, its traceback in logs/traceback*.txt. While it runs, this process holds the
    run's lock (results.Run.hold), and what it prints goes to logs/harness.log too (runlog)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run, record = _resume_run(options, say) if options.resume else _create_run(plan, options, say)
    status, error, refused, traced = "failed", None, False, None
    try:
        _measure_all(run, record, options, say)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise UserError(f"interrupted: {len(run.points())} points kept in {run.path}; "
                        f"continue with `invoke reproduce --resume {run.id}`") from None
    except metadata.ResumeRefused:
        refused = True  # nothing of this attempt belongs to the run: it stays as it was
        raise
    except Exception as e:
        error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        traced = _write_traceback(run)
        raise
    finally:
        if not refused:
            run.update_record(status=status, error=error, ended_at=model.utc_now(),
                              error_traceback=traced or run.record().error_traceback)
        run.release()
    return run


def _resume_run(options: Options, say: Say) -> tuple[results.Run, model.RunRecord]:
    """The run --resume names, held by this process, and its record as its last attempt left it."""
    run = results.Run.open(options.resume, options.results_dir)
    run.hold()
    runlog.attach(run.path)
    record = run.record()
    say(f"resuming {run.id}: {len(run.points())} points already done")
    if note := tunes_host(record, options.tune_host)[1]:
        say(note)
    if (written := run.recorded_version()) != model.SCHEMA_VERSION:
        say(f"{run.id} was written with schema_version {written}: its records are read upgraded to "
            f"{model.SCHEMA_VERSION}, and what this run adds is written as {model.SCHEMA_VERSION}")
    return run, record


def tunes_host(record: model.RunRecord, flag: bool) -> tuple[bool, str]:
    """Whether the run tunes the host (--tune-host): as it was started, a resume too, whatever this command's
    flag says, so that every point is measured on the same host settings; by the flag for a run whose
    run.json does not record it. With what to say when that is not simply the flag ("" when it is)."""
    if record.tune_host is None:
        given = "with --tune-host" if flag else "without --tune-host"
        return flag, (f"{record.run_id}'s run.json does not record whether it was started with --tune-host (it "
                      f"was written before that was recorded): this resume goes by its own flag, {given}")
    if record.tune_host and not flag:
        return True, (f"{record.run_id} was started with --tune-host: its resume tunes the host as it did (the flag "
                      "need not be given again), so that all its points are measured on the same host settings")
    if flag and not record.tune_host:
        return False, (f"{record.run_id} was started without --tune-host: its resume does not tune the host either "
                       "(--tune-host is ignored), so that all its points are measured on the same host settings")
    return flag, ""


def _create_run(plan: Plan, options: Options, say: Say) -> tuple[results.Run, model.RunRecord]:
    """A new run of the plan, its folder created and held by this process, and its record: the engines and
    the server's address it was asked for, and this process as its harness."""
    server_url = engine_url(options.server_engine_url)
    endpoints = {"server": server_url, "client": engine_url(options.client_engine_url or server_url),
                 "server_address": check_address(options.server_address)}
    record = model.RunRecord(run_id=results.new_run_id(plan.profile), profile=plan.profile, status="preparing",
                             started_at=model.utc_now(), command_line=list(sys.argv), plan=plan, engines=endpoints,
                             harness=process.this_process(), tune_host=options.tune_host)
    run = results.Run.create(record, options.results_dir)
    run.hold()
    runlog.attach(run.path)
    say(f"results: {run.path}")
    return run, record


def _write_traceback(run: results.Run) -> str | None:
    """The exception being handled, with its traceback, in logs/traceback.txt (a resumed attempt's:
    traceback.1.txt, ...); its path within the run folder, or None when it cannot be written."""
    path, n = run.logs_dir / "traceback.txt", 1
    while path.exists():
        path, n = run.logs_dir / f"traceback.{n}.txt", n + 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError:
        return None
    return str(path.relative_to(run.path))


@dataclass(frozen=True)
class Engines:
    """The run's two Docker engines (one client object when both URLs are the same), and the address the
    server listens on and the clients target."""

    server_url: str
    client_url: str
    server_address: str
    server: docker.DockerClient
    client: docker.DockerClient

    @classmethod
    def connect(cls, endpoints: dict, log_dir: Path, say: Say) -> Engines:
        """The engines of run.json's "engines" ({"server", "client", "server_address"}), connected."""
        server_url, client_url = endpoints["server"], endpoints["client"]
        server = engine.connect(server_url, log_dir=log_dir, say=say)
        client = server if client_url == server_url else engine.connect(client_url, log_dir=log_dir, say=say)
        return cls(server_url, client_url, endpoints["server_address"], server, client)

    def url(self, role: str) -> str:
        """The URL of the role's engine: "server" or "client"."""
        return self.server_url if role == "server" else self.client_url


@dataclass(frozen=True)
class PlacedImages:
    """The run's images on the engines that start them (publish.prepare), and where they came from."""

    built: dict[str, images.BuiltImage]  # by target: "server", "client"
    base: dict  # the base image they were built on
    provenance: dict  # run.json's metadata "images_source"

    @property
    def server_tag(self) -> str:
        """What the server's containers start from."""
        return self.built["server"].tag

    @property
    def client_tag(self) -> str:
        """What the clients' containers start from."""
        return self.built["client"].tag


@dataclass(frozen=True)
class Probed:
    """What the run's engines give their containers (engine.probe: open-file limit, CPUs, boot id), by role."""

    engines: Engines
    found: dict  # {"server": engine.probe(...), "client": ...}

    @classmethod
    def take(cls, engines: Engines, placed: PlacedImages) -> Probed:
        """Each engine probed once, in a container of the image its role runs."""
        server = engine.probe(engines.server, placed.server_tag)
        client = server if engines.client is engines.server else engine.probe(engines.client, placed.client_tag)
        return cls(engines, {"server": server, "client": client})

    @property
    def same_host(self) -> bool:
        """Whether the two engines run on one kernel (two dockerds of one machine, or one engine)."""
        return self.found["server"].get("boot_id") == self.found["client"].get("boot_id")

    def fd_limit(self, role: str) -> int:
        """The open-file limit of the role's containers: what its engine gives a container, and for an
        engine on this machine no more than this process's own hard limit (which is what we were given)."""
        probed = self.found[role]["fd_hard_limit"]
        return min(machine.fd_hard_limit(), probed) if engine.is_local(self.engines.url(role)) else probed

    def cpus(self, role: str) -> list[int]:
        """The CPUs the role's containers may use; on this machine, within our own affinity."""
        found = engine.expand_cpu_list(self.found[role]["cpu_list"]) or list(range(self.found[role]["nproc"]))
        url = self.engines.url(role)
        if engine.is_local(url):
            found = [c for c in found if c in machine.cpus()] or found
        if not found:
            raise UserError(f"the {role} engine at {url} reported no CPUs for its containers: check its cpuset")
        return found


@dataclass(frozen=True)
class AssessedHost:
    """What the host gives the run, as assessed before its first point."""

    fd_limit: int  # the server's containers' open-file limit
    client_fd_limit: int
    cpusets: dict  # by variant: cpusets()
    findings: list[preflight.Finding]  # the host settings below what the plan needs (--tune-host raises them)
    client_source: str | None  # deadconn's source address, for a server beyond loopback


@dataclass
class Stopwatch:
    """The moments a run's wall time divides at, for run.json's "timings" (`invoke bench` reports them)."""

    started: float = field(default_factory=time.monotonic)
    images_done: float = 0.0
    measuring: float = 0.0

    def timings(self, folding_s: float) -> dict[str, float]:
        """Seconds of engines and images, of setup before the first point, of measuring up to now."""
        return {"images_s": round(self.images_done - self.started, 1),
                "setup_s": round(self.measuring - self.images_done, 1),
                "measuring_s": round(time.monotonic() - self.measuring, 1),
                "anatomy_fold_s": round(folding_s, 1)}


def _measure_all(run: results.Run, record: model.RunRecord, options: Options, say: Say) -> None:
    """The run's steps: the engines connected and the images placed on them, the servers under test, the host
    assessed, the sweep. Each takes and returns what it works on (Engines, PlacedImages, Probed, AssessedHost),
    so that a run over several engines can take them once per engine."""
    # What an earlier run killed outright left tuned comes first (a resumed run's own folder may lie elsewhere).
    journal.restore_abandoned(options.results_dir, say, also=[run.path])
    plan, endpoints = record.plan, _recorded_endpoints(record)
    servers.refuse_taken_ports(choices(plan).values(), endpoints["server_address"])
    stopwatch = Stopwatch()
    engines = Engines.connect(endpoints, run.logs_dir, say)
    placed = _place_images(run, record, options, engines, say)
    stopwatch.images_done = time.monotonic()
    probed = Probed.take(engines, placed)
    under_test = _servers_under_test(plan, engines, placed, say)
    host = _assess_host(run, record, options, probed, placed, under_test, say)
    _sweep(run, plan, engines, placed, host, tunes_host(record, options.tune_host)[0], stopwatch, say)


def _recorded_endpoints(record: model.RunRecord) -> dict:
    """The engines and the server's address the run was started with (a resumed run's own; for a run recorded
    before they could be chosen, the default engine and loopback)."""
    return record.engines or {"server": engine.default_url(), "client": engine.default_url(),
                              "server_address": LOOPBACK}


def _place_images(run: results.Run, record: model.RunRecord, options: Options, engines: Engines,
                  say: Say) -> PlacedImages:
    """The images on the server's engine, built or obtained as asked (a resumed run's from where its first
    attempt's came), and the client image copied to the clients' engine when that is another one."""
    resumed_from = record.metadata.get("images_source") if options.resume else None
    built, base, provenance = publish.prepare(engines.server, options.base_image, run.logs_dir, options.image_ref,
                                              options.archive, options.published_json, resumed_from, say=say)
    if engines.client is not engines.server:
        say(f"copying {built['client'].tag} to the clients' engine at {engines.client_url}")
        provenance["copied_to_client_engine"] = engine.copy_images(engines.server, engines.client,
                                                                   [built["client"].tag])
    return PlacedImages(built, base, provenance)


def _servers_under_test(plan: Plan, engines: Engines, placed: PlacedImages, say: Say) -> dict[str, dict]:
    """run.json's servers under test, by kind: ours in the server image, or a server of the user's own in its
    image on the server's engine."""
    under_test = {}
    for kind, choice in choices(plan).items():
        under_test[kind] = {"kind": kind, "image": placed.server_tag, "image_id": placed.built["server"].id,
                            "command": choice.command, "port": choice.port, "address": engines.server_address,
                            "readiness": catalog.SERVERS[kind].readiness}
        if choice.image:
            under_test[kind].update(image=choice.image, image_id=_user_image(engines.server, choice.image, say).id)
    return under_test


def _user_image(client: docker.DockerClient, ref: str, say: Say):
    """The image of a server of the user's own, on the server's engine: there already, or pulled."""
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    repo, tag = parse_repository_tag(ref)
    say(f"pulling {ref}")
    try:
        return client.images.pull(repo, tag=tag or "latest")
    except docker.errors.DockerException as error:
        reason = str(getattr(error, "explanation", None) or error).splitlines()[0]
        raise UserError(f"--server-image {ref} is not on the server's engine and cannot be pulled ({reason}): "
                        "build or load it there, or check the name") from None


def _assess_host(run: results.Run, record: model.RunRecord, options: Options, probed: Probed,
                 placed: PlacedImages, under_test: dict[str, dict], say: Say) -> AssessedHost:
    """The host before the first point: the clients' source address, the engines' limits, the preflight's
    findings, the metadata (a resumed run's checked against what it recorded) and the cpusets, recorded in
    run.json with the run now running."""
    plan = record.plan
    client_source = _client_source(probed.engines, placed)
    fd_limit, client_fd_limit = probed.fd_limit("server"), probed.fd_limit("client")
    settings = preflight.read_host_settings()
    findings = _preflight(plan, fd_limit, settings, client_source, say)
    meta = _metadata(plan, probed, placed, settings, under_test)
    if options.resume:
        metadata.check_resumable(run.id, record.metadata, meta)
    _check_open_connections(plan, client_fd_limit)
    host = AssessedHost(fd_limit, client_fd_limit, cpusets(probed.cpus("server"), probed.cpus("client"),
                                                           probed.same_host), findings, client_source)
    # The harness: this process (a resumed run's is the one resuming it, once the resume is accepted).
    run.update_record(status="running", metadata=meta, cpusets=host.cpusets, harness=process.this_process(),
                      preflight=[f.to_dict() for f in findings], limits=_limits(plan, fd_limit, client_fd_limit))
    return host


def _client_source(engines: Engines, placed: PlacedImages) -> str | None:
    """The address the clients' host reaches a server beyond loopback from, which deadconn connects from;
    None on loopback."""
    address = engines.server_address
    if ipaddress.IPv4Address(address).is_loopback:
        return None
    try:
        out = engines.client.containers.run(placed.client_tag, ["python3", "-c", SOURCE_ADDRESS_SCRIPT, address],
                                            remove=True, network_mode="host", stdout=True, stderr=True)
        return check_address(out.decode().strip())
    except (docker.errors.DockerException, UserError) as error:
        raise UserError(f"the clients' host has no route to --server-address {address} ({error}): give an "
                        "address of the server's host that the clients' host reaches") from None


def _preflight(plan: Plan, fd_limit: int, settings: dict, client_source: str | None,
               say: Say) -> list[preflight.Finding]:
    """The host settings below what the plan's dead connections need, each said."""
    holders = {s.label: dead_holders(plan, fd_limit, s) for s in plan.series}
    reach = {s.label: _reach(plan, fd_limit, s) for s in plan.series}
    most = max(reach.values(), default=0)
    findings = preflight.assess(
        settings, most, plan.active_connections,
        source_addresses=1 if client_source else preflight.source_addresses_needed(settings, most),
        per_process_dead=max((reach[s.label] for s in plan.series if not holders[s.label]), default=0),
        holder_pipe_bytes=catalog.holder_pipe_bytes(fd_limit) if any(holders.values()) else 0)
    for finding in findings:
        say(f"preflight: {finding.describe()}")
    return findings


def _metadata(plan: Plan, probed: Probed, placed: PlacedImages, settings: dict, under_test: dict[str, dict]) -> dict:
    """run.json's metadata: the host's and its engines', the images' source, the servers under test, and wrk's
    version when the run uses wrk."""
    engines = probed.engines
    meta = metadata.capture(engines.server, placed.built, placed.base, settings, engines.server_url)
    meta["images_source"] = placed.provenance
    meta["engines"] = {"server": engine.facts(engines.server, engines.server_url, probed.found["server"]),
                       "client": engine.facts(engines.client, engines.client_url, probed.found["client"])}
    meta["servers_under_test"] = under_test
    open_probe = model.DEAD_OPEN in plan.sweeps and plan.open_rate is None  # its capacity probe runs wrk
    if plan.load == catalog.WRK or open_probe:
        meta["wrk_version"] = metadata.wrk_version(engines.client, placed.client_tag)
    return meta


def _check_open_connections(plan: Plan, client_fd_limit: int) -> None:
    """UserError when the open loop's --connections are more than the clients' engine lets openload open."""
    most = client_fd_limit - OPENLOAD_FD_OVERHEAD
    if model.DEAD_OPEN in plan.sweeps and plan.open_connections > most:
        raise UserError(f"--connections {plan.open_connections}: more than the clients' engine's open-file limit "
                        f"({client_fd_limit}) allows openload; give at most {most}")


def _limits(plan: Plan, fd_limit: int, client_fd_limit: int) -> dict:
    """run.json's limits: the engines' open-file limits, and what the server's allows each line."""
    holders = {s.label: dead_holders(plan, fd_limit, s) for s in plan.series}
    return {"fd_hard_limit": fd_limit, "client_fd_hard_limit": client_fd_limit,
            # With holders a line reaches its top level, else what one process may hold.
            "max_dead": {s.label: _reach(plan, fd_limit, s) if holders[s.label]
                         else max_dead(fd_limit, s.backend, plan.active_connections) for s in plan.series},
            # The series whose dead connections helper processes hold, and how many.
            "dead_holders": {k: v for k, v in holders.items() if v},
            "max_pipes": {b: max_pipes(fd_limit, b) for b in plan.backends},
            **({"max_dead_open": {s.label: max_dead(fd_limit, s.backend, plan.open_connections)
                                  for s in plan.series}} if model.DEAD_OPEN in plan.sweeps else {})}


def _sweep(run: results.Run, plan: Plan, engines: Engines, placed: PlacedImages, host: AssessedHost,
           tune_host: bool, stopwatch: Stopwatch, say: Say) -> None:
    """Every planned line not yet recorded (measure_lines), with the host tuned meanwhile (--tune-host) and the
    progress shown; however it ends, the containers removed and the anatomy folded (_finish_sweep)."""
    server_runner = Containers(engines.server, run.id, host.fd_limit, run.path)
    client_runner = Containers(engines.client, run.id, host.client_fd_limit, run.path)
    perf = _anatomy_instruments(run, plan, engines.server_url, say)
    tuning = tune(host.findings if tune_host else [], journal=journal.journal_path(run.path))
    with tuning as tuned, Progress(say) as progress:
        if tuned.changed:
            run.update_record(tuned=tuned.changed)
        ctx = Context(run, plan, server_runner, client_runner, placed.server_tag, placed.client_tag, host.cpusets,
                      host.fd_limit, progress, choices(plan), engines.server_address, host.client_source, perf,
                      engine.is_local(engines.server_url))
        _start_progress(ctx)
        stopwatch.measuring = time.monotonic()
        try:
            measure_lines(ctx, say)
        finally:
            _finish_sweep(ctx, stopwatch, say)


def _anatomy_instruments(run: results.Run, plan: Plan, server_url: str, say: Say) -> anatomy.Instruments | None:
    """The kernel cost anatomy's perf, found (or installed) and checked once, with tracefs mounted for its
    syscall counts (recorded in run.json's metadata "tracefs"); on a remote engine, why not. None when the
    plan takes no anatomy."""
    if not (plan.anatomy and model.DEAD in plan.sweeps):
        return None
    local = engine.is_local(server_url)
    no_tracefs = _mount_tracefs(run, say) if local else ""
    found = anatomy.prepare(local=local, no_tracefs=no_tracefs)
    if found.perf is None:
        say(f"anatomy: perf unavailable, the points will say why: {found.reason}")
    elif found.no_tracepoints:
        say(f"anatomy: the system calls cannot be counted, the points will say why ({found.no_tracepoints}); "
            "where the CPU goes and the context switches are measured")
    return found


def _mount_tracefs(run: results.Run, say: Say) -> str:
    """tracefs mounted where the kernel has it and this process may (host/tracefs.py), said in one line when
    this run mounts it, and recorded in the run's metadata; why it is missing ("": it is there)."""
    state = tracefs.ensure()
    if state.mounted_here:
        say(f"anatomy: mounted tracefs at {state.where} for the syscall counts (it stays mounted, as systemd "
            "mounts it at boot)")
    record = run.record()
    run.update_record(metadata={**record.metadata, "tracefs": state.describe()})
    return state.reason if state.where is None else ""


def _start_progress(ctx: Context) -> None:
    """The progress' total, what earlier attempts recorded, and the seconds each point left is expected to take."""
    done = ctx.run.points()
    recorded = {p.id for p in done}
    ctx.progress.start(total=count_points(ctx.plan, ctx.fd_limit), done=len(done),
                       to_skip=max(0, count_points(ctx.plan, ctx.fd_limit, skipped=True)
                                   - sum(p.status == model.SKIPPED for p in done)),
                       expected={k: v for k, v in durations.expected_seconds(ctx.plan, ctx.fd_limit).items()
                                 if k not in recorded})


def measure_lines(ctx: Context, say: Say) -> None:
    """Every line of planned() in its order, each by its sweep's module; the open loop's one offered rate
    before the first point."""
    if model.DEAD_OPEN in ctx.plan.sweeps:
        rate = openloop.offered_rate(ctx, ctx.run.record().open_rate, say)
        ctx.run.update_record(open_rate=rate)
        ctx.open_rate = rate["rate"]
    for line in planned(ctx.plan, ctx.fd_limit):
        if line.sweep == model.PIPETEST:
            pipetest_series(ctx, line)
        else:
            dead_series(ctx, line)


def _finish_sweep(ctx: Context, stopwatch: Stopwatch, say: Say) -> None:
    """After the sweep, however it ended: the run's containers removed, the anatomy's profiles folded, and
    where the wall time went recorded."""
    removed = ctx.servers.remove_all() + ctx.clients.remove_all()
    if removed:
        say(f"removed {removed} container(s) of this run")
    folding = 0.0
    # The profiles are folded after the sweep, not per point (`perf script` takes a while each), and also when
    # it was interrupted, so that the points it kept are complete before a resume.
    if ctx.anatomy is not None and ctx.anatomy.perf is not None:
        ctx.progress.describe("anatomy: folding the profiles")
        folding = instruments.fold(ctx.run.path, ctx.run.points(), ctx.anatomy, ctx.run.update_point, say)
    ctx.run.update_record(timings=stopwatch.timings(folding))


def _reach(plan: Plan, fd_limit: int, series: catalog.Series) -> int:
    """The most dead connections a series opens: its top level that is not skipped."""
    return max((lv.value for lv in series_levels(plan, fd_limit, series) if not lv.skip_reason), default=0)
