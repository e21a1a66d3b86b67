"""The steps of a run (reproduce.py, guests.py), each taking and returning small values: the engines connected
(Engines), the images placed on them (PlacedImages), what the engines give a container (Probed), the servers
under test, the host assessed before the first point (AssessedHost), then the sweep: every line planned()
lists, in its order, each measured by its sweep's module (dead.py, pipetest.py), with the host tuned meanwhile
and the containers removed and the anatomy folded however it ends.
"""

from __future__ import annotations

import ipaddress
import time
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
from . import durations, instruments, neighbours, openloop, results
from .containers import Containers
from .context import Context, InGuest
from .dead import dead_series
from .pipetest import pipetest_series
from .plan import (
    OPENLOAD_FD_OVERHEAD,
    Line,
    choices,
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
    def connect(cls, endpoints: dict, log_dir: Path, say: Say, plain: bool = False) -> Engines:
        """The engines of run.json's "engines" ({"server", "client", "server_address"}), connected (plain: without
        TLS, a guest's engine)."""
        server_url, client_url = endpoints["server"], endpoints["client"]
        server = engine.connect(server_url, log_dir=log_dir, say=say, plain=plain)
        client = server if client_url == server_url else engine.connect(client_url, log_dir=log_dir, say=say,
                                                                        plain=plain)
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

    def timings(self, folding_s: float, watching_s: float) -> dict[str, float]:
        """Seconds of engines and images, of setup before the first point, of measuring up to now; of them, the
        anatomy's folding after the sweep and what watching the points' CPUs added (neighbours.Spent)."""
        return {"images_s": round(self.images_done - self.started, 1),
                "setup_s": round(self.measuring - self.images_done, 1),
                "measuring_s": round(time.monotonic() - self.measuring, 1),
                "anatomy_fold_s": round(folding_s, 1), "neighbours_s": round(watching_s, 1)}


def place_images(run: results.Run, record: model.RunRecord, options: Options, engines: Engines,
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


def servers_under_test(plan: Plan, engines: Engines, placed: PlacedImages, say: Say) -> dict[str, dict]:
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


def assess_host(run: results.Run, record: model.RunRecord, options: Options, probed: Probed,
                 placed: PlacedImages, under_test: dict[str, dict], say: Say) -> AssessedHost:
    """The host before the first point: the clients' source address, the engines' limits, the preflight's
    findings, the metadata (a resumed run's checked against what it recorded) and the cpusets, recorded in
    run.json with the run now running."""
    plan = record.plan
    client_source = _client_source(probed.engines, placed)
    fd_limit, client_fd_limit = probed.fd_limit("server"), probed.fd_limit("client")
    settings = preflight.read_host_settings()
    findings = preflight_findings(plan, fd_limit, settings, client_source, say)
    meta = _metadata(plan, probed, placed, settings, under_test)
    if options.resume:
        metadata.check_resumable(run.id, record.metadata, meta)
    _check_open_connections(plan, client_fd_limit)
    host = AssessedHost(fd_limit, client_fd_limit, cpusets(probed.cpus("server"), probed.cpus("client"),
                                                           probed.same_host), findings, client_source)
    # The harness: this process (a resumed run's is the one resuming it, once the resume is accepted).
    run.update_record(status="running", metadata=meta, cpusets=host.cpusets, harness=process.this_process(),
                      preflight=[f.to_dict() for f in findings], limits=limits_of(plan, fd_limit, client_fd_limit))
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


def preflight_findings(plan: Plan, fd_limit: int, settings: dict, client_source: str | None,
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


def limits_of(plan: Plan, fd_limit: int, client_fd_limit: int) -> dict:
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


def sweep(run: results.Run, plan: Plan, engines: Engines, placed: PlacedImages, host: AssessedHost,
          tune_host: bool, stopwatch: Stopwatch, say: Say, in_guest: InGuest | None = None) -> None:
    """Every planned line not yet recorded (measure_lines; in a guest, its lines), with the host tuned meanwhile
    (--tune-host; a guest never is) and the progress shown; however it ends, the containers removed and the
    anatomy folded (_finish_sweep)."""
    server_runner = Containers(engines.server, run.id, host.fd_limit, run.path)
    client_runner = Containers(engines.client, run.id, host.client_fd_limit, run.path)
    local = engine.is_local(engines.server_url)
    no_tracefs = _mount_tracefs(run, say) if local and in_guest is None else ""
    perf = _anatomy_instruments(plan, local, no_tracefs, say) if in_guest is None else _no_anatomy(plan)
    watch = neighbours.Watch.prepare(local, in_guest is not None, no_tracefs)
    _record_watch(run, watch, say)
    tuning = tune(host.findings if tune_host and in_guest is None else [], journal=journal.journal_path(run.path))
    with tuning as tuned, Progress(say) as progress:
        if tuned.changed:
            run.update_record(tuned=tuned.changed)
        ctx = Context(run, plan, server_runner, client_runner, placed.server_tag, placed.client_tag, host.cpusets,
                      host.fd_limit, progress, choices(plan), engines.server_address, host.client_source, perf,
                      local, in_guest=in_guest, watch=watch)
        _start_progress(ctx)
        stopwatch.measuring = time.monotonic()
        try:
            measure_lines(ctx, say)
        finally:
            _finish_sweep(ctx, stopwatch, say)


def _anatomy_instruments(plan: Plan, local: bool, no_tracefs: str, say: Say) -> anatomy.Instruments | None:
    """The kernel cost anatomy's perf, found (or installed) and checked once (no_tracefs: why tracefs is
    missing for its syscall counts, "" when it is there); on a remote engine, why not. None when the plan
    takes no anatomy."""
    if not (plan.anatomy and model.DEAD in plan.sweeps):
        return None
    found = anatomy.prepare(local=local, no_tracefs=no_tracefs)
    if found.perf is None:
        say(f"anatomy: perf unavailable, the points will say why: {found.reason}")
    elif found.no_tracepoints:
        say(f"anatomy: the system calls cannot be counted, the points will say why ({found.no_tracepoints}); "
            "where the CPU goes and the context switches are measured")
    return found


def _record_watch(run: results.Run, watch: neighbours.Watch, say: Say) -> None:
    """How the points' CPUs are watched for others' tasks, said when not by perf and recorded in run.json's
    metadata ("neighbours")."""
    if watch.why_no_perf:
        say(f"who else held the points' CPUs: from /proc/stat, without the stretches ({watch.why_no_perf})")
    record = run.record()
    run.update_record(metadata={**record.metadata, "neighbours": watch.describe()})


def _mount_tracefs(run: results.Run, say: Say) -> str:
    """tracefs mounted where the kernel has it and this process may (host/tracefs.py), said in one line when
    this run mounts it, and recorded in the run's metadata; why it is missing ("": it is there)."""
    state = tracefs.ensure()
    if state.mounted_here:
        say(f"mounted tracefs at {state.where} for the syscall counts and the scheduler's switches (it stays "
            "mounted, as systemd mounts it at boot)")
    record = run.record()
    run.update_record(metadata={**record.metadata, "tracefs": state.describe()})
    return state.reason if state.where is None else ""


def _no_anatomy(plan: Plan) -> anatomy.Instruments | None:
    """The anatomy in a guest: unavailable, with the reason (None when the plan takes none)."""
    if not (plan.anatomy and model.DEAD in plan.sweeps):
        return None
    return anatomy.Instruments(None, "measured in a guest (--kernels): perf runs on the host and cannot see inside "
                                     "the guest's kernel")


def _start_progress(ctx: Context) -> None:
    """The progress' total, what earlier attempts recorded, and the seconds each point left is expected to take
    (in a guest: of its lines)."""
    ids = {line.point_id(level): bool(level.skip_reason) for line in lines_to_measure(ctx) for level in line.levels}
    done = [p for p in ctx.run.points() if p.id in ids]
    recorded = {p.id for p in done}
    ctx.progress.start(total=len(ids), done=len(done),
                       to_skip=max(0, sum(ids.values()) - sum(p.status == model.SKIPPED for p in done)),
                       expected={k: v for k, v in durations.expected_seconds(ctx.plan, ctx.fd_limit).items()
                                 if k in ids and k not in recorded})


def lines_to_measure(ctx: Context) -> list[Line]:
    """The lines of planned() this sweep measures: all of them on the host, a guest's own in a guest."""
    found = planned(ctx.plan, ctx.fd_limit)
    return [line for line in found if ctx.in_guest.measures(line)] if ctx.in_guest else found


class GuestLost(UserError):
    """The guest a sweep ran in can no longer measure (QEMU ended, its engine stopped answering)."""


def measure_lines(ctx: Context, say: Say) -> None:
    """Every line this sweep measures (lines_to_measure) in its order, each by its sweep's module; the open
    loop's one offered rate before the first point. In a guest, GuestLost once the guest is gone."""
    if model.DEAD_OPEN in ctx.plan.sweeps:
        rate = openloop.offered_rate(ctx, ctx.run.record().open_rate, say)
        ctx.run.update_record(open_rate=rate)
        ctx.open_rate = rate["rate"]
    for line in lines_to_measure(ctx):
        if ctx.in_guest and (why := ctx.in_guest.failure()):
            raise GuestLost(why)
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
    if ctx.in_guest is None:  # a run in guests records its timings per guest (guests.py)
        ctx.run.update_record(timings=stopwatch.timings(folding, ctx.watch.spent.seconds if ctx.watch else 0.0))


def _reach(plan: Plan, fd_limit: int, series: catalog.Series) -> int:
    """The most dead connections a series opens: its top level that is not skipped."""
    return max((lv.value for lv in series_levels(plan, fd_limit, series) if not lv.skip_reason), default=0)
