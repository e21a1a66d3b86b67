"""What a sweep needs of its run (the Context), and how a point is named, begun and finished."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import anatomy, model
from ..model import Plan
from . import results
from .containers import Containers
from .neighbours import Watch
from .plan import Level, Line, measured_in
from .progress import Progress
from .servers import Choice
from .services import LOOPBACK


@dataclass
class Context:
    run: results.Run
    plan: Plan
    servers: Containers  # on the server's engine: the server under test, pipetest
    clients: Containers  # on the clients' engine: deadconn, httperf, wrk
    server_image: str
    client_image: str
    cpusets: dict
    fd_limit: int  # the server engine's
    progress: Progress
    choices: dict[str, Choice]  # by kind: the servers under test
    server_address: str = LOOPBACK
    client_source: str | None = None  # deadconn's source address, for a server beyond loopback
    # The kernel cost anatomy's perf, found and checked once per run (run/instruments.py); None: --no-anatomy.
    anatomy: anatomy.Instruments | None = None
    server_local: bool = True  # the server's engine runs on this machine: its processes are ours to watch
    open_rate: float | None = None  # the open-loop sweep's offered rate, requests/s (openloop.offered_rate)
    in_guest: InGuest | None = None  # the guest the engines run in (--kernels); None: the host
    watch: Watch | None = None  # how a point's CPUs are watched for others' tasks (neighbours.py); None: not


@dataclass(frozen=True)
class InGuest:
    """A guest a sweep runs in: the lines it measures (its kernel's, of its vCPUs: plan.guest_vcpus), what each
    point records of it (model.Point.guest), and why it can no longer measure (None while it can)."""

    kernel: str
    vcpus: int
    facts: dict
    failure: Callable[[], str | None]

    def measures(self, line: Line) -> bool:
        return measured_in(line, self.kernel, self.vcpus)


def base_point(ctx: Context, line: Line, level: Level) -> model.Point:
    """The point a line records at a level, begun now."""
    return new_point(ctx.plan, line, level, ctx.in_guest.facts if ctx.in_guest else None)


def new_point(plan: Plan, line: Line, level: Level, guest: dict | None = None) -> model.Point:
    """The point a line of the plan records at a level, begun now (guest: what it records of its guest)."""
    return model.Point(id=line.point_id(level), sweep=line.sweep, variant=line.variant, series=line.series,
                       repetition=line.repetition, x=level.value, host_max=level.host_max,
                       started_at=model.utc_now(), load=plan.load_of(line.sweep),
                       walk=line.series.walk or None if line.sweep == model.PIPETEST else None,
                       dead_holders=level.holders, overlap=level.overlap, guest=guest)


def finish(ctx: Context, point: model.Point, status: str = model.OK, reason: str | None = None) -> None:
    point.status, point.reason, point.ended_at = status, reason, model.utc_now()
    ctx.run.write_point(point)
    ctx.progress.advance(point)
