"""The kernel cost anatomy of a point: where a server's time and memory go.

  window.py  one window on a running server under load: a cpu-clock profile (`perf record -g`), folded
             after the sweep (fold_profile), then system calls and context switches per reply (`perf stat`
             on syscall tracepoints)
  fold.py    a profile sample's category by its call chain, and the collapsed stacks
  memory.py  slab per dead connection from /proc/slabinfo at two dead levels, the server's RSS
  procs.py   the server's processes (its container's cgroup) and their context switches
  perf.py    finding, installing (Debian's linux-perf) and driving perf

The order of a point, for a caller:
  instruments = prepare()                      once per run: finds or installs perf, checks it works
  snap = memory.slab_snapshot(dead, pids)      at each dead level, settled, before the load
  ... the point's own measurement ...
  opened = start(instruments, pids, raw_dir)   right after it: perf record starting, disabled
  ... a load of the window's own starts meanwhile ...
  window = opened.measure(replies)             once it runs (measure() does both for a running load)
  result = window.finish()                     before the next measurement (perf stat's teardown)
  memory.per_dead(previous_level_snap, snap, memory.rss_bytes(pids))
  after the sweep: fold_profile(instruments, result.profile) for every point, then result.to_json()

Nothing here raises for a missing or refused perf or slabinfo: the caller records Unavailable(reason).
"""

from __future__ import annotations

from . import fold, memory, perf, procs
from .window import (
    Anatomy,
    Counts,
    Instruments,
    Opened,
    Profile,
    Unavailable,
    Window,
    fold_profile,
    measure,
    prepare,
    start,
)

__all__ = ["Anatomy", "Counts", "Instruments", "Opened", "Profile", "Unavailable", "Window", "fold", "fold_profile",
           "measure", "memory", "perf", "prepare", "procs", "start"]
