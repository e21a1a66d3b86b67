"""Host preflight for a planned sweep: the kernel limits that would silently cut the experiment short.

A dead-connection sweep holds tens of thousands of loopback connections open. Several host settings bound
that without an error anyone would see in a reply rate: the listen queue (somaxconn), the conntrack table
(full: SYNs are dropped), the ephemeral ports per source address (EADDRNOTAVAIL), the fd limits.
read_host_settings() reads them; assess() says which are too low for a plan, why, and how to fix each.
Raising them (--tune-host) is tuning.py's.

Connection tracking also costs on loopback: each connect creates a conntrack entry (deadconn opens fewer
connections per second in the host's network namespace than in one without conntrack) and a closed one keeps
it for 120 s. So loopback traffic that no raw-table rule exempts (conntrack.py reads the rules) is a finding
too.

The net.* settings belong to a network namespace: these are the host's. A container with its own network
namespace has its own copies (set them with `docker run --sysctl`); nf_conntrack_max is global.
"""

from __future__ import annotations

import math
import re
import resource
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import catalog
from .conntrack import NFT_TABLE, notrack_commands, read_loopback_conntrack

PROC_SYS = Path("/proc/sys")
SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
           "net.netfilter.nf_conntrack_max", "fs.file-max", "fs.nr_open", "net.ipv4.tcp_tw_reuse",
           "fs.epoll.max_user_watches", "fs.pipe-max-size")
MEM_AVAILABLE = "mem_available_bytes"
MEMINFO = Path("/proc/meminfo")
# Memory a dead connection costs the host, both ends and deadconn's share, with room to spare: an estimate
# (an idle loopback TCP socket with its file, and the few bytes it received, takes a few KiB a side).
BYTES_PER_CONNECTION = 16 * 1024
# Items in the server's epoll set beside the connections: its listener, wake-up pipe and a spare few; and
# the watches other epoll users of the same user (root) may hold meanwhile.
EPOLL_WATCH_SLACK = 4096
# deadconn's share of the ephemeral port range one source address may take to one destination
# (images/deadconn/deadconn.py, PORT_SHARE): it adds source addresses 127.0.0.2.. as the count grows.
DEADCONN_PORT_SHARE = 0.4

FD_HARD_LIMIT = "fd_hard_limit"
# fds the rest of the system holds, on top of both ends of every planned connection.
FILE_MAX_SLACK = 65536
# The lowest ephemeral port that keeps clear of the well-known and registered-by-convention ports.
LOWEST_EPHEMERAL_PORT = 1024
HIGHEST_PORT = 65535
LOOPBACK_CONNTRACK = "loopback_conntrack"


@dataclass(frozen=True)
class Finding:
    """One host setting too low for the plan: what it is, what is needed, why, and how to fix it."""

    setting: str
    value: int | list[int] | str | None
    needed: int | list[int] | str
    why: str
    fix: str
    tunable: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: the setting, its value against what is needed, why, and the fix."""
        return f"{self.setting} is {self.value}, needs {self.needed}: {self.why}; fix: {self.fix}"


# ---- reading the host --------------------------------------------------------------------------------------

def sysctl_path(name: str, proc_sys: Path = PROC_SYS) -> Path:
    return proc_sys / name.replace(".", "/")


def read_sysctl(name: str, proc_sys: Path = PROC_SYS) -> int | list[int] | None:
    """A sysctl's value: an int, a list of ints for one of several fields, None when it does not exist."""
    try:
        return parse_sysctl(sysctl_path(name, proc_sys).read_text())
    except FileNotFoundError:
        return None


def parse_sysctl(text: str) -> int | list[int]:
    """A sysctl file's text as its value: an int, or a list of ints for one of several fields."""
    fields = [int(x) for x in text.split()]
    return fields[0] if len(fields) == 1 else fields


def read_host_settings(proc_sys: Path = PROC_SYS, meminfo: Path = MEMINFO) -> dict:
    """The sysctls in SYSCTLS (None when absent, e.g. nf_conntrack_max without the module loaded),
    ip_local_port_range as [low, high], this process's RLIMIT_NOFILE hard limit (None: unlimited) and
    whether loopback traffic is tracked (conntrack.read_loopback_conntrack)."""
    settings: dict[str, Any] = {name: read_sysctl(name, proc_sys) for name in SYSCTLS}
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    settings[FD_HARD_LIMIT] = None if hard == resource.RLIM_INFINITY else hard
    settings[LOOPBACK_CONNTRACK] = read_loopback_conntrack(settings["net.netfilter.nf_conntrack_max"] is not None)
    settings[MEM_AVAILABLE] = read_mem_available(meminfo)
    return settings


def read_mem_available(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None when unreadable)."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


# ---- what a plan needs -------------------------------------------------------------------------------------

def source_addresses_needed(settings: dict, dead: int) -> int:
    """The loopback source addresses deadconn spreads `dead` connections over: one per DEADCONN_PORT_SHARE of
    the ephemeral port range (so a plan's ports per address are what deadconn will use)."""
    port_range = settings.get("net.ipv4.ip_local_port_range")
    if not port_range or dead <= 0:
        return 1
    share = max(1, int(DEADCONN_PORT_SHARE * (port_range[1] - port_range[0] + 1)))
    return max(1, math.ceil(dead / share))


def fds_needed(dead: int, active_connections: int) -> int:
    """The fds one server process needs to hold `dead` dead and the active connections."""
    return dead + active_connections + catalog.SERVER_FD_OVERHEAD


def max_dead_connections(settings: dict, active_connections: int) -> int | None:
    """The most dead connections one server process can hold under the fd hard limit (None: no limit)."""
    hard = settings.get(FD_HARD_LIMIT)
    if hard is None:
        hard = settings.get("fs.nr_open")
    return None if hard is None else catalog.dead_capacity(hard, active_connections)


def _port_range_for(needed_ports: int, current: list[int]) -> list[int] | None:
    """A range of at least needed_ports ports that contains the current one, or None when none fits."""
    low, high = current
    if high - LOWEST_EPHEMERAL_PORT + 1 < needed_ports:
        high = HIGHEST_PORT
    low = min(low, high - needed_ports + 1)
    # The kernel wants the two ends of different parity (it splits connect() and bind() ports by parity).
    if low % 2 == high % 2:
        low -= 1
    return [low, high] if low >= LOWEST_EPHEMERAL_PORT else None


@dataclass(frozen=True)
class _Sweep:
    """What a planned sweep asks of the host: assess()'s arguments."""

    dead: int  # the most dead connections at a point
    active: int  # httperf's connections beside them
    source_addresses: int  # the client addresses the dead connections come from
    backlog: int  # the server's listen() backlog
    per_process_dead: int  # of the dead, the most one server process holds itself
    holder_pipe_bytes: int  # each dead-connection holder's channel pipe (0: no holders)

    @property
    def connections(self) -> int:
        return self.dead + self.active

    @property
    def server_fds(self) -> int:
        return fds_needed(self.per_process_dead, self.active)


# ---- the checks: one per setting, each a finding when it is too low ----------------------------------------

def _too_low(settings: dict, name: str, needed: int, why: str) -> Finding | None:
    """A finding when the sysctl name is below needed (an absent one is never too low)."""
    value = settings.get(name)
    if value is not None and value < needed:
        return Finding(name, value, needed, why, f"sysctl -w {name}={needed}")
    return None


def _accept_queue(settings: dict, sweep: _Sweep) -> Finding | None:
    return _too_low(settings, "net.core.somaxconn", sweep.backlog,
                    f"listen() silently cuts the server's backlog of {sweep.backlog} to somaxconn: connections "
                    "beyond the shorter accept queue are dropped and retried after a 1 s SYN timeout, a cost "
                    "the 2002 setup did not have")


def _syn_queue(settings: dict, sweep: _Sweep) -> Finding | None:
    return _too_low(settings, "net.ipv4.tcp_max_syn_backlog", sweep.backlog,
                    f"the SYN queue is shorter than the server's backlog of {sweep.backlog}: a burst of connects "
                    "beyond it falls back to SYN cookies or is dropped")


def _conntrack_table(settings: dict, sweep: _Sweep) -> Finding | None:
    # Closed connections keep their conntrack entry for nf_conntrack_tcp_timeout_time_wait (120 s), so the
    # previous point's connections can still be in the table while the next point opens its own.
    connections = sweep.connections
    return _too_low(settings, "net.netfilter.nf_conntrack_max", 2 * connections,
                    f"every loopback connection takes a conntrack entry and a closed one keeps it for 120 s: "
                    f"{connections} connections, plus the previous point's still closing, need "
                    f"{2 * connections}; once the table is full the kernel drops new connections' SYNs "
                    "('nf_conntrack: table full, dropping packet')")


def _open_files(settings: dict, sweep: _Sweep) -> Finding | None:
    connections = sweep.connections
    return _too_low(settings, "fs.file-max", 2 * connections + FILE_MAX_SLACK,
                    f"both ends of {connections} loopback connections are open files on this host, "
                    f"{2 * connections} in all, beside what the rest of the system holds")


def _epoll_watches(settings: dict, sweep: _Sweep) -> Finding | None:
    # Every dead connection is an item of one epoll set (the server's, or with holders the shared one).
    watches = sweep.connections + EPOLL_WATCH_SLACK
    return _too_low(settings, "fs.epoll.max_user_watches", watches,
                    f"an epoll set holds one watch per descriptor and a user may hold at most max_user_watches "
                    f"in all: {sweep.dead} dead and {sweep.active} active connections need {watches} with "
                    "slack; beyond it epoll_ctl fails with ENOSPC")


def _holder_pipes(settings: dict, sweep: _Sweep) -> Finding | None:
    if not sweep.holder_pipe_bytes:
        return None
    return _too_low(settings, "fs.pipe-max-size", sweep.holder_pipe_bytes,
                    f"each dead-connection holder's channel from the server is a pipe of {sweep.holder_pipe_bytes} "
                    "bytes (one 8-byte message per connection it may hold); F_SETPIPE_SZ refuses more than "
                    "pipe-max-size, and ephttpd refuses to start")


def _memory(settings: dict, sweep: _Sweep) -> Finding | None:
    available = settings.get(MEM_AVAILABLE)
    memory = sweep.connections * BYTES_PER_CONNECTION
    if available is None or available >= memory:
        return None
    return Finding(MEM_AVAILABLE, available, memory,
                   f"{sweep.connections} connections cost about {BYTES_PER_CONNECTION // 1024} KiB each on this "
                   "host (both ends and deadconn's share): short of memory, the kernel or deadconn fail or the "
                   "OOM killer ends a program mid-sweep",
                   "free memory, or plan fewer dead connections (--dead)", tunable=False)


def _fd_ceiling(settings: dict, sweep: _Sweep) -> Finding | None:
    return _too_low(settings, "fs.nr_open", sweep.server_fds,
                    f"setrlimit cannot raise a process's fd limit above fs.nr_open; the server needs "
                    f"{sweep.server_fds}")


def _time_wait_reuse(settings: dict, sweep: _Sweep) -> Finding | None:
    tw_reuse = settings.get("net.ipv4.tcp_tw_reuse")
    if tw_reuse != 0:
        return None
    return Finding("net.ipv4.tcp_tw_reuse", tw_reuse, 2,
                   "connections closed at the end of a point hold their source port in TIME_WAIT for 60 s: "
                   "without reuse, the next point's connects fail with EADDRNOTAVAIL (httperf: addrunavail) "
                   "once the ephemeral range is used up",
                   "sysctl -w net.ipv4.tcp_tw_reuse=2 (reuse for loopback only)")


def _ephemeral_ports(settings: dict, sweep: _Sweep) -> Finding | None:
    port_range = settings.get("net.ipv4.ip_local_port_range")
    if port_range is None:
        return None
    # httperf may share a source address with deadconn; without TIME_WAIT reuse a point needs the ports of the
    # one before it too.
    no_reuse = settings.get("net.ipv4.tcp_tw_reuse") == 0
    ports = (math.ceil(sweep.dead / sweep.source_addresses) + sweep.active) * (2 if no_reuse else 1)
    size = port_range[1] - port_range[0] + 1
    if size >= ports:
        return None
    why = (f"each connection from one source address to the server needs its own ephemeral port: "
           f"{sweep.dead} dead connections over {sweep.source_addresses} source address(es) plus "
           f"{sweep.active} active{', twice over without TIME_WAIT reuse,' if no_reuse else ''} need {ports} "
           f"ports, the range has {size}")
    wider = _port_range_for(ports, port_range)
    if wider is None:
        addresses = math.ceil(sweep.dead / (HIGHEST_PORT - LOWEST_EPHEMERAL_PORT + 1 - sweep.active))
        return Finding("net.ipv4.ip_local_port_range", port_range, ports, why,
                       f"not fixable by the port range alone: spread the dead connections over at least "
                       f"{addresses} source addresses (127.0.0.0/8)", tunable=False)
    return Finding("net.ipv4.ip_local_port_range", port_range, wider, why,
                   f"sysctl -w net.ipv4.ip_local_port_range='{wider[0]} {wider[1]}'")


def _loopback_tracking(settings: dict, sweep: _Sweep) -> Finding | None:
    return loopback_finding(settings.get(LOOPBACK_CONNTRACK))


def _fd_hard_limit(settings: dict, sweep: _Sweep) -> Finding | None:
    hard = settings.get(FD_HARD_LIMIT)
    if hard is None or hard >= sweep.server_fds:
        return None
    most = max_dead_connections(settings, sweep.active)
    return Finding(FD_HARD_LIMIT, hard, sweep.server_fds,
                   f"the server holds every dead and active connection as an fd: it needs {sweep.server_fds}, "
                   f"the hard RLIMIT_NOFILE is {hard}, so one server process holds at most {most} dead "
                   "connections",
                   f"not fixable by tuning: the hard limit is inherited from whoever started this process "
                   f"(ulimit -Hn, systemd LimitNOFILE, docker --ulimit); the sweep adapts and runs no point "
                   f"above {most} dead connections", tunable=False)


# In the order assess() lists the findings.
_CHECKS: tuple[Callable[[dict, _Sweep], Finding | None], ...] = (
    _accept_queue, _syn_queue, _conntrack_table, _open_files, _epoll_watches, _holder_pipes, _memory,
    _fd_ceiling, _time_wait_reuse, _ephemeral_ports, _loopback_tracking, _fd_hard_limit)


def assess(settings: dict, planned_dead_max: int, active_connections: int, source_addresses: int,
           backlog: int = catalog.LISTEN_BACKLOG, per_process_dead: int | None = None,
           holder_pipe_bytes: int = 0) -> list[Finding]:
    """The settings too low for a sweep up to planned_dead_max dead connections, spread over
    source_addresses client addresses, plus active_connections httperf connections. per_process_dead: the
    most of them one server process holds itself (default: all); the rest are held by ephttpd's helper
    processes (--dead-holders), each with a channel pipe of holder_pipe_bytes (0: no holders)."""
    if planned_dead_max < 0 or active_connections < 0 or source_addresses < 1:
        raise ValueError(f"assess needs planned_dead_max >= 0, active_connections >= 0, source_addresses >= 1 "
                         f"(got {planned_dead_max}, {active_connections}, {source_addresses})")
    sweep = _Sweep(planned_dead_max, active_connections, source_addresses, backlog,
                   planned_dead_max if per_process_dead is None else per_process_dead, holder_pipe_bytes)
    return [finding for check in _CHECKS if (finding := check(settings, sweep)) is not None]


def loopback_finding(state: dict | None) -> Finding | None:
    """A finding when loopback traffic is tracked (or may be: the rules were unreadable), None otherwise."""
    if not state or not state["conntrack_loaded"] or state["tracked"] is False:
        return None
    why = ("connection tracking is loaded and no raw-table rule exempts loopback (lo, 127.0.0.0/8): every "
           "connection the sweep opens creates a conntrack entry, which makes opening connections slower "
           "(deadconn opens fewer per second than in a network namespace without conntrack), and keeps it for "
           "120 s after closing, so back-to-back points can fill nf_conntrack_max and have their SYNs dropped")
    if state["tool"] is None:
        return Finding(LOOPBACK_CONNTRACK, "tracked", "untracked", why + "; neither iptables nor nft is installed",
                       f"apt-get install iptables, then run with --tune-host (or: {notrack_commands()})",
                       tunable=False)
    if state["tracked"] is None:
        return Finding(LOOPBACK_CONNTRACK, "unknown", "untracked",
                       f"{state['tool']} could not list the raw table ({state['error']}); if it is tracked, {why}",
                       f"run as root with --tune-host, or: {notrack_commands()}")
    return Finding(LOOPBACK_CONNTRACK, "tracked", "untracked", why,
                   f"run with --tune-host (adds these and removes them at the end), or: {notrack_commands()}"
                   if state["tool"] == "iptables" else
                   f"run with --tune-host (adds nft table ip {NFT_TABLE} and deletes it at the end)")
