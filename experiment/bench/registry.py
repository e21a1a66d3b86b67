"""The bench's items, each named once in ITEMS, as images/ev names its backends in one table: what
`./run bench --only NAME` accepts and its help lists, the order they run and print in, and where each
one's code is. Item NAME is measured by experiment.bench.items.NAME's run(context) and printed by
experiment.bench.show.NAME(console, section).

This module imports none of them until an item runs, so that tasks.py can read the table cheaply."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from .launch import Cpus


@dataclass
class Context:
    """What every item is given: the CPUs, the host's fd limit, the results folder, whether to leave out the
    timed quick profile, and the sections measured before it (item 8 reads item 4's)."""

    cpus: Cpus
    fd_limit: int
    results: Path
    skip_harness: bool = False
    sections: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    name: str        # what --only names, and the module of experiment.bench.items that measures it
    number: int      # as the README and the printed titles number it
    key: str         # its section of the results JSON
    what: str        # one line for --help
    # Run while the loads' loopback is exempt from connection tracking, where this process may exempt it.
    untracked: bool = False
    targets: dict[str, float] = field(default_factory=dict)  # what its figures are printed against

    def run(self, context: Context) -> Any:
        return importlib.import_module(f"{__package__}.items.{self.name}").run(context)

    def show(self, console: Console, section: Any) -> None:
        getattr(importlib.import_module(f"{__package__}.show"), self.name)(console, section)


# In the order they run: those under untracked loopback first, in one stretch; item 8 after item 4.
ITEMS = (
    Item("nginx", 1, "versus_nginx", "ephttpd vs Debian's nginx, server CPU per reply under wrk and httperf",
         untracked=True, targets={"ephttpd_vs_nginx_cpu_ratio": 0.5}),
    Item("capacity", 2, "capacity", "ephttpd's capacity per backend on one CPU at 0 and the most dead",
         untracked=True, targets={"capacity_kept_at_most_dead": 0.95}),
    Item("completion", 7, "completion", "io_uring-recv vs io_uring vs epoll, CPU and system calls per reply",
         untracked=True),
    Item("seccomp", 9, "seccomp", "native vs the server container with our seccomp filter and unconfined",
         untracked=True),
    Item("tail", 11, "tail", "whose open-loop tail: p99 at 0 and the most dead with third parties' stretches left "
         "out, and the capture's own cost", untracked=True),
    Item("walk", 10, "pipe_walk", "where pipetest's time goes as the pipes grow, each token walk"),
    Item("deadconn", 3, "deadconn", "deadconn's opening rate, loopback tracked and untracked",
         targets={"deadconn_per_s": 40_000}),
    Item("pipetest", 5, "pipetest", "pipetest's passes/s per backend at 10 and the most pipes"),
    Item("generators", 6, "generators", "wrk's, httperf's and openload's rate and own CPU per request",
         targets={"openload_per_s": 100_000}),
    Item("harness", 4, "harness", "the wall time of a quick profile run, per phase",
         targets={"quick_profile_s": 600, "quick_measuring_share": 0.8}),
    Item("anatomy", 8, "anatomy", "the kernel cost anatomy's perturbation and added wall time"),
)
TARGETS = {name: value for item in ITEMS for name, value in item.targets.items()}


def names() -> list[str]:
    return [item.name for item in ITEMS]


def select(only: str | None) -> list[Item]:
    """Every item, or the one named; a UserError naming them all for any other name."""
    if only is None:
        return list(ITEMS)
    chosen = [item for item in ITEMS if item.name == only]
    if not chosen:
        raise UserError(f"--only {only!r} is not an item of the bench; the items are {', '.join(names())}")
    return chosen


def help_text() -> str:
    """--only's help: every item's name, number and what it measures."""
    return "run one item alone: " + "; ".join(f"{item.name} (item {item.number}, {item.what})" for item in ITEMS)
