"""What a run measures: profiles, the flags that override them, and how a plan adapts to the host."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import catalog
from ..catalog import DEFAULT_SERVER, FD_SETSIZE, VARIANTS, WALKS, Series
from ..errors import UserError
from ..guest.accel import MODES as ACCEL_MODES
from ..host import machine
from ..model import DEAD, DEAD_OPEN, PIPETEST, SWEEPS, Plan
from .loads import OPEN_MAX_RATE
from .servers import Choice, choose

# The 2002 study's dead-connection steps and pipetest sizes (lse-2002.json).
PAPER_DEAD = (0, 1000, 5000, 10000, 25000, 50000, 60000)
PAPER_PIPES = (10, 100, 1000, 10000, 16000)
# Pipetest holds two descriptors a pipe, plus stdio and the backend's own.
PIPETEST_FD_OVERHEAD = 16
# openload's descriptors beside its connections (RESERVED_FDS in images/openload/openload.c).
OPENLOAD_FD_OVERHEAD = 16
# The open-loop sweep's seconds of load per point in the profiles: short, so that quick stays within its
# 10 minutes (at ~60k requests/s a 4-second point still has ~240k samples, 240 beyond its p99.9).
OPEN_DURATION_S = 4.0


def choices(plan: Plan) -> dict[str, Choice]:
    """The Choice of each server the plan puts under test, by kind."""
    return {kind: Choice(kind, plan.server_image, plan.server_cmd, plan.server_port)
            if kind == catalog.CUSTOM else Choice(kind) for kind in plan.servers}


PROFILES = {
    "quick": Plan(profile="quick", sweeps=SWEEPS, variants=VARIANTS, backends=("poll", "epoll"),
                  dead=(0, 1000, 5000, 10000, 60000), pipes=(10, 100, 1000, 10000), repeat=1, duration_s=10,
                  series=tuple(Series(DEFAULT_SERVER, b) for b in ("poll", "epoll")), anatomy=True, walks=WALKS,
                  open_variants=("up",), open_duration_s=OPEN_DURATION_S),
    "paper": Plan(profile="paper", sweeps=SWEEPS, variants=VARIANTS, backends=catalog.EPHTTPD_BACKENDS,
                  dead=PAPER_DEAD, pipes=PAPER_PIPES, repeat=3, duration_s=10,
                  series=tuple(Series(DEFAULT_SERVER, b) for b in catalog.EPHTTPD_BACKENDS), anatomy=True,
                  walks=WALKS, open_variants=("up",), open_duration_s=OPEN_DURATION_S),
}


def _choices(value: str, valid: tuple[str, ...], flag: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    bad = [x for x in items if x not in valid]
    if bad or not items:
        raise UserError(f"{flag} {value!r}: {'unknown ' + ', '.join(bad) if bad else 'empty'}; "
                        f"valid: {','.join(valid)}")
    return tuple(dict.fromkeys(items))


def _counts(value: str, flag: str, minimum: int) -> tuple[int, ...]:
    try:
        items = tuple(sorted({int(x) for x in value.split(",") if x.strip()}))
    except ValueError:
        raise UserError(f"{flag} {value!r}: give comma-separated whole numbers, e.g. 0,1000,5000") from None
    if not items or items[0] < minimum:
        raise UserError(f"{flag} {value!r}: give comma-separated whole numbers >= {minimum}")
    return items


def make_plan(profile: str = "quick", sweeps: str | None = None, variants: str | None = None,
              backends: str | None = None, dead: str | None = None, pipes: str | None = None,
              repeat: int | None = None, duration: float | None = None, server: str | None = None,
              server_image: str | None = None, server_cmd: str | None = None, server_port: int | str | None = None,
              load: str | None = None, anatomy: bool = True, walks: str | None = None,
              rate: str | float | None = None, connections: str | int | None = None, kernels: str | None = None,
              accel: str | None = None, kernel_modules: str | None = None) -> Plan:
    """The profile's plan with each given flag replacing its part; invalid values are UserErrors.

    server may name several servers (ephttpd,nginx): each runs the given backends it has (a server of one's
    own: its own), or by default ephttpd the profile's and any other all of its own. Pipetest does not
    involve the server: it runs ephttpd's backends, and only in a run that has ephttpd. anatomy False
    (--no-anatomy): no kernel cost anatomy at the dead points.

    load "open" runs the dead sweep open loop: its points are the dead-open sweep's, in the dead sweep's
    variants. rate and connections are the open loop's (parse_rate; openload's connections)."""
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r}: valid: {','.join(PROFILES)}")
    plan = _with_servers(PROFILES[profile], choose(server, server_image, server_cmd, server_port), backends)
    plan = _with_sweeps(plan, sweeps, variants, walks)
    plan = _with_load(plan, load)
    plan = _with_open_loop(plan, rate, connections)
    plan = _with_levels(plan, dead, pipes)
    plan = _with_run_length(plan, repeat, duration)
    plan = _with_kernels(plan, kernels, accel, kernel_modules)
    return replace(plan, anatomy=anatomy)


def _with_servers(plan: Plan, chosen: tuple[Choice, ...], backends: str | None) -> Plan:
    """The chosen servers under test and their lines (a server of one's own as given); without ephttpd, the
    dead sweep alone."""
    kinds = tuple(c.kind for c in chosen)
    own = next((c for c in chosen if c.kind == catalog.CUSTOM), Choice(catalog.CUSTOM))
    per_server = _backends_per_server(plan, chosen, backends)
    changes: dict[str, Any] = {"servers": kinds, "series": tuple(Series(k, b) for k in kinds for b in per_server[k]),
                               "backends": per_server.get(DEFAULT_SERVER, ()), "server_image": own.image,
                               "server_cmd": own.command, "server_port": own.port}
    if DEFAULT_SERVER not in kinds:
        changes["sweeps"] = (DEAD,)
    return replace(plan, **changes)


def _backends_per_server(plan: Plan, chosen: tuple[Choice, ...], backends: str | None) -> dict[str, tuple[str, ...]]:
    """Each chosen server's backends: of --backends those it has, or by default ephttpd the profile's and any
    other all of its own."""
    if backends is None:
        return {c.kind: plan.backends if c.kind == DEFAULT_SERVER else c.backends for c in chosen}
    asked = _choices(backends, tuple(dict.fromkeys(b for c in chosen for b in c.backends)), "--backends")
    # A server of one's own has one backend, its own, which no flag chooses.
    per_server = {c.kind: c.backends if c.kind == catalog.CUSTOM else tuple(b for b in asked if b in c.backends)
                  for c in chosen}
    for kind, found in per_server.items():
        if not found:
            raise UserError(f"--backends {backends}: the {kind} server has none of these; its backends: "
                            f"{','.join(catalog.SERVERS[kind].backends)}")
    return per_server


def _with_sweeps(plan: Plan, sweeps: str | None, variants: str | None, walks: str | None) -> Plan:
    """--sweeps (pipetest only with ephttpd), --variants (the open loop's too) and --walks."""
    changes: dict[str, Any] = {}
    if sweeps is not None:
        changes["sweeps"] = _choices(sweeps, SWEEPS, "--sweeps")
        if DEFAULT_SERVER not in plan.servers and PIPETEST in changes["sweeps"]:
            raise UserError(f"--sweeps {sweeps}: pipetest does not involve the server, so it runs with ephttpd "
                            f"only; use --sweeps dead, or add ephttpd to --server")
    if variants is not None:
        changes["variants"] = changes["open_variants"] = _choices(variants, VARIANTS, "--variants")
    if walks is not None:
        changes["walks"] = _choices(walks, WALKS, "--walks")
    return replace(plan, **changes)


def _with_load(plan: Plan, load: str | None) -> Plan:
    """--load; the open load runs the dead sweep open loop instead, as the closed one would have run."""
    if load is None:
        return plan
    if load not in catalog.LOADS:
        raise UserError(f"--load {load!r}: give one load generator; valid: {','.join(catalog.LOADS)}")
    if load != catalog.OPEN:
        return replace(plan, load=load)
    return replace(plan, load=load, sweeps=tuple(dict.fromkeys(DEAD_OPEN if s == DEAD else s for s in plan.sweeps)),
                   open_variants=plan.variants)


def _with_open_loop(plan: Plan, rate: str | float | None, connections: str | int | None) -> Plan:
    """--rate and --connections, which only the open loop takes."""
    for flag, given in (("--rate", rate), ("--connections", connections)):
        if given is not None and DEAD_OPEN not in plan.sweeps:
            raise UserError(f"{flag} {given}: only the open-loop load takes it: add --load open (or dead-open "
                            "to --sweeps)")
    changes: dict[str, Any] = {}
    if rate is not None:
        changes["open_rate"], changes["open_rate_share"] = parse_rate(rate)
    if connections is not None:
        changes["open_connections"] = parse_connections(connections, machine.fd_hard_limit())
    return replace(plan, **changes)


def _with_levels(plan: Plan, dead: str | None, pipes: str | None) -> Plan:
    """--dead and --pipes: those levels, without the host's maximum added."""
    changes: dict[str, Any] = {}
    if dead is not None:
        changes["dead"] = _counts(dead, "--dead", 0)
        changes["add_host_max"] = False
    if pipes is not None:
        changes["pipes"] = _counts(pipes, "--pipes", 1)
        changes["add_host_max"] = False
    return replace(plan, **changes)


def _with_run_length(plan: Plan, repeat: int | None, duration: float | None) -> Plan:
    """--repeat and --duration (the open loop's points too)."""
    changes: dict[str, Any] = {}
    if repeat is not None:
        if not 1 <= repeat <= 100:
            raise UserError(f"--repeat {repeat}: give a whole number from 1 to 100")
        changes["repeat"] = repeat
    if duration is not None:
        if not 1 <= duration <= 600:
            raise UserError(f"--duration {duration}: give seconds from 1 to 600")
        changes["duration_s"] = changes["open_duration_s"] = duration
    return replace(plan, **changes)


def _with_kernels(plan: Plan, kernels: str | None, accel: str | None, kernel_modules: str | None) -> Plan:
    """--kernels (each line measured once per kernel, each in a guest), --accel and --kernel-modules, which only
    a run with --kernels takes. The items are checked against the mirror when the run starts (guest/kernels)."""
    if kernels is None:
        for flag, given in (("--accel", accel), ("--kernel-modules", kernel_modules)):
            if given is not None:
                raise UserError(f"{flag} {given}: only a run in guests takes it: add --kernels (e.g. 6.1,7.2)")
        return plan
    items = tuple(k.strip() for k in kernels.split(",") if k.strip())
    names = [catalog.kernel_name(k) for k in items]
    if not items or len(set(names)) < len(names):
        raise UserError(f"--kernels {kernels!r}: give distinct kernels separated by commas, e.g. 6.1,6.12,7.2 "
                        "(a Debian version, path/to/bzImage, or host)")
    if accel is not None and accel not in ACCEL_MODES:
        raise UserError(f"--accel {accel!r}: give {', '.join(ACCEL_MODES)}")
    if kernel_modules is not None and not any("/" in k for k in items):
        raise UserError(f"--kernel-modules {kernel_modules}: it holds the modules of a kernel file given to "
                        "--kernels (path/to/bzImage), and none is given")
    if outside := set(plan.sweeps) - {DEAD, PIPETEST}:
        raise UserError(f"--kernels measures the dead sweep and pipetest; not {', '.join(sorted(outside))}"
                        ": drop --load open (or dead-open from --sweeps)")
    if plan.servers != (DEFAULT_SERVER,):
        raise UserError("--kernels measures ephttpd, the study's server: drop --server")
    return replace(plan, kernels=items, accel=accel or "auto", kernel_modules=kernel_modules)


def parse_rate(value: str | float) -> tuple[float | None, float | None]:
    """--rate: requests/s (50000) as (rate, None), or a share of the lowest 0-dead capacity (0.5x) as (None, 0.5)."""
    text = str(value).strip().lower()
    share = text.endswith("x")
    try:
        number = float(text[:-1] if share else text)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise UserError(f"--rate {value}: give requests per second above 0 (e.g. 50000), or a share of the "
                        "capacity at 0 dead connections (e.g. 0.5x)")
    if share:
        return None, number
    if number > OPEN_MAX_RATE:
        raise UserError(f"--rate {value}: openload offers at most {OPEN_MAX_RATE:g} requests/s: give less")
    return number, None


def parse_connections(value: str | int, fd_limit: int) -> int:
    """--connections: openload's keep-alive connections, at least 1 and within the open-file limit."""
    try:
        count = int(str(value).strip())
    except ValueError:
        raise UserError(f"--connections {value}: give a whole number of connections, at least 1") from None
    if count < 1:
        raise UserError(f"--connections {value}: give at least 1 connection")
    most = fd_limit - OPENLOAD_FD_OVERHEAD
    if count > most:
        raise UserError(f"--connections {value}: more than the open-file limit ({fd_limit} per process) allows "
                        f"openload; give at most {most}, or raise the limit (ulimit -Hn)")
    return count


@dataclass(frozen=True)
class Level:
    """One x value of a sweep: run it, or skip it and say why."""

    value: int
    skip_reason: str | None = None
    host_max: bool = False
    holders: int = 0  # helper processes holding the dead connections (ephttpd --dead-holders); 0: the server
    overlap: bool = False  # a holders series' level measured the other way too: the server holding them


def max_dead(fd_limit: int, backend: str, active: int) -> int:
    """The most dead connections one server process can hold next to the active load, as a level."""
    most = catalog.dead_capacity(fd_limit, active, backend)
    # Round large limits to a readable step: 19,500 rather than 19,836.
    return most // 500 * 500 if most > 2000 else most


def max_pipes(fd_limit: int, backend: str) -> int:
    limit = catalog.backend(backend).max_descriptors(fd_limit)
    return max(0, (limit - PIPETEST_FD_OVERHEAD) // 2)


def dead_levels(plan: Plan, fd_limit: int, backend: str, sweep: str = DEAD) -> list[Level]:
    """The levels of a dead sweep's line (the open-loop sweep's load keeps its own connections busy)."""
    most = max_dead(fd_limit, backend, plan.active(sweep))
    below_fd_setsize = most < catalog.dead_capacity(fd_limit, plan.active(sweep))
    why = (f"{backend} watches descriptors below FD_SETSIZE={FD_SETSIZE}: at most {most} dead connections"
           if catalog.backend(backend).fd_setsize_bound and below_fd_setsize
           else f"host allows {fd_limit} open files per process: at most {most} dead connections per server")
    return _levels(plan.dead, most, why, plan.add_host_max)


def dead_holders(plan: Plan, fd_limit: int, series: Series) -> int:
    """The helper processes that hold a dead series' connections in the server's epoll set: none (the server
    holds them itself) unless the series' top planned level is more than one process may hold and its server
    can share its interest set (ephttpd on catalog.SHAREABLE). Then the whole series runs with holders, not
    only its upper levels, which would put a change of method inside one line."""
    if series.server != DEFAULT_SERVER or series.backend not in catalog.SHAREABLE or not plan.dead:
        return 0
    top = max(plan.dead)
    if top <= catalog.dead_capacity(fd_limit, plan.active_connections, series.backend):
        return 0
    return catalog.holders_for(top, fd_limit)


def overlap_level(plan: Plan, fd_limit: int, backend: str) -> int | None:
    """The level of a holders series measured both ways, to show the holders change nothing: the largest
    planned level above 0 that one process can hold (10,000 of the 2002 steps on a 20,000-file host)."""
    within = [v for v in plan.dead if 0 < v <= max_dead(fd_limit, backend, plan.active_connections)]
    return max(within, default=None)


def series_levels(plan: Plan, fd_limit: int, series: Series) -> list[Level]:
    """A dead series' levels: through holders when dead_holders() says so, with the overlapping level once
    more without them; else what one server process may hold (dead_levels)."""
    holders = dead_holders(plan, fd_limit, series)
    if not holders:
        levels = dead_levels(plan, fd_limit, series.backend)
        why_not = catalog.WHY_NOT_SHAREABLE.get(series.backend)
        if series.server == DEFAULT_SERVER and why_not and not catalog.backend(series.backend).fd_setsize_bound:
            levels = [replace(lv, skip_reason=f"{lv.skip_reason}; no helper processes can hold more for "
                                              f"{series.backend}: {why_not}") if lv.skip_reason else lv
                      for lv in levels]
        return levels
    most = holders * (fd_limit - catalog.HOLDER_RESERVE_FDS)
    why = (f"{holders} holders of at most {fd_limit - catalog.HOLDER_RESERVE_FDS} dead connections each "
           f"(ephttpd forks at most {catalog.MAX_HOLDERS})")
    levels = [Level(v, holders=holders) if v <= most else Level(v, skip_reason=why, holders=holders)
              for v in plan.dead]
    overlap = overlap_level(plan, fd_limit, series.backend)
    if overlap is not None:
        levels.append(Level(overlap, overlap=True))
    return sorted(levels, key=lambda level: (level.value, level.overlap))


def pipe_levels(plan: Plan, fd_limit: int, backend: str) -> list[Level]:
    if backend not in catalog.PIPETEST_BACKENDS:
        why = (f"{backend} is ephttpd's own serving loop, not an images/ev backend: pipetest, which waits through "
               "images/ev, has no such loop")
        return [Level(v, skip_reason=why) for v in plan.pipes]
    most = max_pipes(fd_limit, backend)
    why = (f"{backend} watches descriptors below FD_SETSIZE={FD_SETSIZE}: at most {most} pipes"
           if catalog.backend(backend).fd_setsize_bound
           else f"host allows {fd_limit} open files per process: at most {most} pipes")
    return _levels(plan.pipes, most, why, plan.add_host_max)


def _levels(wanted: tuple[int, ...], most: int, why: str, add_host_max: bool) -> list[Level]:
    levels = [Level(v) if v <= most else Level(v, skip_reason=why) for v in wanted]
    if add_host_max and any(level.skip_reason for level in levels) and most not in wanted:
        levels.append(Level(most, host_max=True))
    return sorted(levels, key=lambda level: (level.value, level.skip_reason is not None))


def point_id(sweep: str, variant: str, series: Series, repetition: int, x: int, overlap: bool = False) -> str:
    """A point's file name, e.g. dead-up-nginx-epoll-r1-d001000, pipetest-up-epoll-stride-r1-p000010 (a walk
    other than stay is in the series' slug), dead-up-epoll-r1-d010000-direct (a holders series' overlapping
    level measured without holders), dead-open-up-epoll-r1-d001000."""
    letter = "p" if sweep == PIPETEST else "d"
    return f"{sweep}-{variant}-{series.slug}-r{repetition}-{letter}{x:06d}" + ("-direct" if overlap else "")


@dataclass(frozen=True)
class Line:
    """One line as the run measures it: a series of one sweep, variant and repetition, over its levels (a dead
    line's levels may be run on more than one server: its holders' levels, then its overlapping level direct)."""

    sweep: str
    variant: str
    series: Series  # a pipetest line's names its walk
    repetition: int
    levels: tuple[Level, ...]

    @property
    def kernel(self) -> str:
        """The kernel it is measured on, by name ("": the host's own)."""
        return self.series.kernel

    def point_id(self, level: Level) -> str:
        """The id of the point this line records at that level."""
        return point_id(self.sweep, self.variant, self.series, self.repetition, level.value, level.overlap)

    @property
    def holders(self) -> int:
        """The helper processes holding the line's dead connections; 0: the server holds them."""
        return self.levels[0].holders if self.levels else 0

    @property
    def name(self) -> str:
        return f"{self.sweep} {self.variant} {self.series.label} r{self.repetition}"

    @property
    def label(self) -> str:
        """The name, and who holds the dead connections when a series has holders: "(4 holders)", or "(overlap,
        no holders)" on the line that measures the overlapping level with the server holding them."""
        return self.name + (f" ({self.holders} holders)" if self.holders else "") + \
            (" (overlap, no holders)" if self.levels and self.levels[0].overlap else "")

    def log_name(self, role: str) -> str:
        """The file of a container's output, e.g. dead-up-epoll-r1-direct.server.log."""
        suffix = "-direct" if self.levels and self.levels[0].overlap else ""
        return f"{self.sweep}-{self.variant}-{self.series.slug}-r{self.repetition}{suffix}.{role}.log"


def planned(plan: Plan, fd_limit: int) -> list[Line]:
    """Every line of the plan under this fd limit, in the order the run measures them: per kernel (--kernels;
    the host's own without), per variant the dead sweep's series, then pipetest's backends, each repetition of
    a backend with each walk; after all variants, the open loop's. The one place that order is written: the
    run, the dry run, the point count and the ETA go by it."""
    return [replace(line, series=line.series.on(kernel))
            for kernel in plan.kernel_names() for line in _planned_on_one_kernel(plan, fd_limit)]


def _planned_on_one_kernel(plan: Plan, fd_limit: int) -> list[Line]:
    repetitions = range(1, plan.repeat + 1)
    found = []
    for variant in plan.variants:
        if DEAD in plan.sweeps:
            found += [Line(DEAD, variant, series, r, tuple(series_levels(plan, fd_limit, series)))
                      for series in plan.series for r in repetitions]
        if PIPETEST in plan.sweeps:
            found += [Line(PIPETEST, variant, Series(catalog.EPHTTPD, backend, walk), r,
                           tuple(pipe_levels(plan, fd_limit, backend)))
                      for backend in plan.backends for r in repetitions for walk in plan.walks]
    if DEAD_OPEN in plan.sweeps:
        found += [Line(DEAD_OPEN, variant, series, r, tuple(dead_levels(plan, fd_limit, series.backend, DEAD_OPEN)))
                  for variant in plan.open_variants for series in plan.series for r in repetitions]
    return found


def guest_vcpus(line: Line) -> int:
    """The vCPUs of the guest a line of a --kernels run is measured in: one for pipetest's UP lines (the 2002
    UP pipetest was the same machine with CONFIG_SMP=n, and a kernel that sees one CPU is the nearest to it),
    two for the rest, so that UP places the server alone on vCPU 0 and the clients on vCPU 1."""
    return 1 if line.sweep == PIPETEST and line.variant == "up" else 2


def measured_in(line: Line, kernel: str, vcpus: int) -> bool:
    """Whether a line of a --kernels run is measured in the guest of that kernel and vCPUs."""
    return line.kernel == kernel and guest_vcpus(line) == vcpus


def count_points(plan: Plan, fd_limit: int, skipped: bool = False) -> int:
    """The points of the plan under this fd limit; with skipped, only those recorded as skipped."""
    return sum(1 for line in planned(plan, fd_limit) for level in line.levels if not skipped or level.skip_reason)
