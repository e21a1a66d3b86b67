"""The records a run folder holds (run.json and points/<id>.json), and the one upgrade path from every earlier
schema version to this one (what each version changed: schemas/HISTORY.md). A point is a Point: its fields,
and the figures each sweep measures (DeadFigures, PipeFigures), are named here once; the runner fills them and
the report reads them by name.

A record is upgraded when it is read (upgrade()), never rewritten on disk: the committed runs stay as they
were measured. A record of a later version than this one is refused, never misread. Upgraded, it is checked
against this version's JSON Schema (json_schema(), published as schemas/*.schema.json by `invoke schemas`):
a version's schema changes only with SCHEMA_VERSION, except that a new optional field may extend it. Such a
field has a default, and a record leaves it out while it holds it, so that a record written before the field
existed reads and writes back unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import jsonschema

from . import schema
from .catalog import DEFAULT_SERVER, HTTPERF, OPEN, STAY, WALKS, Series, kernel_name
from .errors import UserError

SCHEMA_VERSION = 3
# The sets of a point's CPUs whose interference it records (Point.interference): the server's and the clients'.
SERVER_CPUS, CLIENT_CPUS = "server", "clients"
ROLES_WATCHED = (SERVER_CPUS, CLIENT_CPUS)
# The records of a run folder: run.json, points/<id>.json, and tuning.json (what --tune-host changed).
RUN, POINT, TUNING = "run", "point", "tuning"


def upgrade(data: dict, kind: str, where: object) -> dict:
    """data (a run record or a point, as `kind` says) in this version's form. where names the file in errors."""
    version = data.get("schema_version")
    if version == SCHEMA_VERSION:
        return data
    if version not in _STEPS:
        raise UserError(f"{where} has schema_version {version!r}; this epollbench reads {SCHEMA_VERSION} and "
                        f"upgrades {', '.join(map(str, sorted(_STEPS)))}: use the epollbench version that wrote it")
    while version != SCHEMA_VERSION:
        data = _STEPS[version][kind](dict(data))
        version = data["schema_version"] = version + 1
    return data


# Version 1, as the steps below read it: a point's "backend" held the series label ("epoll", "nginx/epoll") and
# a dead point of a server other than ephttpd named its backend in "mechanism"; the plan's "series" were labels
# too, and a plan from before several servers could run had one "server" and no "series".
def _label_to_series(label: str) -> Series:
    """A version-1 series label: the backend alone for ephttpd, else server/backend."""
    server, _, backend = label.rpartition("/")
    return Series(server or DEFAULT_SERVER, backend)


def _run_1_to_2(record: dict) -> dict:
    plan = dict(record.get("plan") or {})
    if plan:
        servers = [plan.pop("server")] if "server" in plan else list(plan.get("servers") or [DEFAULT_SERVER])
        plan["servers"] = servers
        labels = plan.get("series") or []
        if labels:
            series = [_label_to_series(label) for label in labels]
        else:  # before several servers: the one server ran the plan's backends (ephttpd's when it was ephttpd)
            series = [Series(servers[0], b) for b in plan.get("backends") or []]
            if servers[0] != DEFAULT_SERVER:
                plan["backends"] = []
        plan["series"] = [{"server": s.server, "backend": s.backend} for s in series]
        record["plan"] = plan
    return record


def _point_1_to_2(point: dict) -> dict:
    if "mechanism" in point:
        point["backend"] = point.pop("mechanism")
    elif point.get("sweep") == DEAD:
        series = _label_to_series(point["backend"])
        point["backend"] = series.backend
        point.setdefault("server_kind", series.server)
    if point.get("sweep") == DEAD:
        point.setdefault("load", "httperf")  # the one load before --load existed
    return point


def _point_2_to_3(point: dict) -> dict:
    point["kernel"] = None  # measured on the host's own kernel: the only one before --kernels
    return point


_STEPS = {1: {RUN: _run_1_to_2, POINT: _point_1_to_2, TUNING: lambda journal: journal},
          2: {RUN: lambda record: record, POINT: _point_2_to_3, TUNING: lambda journal: journal}}


# The sweeps, and what became of a point.
DEAD, PIPETEST = "dead", "pipetest"
# The dead sweep again under the open-loop load (openload at one fixed offered rate): its own points and figures.
DEAD_OPEN = "dead-open"
SWEEPS = (DEAD, DEAD_OPEN, PIPETEST)
# The sweeps whose level is dead connections held by deadconn.
DEAD_SWEEPS = (DEAD, DEAD_OPEN)
OK, SKIPPED, FAILED = "ok", "skipped", "failed"
# The programs of a point, each with its section in the point file (cpuset, container, exact command, exit
# code, raw output's path, and what the program said): the evidence behind the figures.
PROGRAMS = ("server", "deadconn", "httperf", "wrk", "openload", "pipetest")


@dataclass
class DeadFigures:
    """What a dead-sweep point measured. reply_rate is the 2002 metric: httperf's mean of its 5 s samples
    (reply_rate_source says when it was replies / duration instead, or wrk's rate)."""

    reply_rate: float
    reply_rate_source: str
    reply_rate_min: float | None
    reply_rate_max: float | None
    reply_rate_stddev: float | None
    reply_rate_samples: int | None
    reply_rate_overall: float
    request_rate: float
    reply_time_ms: float | None
    replies: int
    errors: int
    server_cpu_s: float
    server_cpu_us_per_reply: float | None
    client_cpu_pct: float | None
    duration_s: float


@dataclass
class PipeFigures:
    """What a pipetest point measured; the visits (pipes that carried a token at least once, the fewest and
    most passes of one pipe) from the points measured since walks existed."""

    passes_per_s: float
    elapsed_s: float
    events_per_wait: float | None
    pipes_visited: int | None = None
    visits_min: int | None = None
    visits_max: int | None = None


def _figures_json(figures: DeadFigures | PipeFigures | OpenFigures) -> dict:
    """The figures' record: a figure added later (it has a default) is left out while it holds it."""
    defaults = {f.name: f.default for f in fields(figures) if f.default is not MISSING}
    return {k: v for k, v in asdict(figures).items() if k not in defaults or v != defaults[k]}


@dataclass
class Unavailable:
    """Why a point has no anatomy (or no memory figure): perf or slabinfo could not run here. A record, never
    an error: experiment/anatomy answers it and the point stores it as it is. JSON: {"unavailable": reason}."""

    JSON_SCHEMA: ClassVar[dict] = {"type": "object", "properties": {"unavailable": {"type": "string"}},
                                   "required": ["unavailable"], "additionalProperties": False}
    reason: str

    def to_json(self) -> dict:
        return {"unavailable": self.reason}


@dataclass(frozen=True)
class Held:
    """One task's longest hold of one CPU within the window."""

    comm: str
    pid: int
    cpu: int
    ms: float


@dataclass(frozen=True)
class Interference:
    """Who else held a set of a point's CPUs while it was measured (host/interference.py's docstring says how):
    the flag and the readings behind it. third_party_share: of window_s x the CPUs (0-1). longest, tasks,
    unseen_exits: None where the method cannot see them (stretch_unavailable says why); tasks and
    unseen_exits by comm, in seconds, most first."""

    interfered: bool | None
    method: str
    cpus: list[int]
    window_s: float
    third_party_s: float
    third_party_share: float
    longest: Held | None
    tasks: dict[str, float] | None
    unattributed_s: float = 0.0
    unseen_exits: dict[str, float] | None = None
    longest_unseen: Held | None = None
    stretch_unavailable: str = ""
    holds: list[Held] = field(default_factory=list)  # third parties' longest stretches, longest first (at most 3)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Interference:
        held = {name: Held(**data[name]) if data.get(name) else None for name in ("longest", "longest_unseen")}
        return cls(**{**data, **held, "holds": [Held(**h) for h in data.get("holds") or []]})


@dataclass(frozen=True)
class Percentiles:
    """The latency percentiles of count replies, in ms (nearest rank: host/tail.py)."""

    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    count: int


@dataclass(frozen=True)
class Tail:
    """An open-loop point's tail with and without the interference (host/tail.py's docstring says how). raw:
    over every request with a reply; kept: over those not due inside a third party's stretch on the server's
    CPUs or within after_ms after it (None when no such reply). requests: the requests due; replies: of them,
    those with a reply; excluded: replies due inside a stretch or its guard, excluded_share their share of the
    replies."""

    raw: Percentiles | None
    kept: Percentiles | None
    requests: int
    replies: int
    excluded: int
    excluded_share: float
    after_ms: float

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Tail:
        sides = {side: Percentiles(**data[side]) if data.get(side) else None for side in ("raw", "kept")}
        return cls(**{**data, **sides})


@dataclass
class AnatomyFigures:
    """Where a dead point's server time goes (experiment/anatomy: Anatomy.to_json's keys), measured in a window
    of its own right after the point's measurement, under a second run of the same load. Per reply: the
    replies the window counted (replies_source says whose count). cpu_share (category -> fraction, summing
    to 1) and folded_stacks (path under the run folder) are None until the profile is folded, after the
    sweep. wall_s: what the window added to the point's wall time (its load, perf's start and teardown).
    syscalls_unavailable: why the system calls were not counted (tracefs missing: syscalls_per_reply is None
    and syscalls empty; the CPU shares and context switches are measured), left out of the record while None."""

    # Added after the anatomy itself: left out of a point's record while they hold their default.
    LATER: ClassVar[tuple[str, ...]] = ("syscalls_unavailable",)

    window_s: float
    syscalls_per_reply: float | None
    syscalls: dict[str, float | None]
    context_switches_per_reply: float | None
    context_switches: dict[str, float | None]
    cpu_share: dict[str, float] | None
    folded_stacks: str | None
    replies: dict[str, int]
    samples: int | None
    replies_source: str = "server"
    wall_s: float | None = None
    syscalls_unavailable: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.LATER or v is not None}


@dataclass
class MemoryFigures:
    """What an idle connection costs (experiment/anatomy/memory.py: Memory.to_json's keys): slab per dead
    connection between the previous level and this one, from /proc/slabinfo right before and right after
    deadconn's step (system-wide: both ends of each connection), and the server's RSS at this level. At a
    series' first level nothing was added: the per-dead fields are None and only the RSS is measured."""

    server_rss_bytes: int | None
    kernel_bytes_per_dead: float | None = None
    slab_bytes_per_dead: dict[str, float] = field(default_factory=dict)
    slab_objects_per_dead: dict[str, float] = field(default_factory=dict)
    watches_per_dead: float | None = None
    mechanism_bytes_per_dead: float | None = None
    merged_caches: dict[str, list[str]] = field(default_factory=dict)
    scope: str | None = None
    dead_levels: list[int] | None = None


def _measured(kind: type[AnatomyFigures] | type[MemoryFigures], value: object) -> Any:
    """An "anatomy" or "memory" entry from its JSON: the figures, or Unavailable."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{kind.__name__} is {type(value).__name__}, not an object")
    if set(value) == {"unavailable"}:
        return Unavailable(str(value["unavailable"]))
    return kind(**value)


def _interference(value: dict | None) -> dict[str, Interference] | Unavailable | None:
    """An "interference" entry from its JSON: by role, or Unavailable."""
    if value is None:
        return None
    if set(value) == {"unavailable"}:
        return Unavailable(str(value["unavailable"]))
    return {role: Interference.from_json(found) for role, found in value.items()}


def _tail(value: dict | None) -> Tail | Unavailable | None:
    if value is None:
        return None
    return Unavailable(str(value["unavailable"])) if set(value) == {"unavailable"} else Tail.from_json(value)


@dataclass
class OpenFigures:
    """What an open-loop dead-sweep point measured: openload's offered and achieved rate (requests/s), its
    latency percentiles in ms counted from each request's due time (coordinated omission corrected; the
    uncorrected ones from its send, for comparison), and the server's CPU from its cgroup: seconds, busy share
    of its cpuset over openload's run (t0 to its end, drain included: 100 = every CPU of the cpuset busy), and
    per reply. lagged: the generator found at least one request due late (a late send, its fault: lag.h in
    images/openload; an openload before late_share counted only those found on a free connection), which alone
    moves no percentile; late_share: its late sends over all its sends; lagged_p99, lagged_p999: they were at
    least 1% (0.1%) of all sends, so its lateness alone could have moved that percentile (None: the point
    predates them). overloaded: the achieved rate fell over 1% below the offered one (the server's). errors:
    every request that got no reply, by any kind."""

    offered_rate: float
    achieved_rate: float
    achieved_share: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_p999_ms: float
    latency_max_ms: float
    uncorrected_p50_ms: float
    uncorrected_p99_ms: float
    uncorrected_p999_ms: float
    requests: int
    replies: int
    errors: int
    lagged: bool
    overloaded: bool
    server_cpu_s: float
    server_cpu_busy_pct: float
    server_cpu_us_per_reply: float | None
    client_cpu_pct: float | None
    connections: int
    duration_s: float
    elapsed_s: float
    late_share: float | None = None
    lagged_p99: bool | None = None
    lagged_p999: bool | None = None


FIGURES: dict[str, type[DeadFigures] | type[OpenFigures] | type[PipeFigures]] = {
    DEAD: DeadFigures, DEAD_OPEN: OpenFigures, PIPETEST: PipeFigures}


def figure_names(sweep: str) -> set[str]:
    """The fields of a sweep's figures: what a report may plot."""
    return {f.name for f in fields(FIGURES[sweep])}


@dataclass
class Point:
    """One measured, failed or skipped point: the sweep, variant, series and level it belongs to, what became
    of it, its figures (None unless measured), the checks' flags and readings, and the sections of its
    programs (PROGRAMS)."""

    id: str
    sweep: str
    variant: str
    series: Series
    repetition: int
    x: int  # the level: dead connections, or pipes
    host_max: bool  # the level is the most this host allows, below the plan's
    started_at: str
    load: str | None = None  # the dead sweep's load generator
    walk: str | None = None  # pipetest's token walk as recorded (catalog.WALKS; None: before walks, stay)
    dead_holders: int = 0  # dead sweep: helper processes holding the dead connections (0: the server itself)
    overlap: bool = False  # dead sweep: a holders series' level measured without holders (not on its line)
    status: str = OK
    reason: str | None = None
    ended_at: str | None = None
    figures: DeadFigures | OpenFigures | PipeFigures | None = None
    flags: dict[str, bool | None] = field(default_factory=dict)  # None: the check could not tell
    checks: dict = field(default_factory=dict)
    programs: dict[str, dict] = field(default_factory=dict)
    # The kernel cost anatomy of a dead point (None: not measured; its key is then absent from the file).
    anatomy: AnatomyFigures | Unavailable | None = None
    memory: MemoryFigures | Unavailable | None = None
    # Measured in a guest (--kernels): the guest as guest.qemu recorded it (kernel facts, accelerator, vCPUs,
    # memory, QEMU's version); None on the host's own kernel.
    guest: dict | None = None
    # Who else held the point's CPUs while it was measured, by role (ROLES_WATCHED: the server's CPUs, the
    # clients'); Unavailable where nothing here can see them (a guest, a remote engine). None: not watched
    # (a point from before the watch); its key is then absent from the file.
    interference: dict[str, Interference] | Unavailable | None = None
    # An open-loop point's tail with and without the third parties' stretches on the server's CPUs;
    # Unavailable where they are not known. None: not taken (a closed-loop point, or from before).
    tail: Tail | Unavailable | None = None

    def to_json(self) -> dict:
        record: dict = {"schema_version": SCHEMA_VERSION, "id": self.id, "sweep": self.sweep,
                        "variant": self.variant, "backend": self.series.backend,
                        "kernel": self.series.kernel or None, "repetition": self.repetition,
                        "x": self.x, "host_max": self.host_max, "status": self.status, "reason": self.reason,
                        "started_at": self.started_at, "ended_at": self.ended_at,
                        "figures": _figures_json(self.figures) if self.figures else {}, "flags": self.flags,
                        "checks": self.checks}
        if self.sweep in DEAD_SWEEPS:
            record.update(server_kind=self.series.server, load=self.load, dead=self.x)
            # Fields added later are written only when they differ from what a point before them meant.
            if self.dead_holders:
                record["dead_holders"] = self.dead_holders
            if self.overlap:
                record["overlap"] = True
        else:
            record["pipes"] = self.x
            if self.walk is not None:
                record["walk"] = self.walk
        record.update((name, self.programs[name]) for name in PROGRAMS if name in self.programs)
        for name, value in (("anatomy", self.anatomy), ("memory", self.memory)):
            if value is not None:
                record[name] = asdict(value) if isinstance(value, MemoryFigures) else value.to_json()
        if self.guest is not None:
            record["guest"] = self.guest
        if isinstance(self.interference, Unavailable):
            record["interference"] = self.interference.to_json()
        elif self.interference is not None:
            record["interference"] = {role: found.to_json() for role, found in self.interference.items()}
        if self.tail is not None:
            record["tail"] = self.tail.to_json()
        return record

    @classmethod
    def from_json(cls, data: dict, where: object) -> Point:
        """A point from its file's record, upgraded and checked against json_schema(POINT); where names the file
        in errors."""
        try:
            sweep = data["sweep"]
            if sweep not in FIGURES:
                raise ValueError(f"unknown sweep {sweep!r}")
            figures = data.get("figures") or None
            walk = data.get("walk")
            if sweep == PIPETEST and walk not in (None, *WALKS):
                raise ValueError(f"unknown walk {walk!r}")
            line = Series(data.get("server_kind") or DEFAULT_SERVER, str(data["backend"]), "",
                          str(data.get("kernel") or ""))
            return cls(id=str(data["id"]), sweep=sweep, variant=str(data["variant"]),
                       series=line.walking(walk or STAY) if sweep == PIPETEST else line, walk=walk,
                       dead_holders=int(data.get("dead_holders") or 0), overlap=bool(data.get("overlap")),
                       repetition=int(data["repetition"]), x=int(data["x"]), host_max=bool(data.get("host_max")),
                       started_at=data["started_at"], load=data.get("load"), status=data["status"],
                       reason=data.get("reason"), ended_at=data.get("ended_at"),
                       figures=FIGURES[sweep](**figures) if figures else None, flags=data.get("flags") or {},
                       checks=data.get("checks") or {},
                       programs={name: data[name] for name in PROGRAMS if isinstance(data.get(name), dict)},
                       anatomy=_measured(AnatomyFigures, data.get("anatomy")),
                       memory=_measured(MemoryFigures, data.get("memory")), guest=data.get("guest"),
                       interference=_interference(data.get("interference")),
                       tail=_tail(data.get("tail")))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where} is not a point this epollbench wrote: {e}") from None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def set_checks(self, taken: dict) -> None:
        """The hygiene checks' result (host.checks.PointChecks.finish): {"flags": ..., "checks": ...}."""
        self.flags, self.checks = taken["flags"], taken["checks"]


@dataclass(frozen=True)
class Plan:
    """What a run measures: its profile as the flags changed it (run.plan), then adapted to the host's limits
    level by level when it runs."""

    profile: str
    sweeps: tuple[str, ...]
    variants: tuple[str, ...]
    backends: tuple[str, ...]  # ephttpd's, which pipetest runs too
    dead: tuple[int, ...]
    pipes: tuple[int, ...]
    repeat: int
    duration_s: float
    active_connections: int = 100
    msgsize: int = 128
    add_host_max: bool = True
    # servers: the servers under test; series: the dead sweep's lines, each server's backends in turn.
    servers: tuple[str, ...] = (DEFAULT_SERVER,)
    series: tuple[Series, ...] = ()
    server_image: str | None = None
    server_cmd: str | None = None
    server_port: int | None = None
    load: str = HTTPERF
    # The kernel cost anatomy at every dead point: True on, False --no-anatomy, None the run's
    # record predates it.
    anatomy: bool | None = None
    walks: tuple[str, ...] = (STAY,)  # pipetest's token walks (catalog.WALKS)
    # The open-loop dead sweep (DEAD_OPEN): its variants and seconds of load per point, its offered rate (in
    # requests/s, or as a share of the lowest 0-dead capacity among its lines: exactly one of the two is set)
    # and openload's connections. Its lines, levels and repetitions are the dead sweep's.
    open_variants: tuple[str, ...] = ("up",)
    open_duration_s: float = 5.0
    open_rate: float | None = None
    open_rate_share: float | None = 0.5
    open_connections: int = 100
    # --kernels: each line measured once per kernel, each in a guest booted with it (guest/), by the
    # accelerator --accel chose (auto, kvm, tcg); () measures on the host's own kernel.
    kernels: tuple[str, ...] = ()
    accel: str = "auto"
    kernel_modules: str | None = None  # --kernel-modules: the modules of a kernel file among the kernels

    def kernel_names(self) -> tuple[str, ...]:
        """The kernels the lines are measured on, by name (catalog.kernel_name); ("",): the host's own."""
        return tuple(kernel_name(k) for k in self.kernels) or ("",)

    def to_dict(self) -> dict:
        # A dead line's series is its server and backend (a pipetest line's walk is the plan's walks).
        return {**asdict(self), "series": [{"server": s.server, "backend": s.backend} for s in self.series]}

    def levels(self, sweep: str) -> tuple[int, ...]:
        """The levels a sweep steps through: dead connections, or pipes."""
        return {DEAD: self.dead, DEAD_OPEN: self.dead, PIPETEST: self.pipes}[sweep]

    def variants_of(self, sweep: str) -> tuple[str, ...]:
        """The variants a sweep runs in: the open-loop sweep its own."""
        return self.open_variants if sweep == DEAD_OPEN else self.variants

    def active(self, sweep: str) -> int:
        """The connections a sweep's load keeps busy beside the dead ones."""
        return self.open_connections if sweep == DEAD_OPEN else self.active_connections

    def load_of(self, sweep: str) -> str | None:
        """The load generator of a sweep's points (None: pipetest has none)."""
        return {DEAD: self.load, DEAD_OPEN: OPEN}.get(sweep)

    @classmethod
    def from_dict(cls, recorded: dict) -> Plan:
        """A plan as run.json records it (upgrade() brings older records to this form first)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
        values["series"] = tuple(Series(**s) for s in values.get("series", ()))
        return cls(**values)


@dataclass
class RunRecord:
    """run.json: the run's plan, where it ran and the metadata captured at its start, how far it got."""

    run_id: str
    profile: str
    status: str  # preparing, running, complete, interrupted, failed
    started_at: str
    command_line: list[str]
    plan: Plan
    ended_at: str | None = None
    error: str | None = None
    engines: dict | None = None  # the engines' URLs and the server's address; None before two engines existed
    metadata: dict = field(default_factory=dict)  # captured at the start: host.metadata.collect
    cpusets: dict = field(default_factory=dict)  # variant -> {"server", "clients"}
    preflight: list[dict] = field(default_factory=list)  # host settings below what the plan needs
    limits: dict = field(default_factory=dict)  # the fd limit, and the most each line may reach under it
    tuned: list[dict] = field(default_factory=list)  # what --tune-host changed
    # Whether the run was started with --tune-host: a resume tunes the host as it did (None: the run was
    # recorded before run.json kept it).
    tune_host: bool | None = None
    timings: dict = field(default_factory=dict)  # seconds spent on images, points and the report
    harness: dict | None = None  # the process running it (process.this_process), for `invoke clean`
    error_traceback: str | None = None  # logs/traceback.txt, when an exception ended the run
    # The open-loop sweep's offered rate and where it came from (run/openloop.py: offered_rate); None without it.
    open_rate: dict | None = None

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **asdict(self), "plan": self.plan.to_dict()}

    @classmethod
    def from_json(cls, data: dict, where: object) -> RunRecord:
        """The record from run.json's (version-2) form; where names the file in errors."""
        values = {k: v for k, v in data.items() if k != "schema_version"}
        try:
            values["plan"] = Plan.from_dict(values["plan"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where} is not a run record this epollbench wrote: {e}") from None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json_atomic(path: Path, data: dict, overwrite: bool = False) -> None:
    """Writes data to path through a temporary file and rename; refuses to replace a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: results are never overwritten")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_schema(kind: str) -> dict:
    """The JSON Schema of a run record (RUN) or a point file (POINT) in this version's form."""
    version = {"const": SCHEMA_VERSION}
    if kind == RUN:
        body = schema.of_dataclass(RunRecord)
        body["properties"] = {"schema_version": version, **body["properties"]}
        title = "epollbench run.json"
    elif kind == POINT:
        body = schema.of_dataclass(Point, skip=("series", "figures", "programs"))
        unmeasured = {"type": "object", "maxProperties": 0}
        body["properties"] = {
            "schema_version": version, **body["properties"],
            "backend": {"type": "string"}, "server_kind": {"type": "string"},
            "kernel": {"type": ["string", "null"]},
            "dead": {"type": "integer"}, "pipes": {"type": "integer"},
            "figures": {"anyOf": [*(schema.of_dataclass(f) for f in FIGURES.values()), unmeasured,
                                  {"type": "null"}]},
            **{name: {"type": ["object", "null"]} for name in PROGRAMS}}
        title = "epollbench points/<id>.json"
    else:
        raise ValueError(f"no schema for {kind}")
    body["required"] = ["schema_version", *body["required"],
                        *(["backend", "kernel", "figures"] if kind == POINT else [])]
    return {"$schema": schema.DIALECT, "title": f"{title}, schema_version {SCHEMA_VERSION}", **body}


_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}


def _check(data: dict, kind: str, where: object) -> None:
    if kind not in _VALIDATORS:
        _VALIDATORS[kind] = jsonschema.Draft202012Validator(json_schema(kind))
    error = jsonschema.exceptions.best_match(_VALIDATORS[kind].iter_errors(data))
    if error is not None:
        raise UserError(f"{where} does not match the {kind} schema of version {SCHEMA_VERSION} at "
                        f"{error.json_path}: {error.message}")


def read_run(path: Path) -> RunRecord:
    data = read_json(path, RUN)
    _check(data, RUN, path)
    return RunRecord.from_json(data, path)


def read_point(path: Path) -> Point:
    data = read_json(path, POINT)
    _check(data, POINT, path)
    return Point.from_json(data, path)


def read_json(path: Path, kind: str) -> dict:
    """A run record or a point (kind: RUN, POINT or TUNING) in this version's form."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: not a JSON object")
    return upgrade(data, kind, path)
