"""Host preflight for a planned sweep: the kernel limits that would silently cut the experiment short.

A dead-connection sweep holds tens of thousands of loopback connections open. Several host settings bound
that without an error anyone would see in a reply rate: the listen queue (somaxconn), the conntrack table
(full: SYNs are dropped), the ephemeral ports per source address (EADDRNOTAVAIL), the fd limits.
assess() says which settings are too low for a plan and why; tune() raises them (root, /proc/sys) and puts
the old values back when the sweep ends, whatever way it ends.

The net.* settings belong to a network namespace: these are the host's. A container with its own network
namespace has its own copies (set them with `docker run --sysctl`); nf_conntrack_max is global.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError

PROC_SYS = Path("/proc/sys")
SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
           "net.netfilter.nf_conntrack_max", "fs.file-max", "fs.nr_open", "net.ipv4.tcp_tw_reuse")
FD_HARD_LIMIT = "fd_hard_limit"
# dphttpd's listen backlog in the 2002 study; ephttpd uses the same.
SERVER_BACKLOG = 2048
# fds a server holds besides its connections: stdio, the listening socket, the event fd, a few spare.
FD_SLACK = 64
# fds the rest of the system holds, on top of both ends of every planned connection.
FILE_MAX_SLACK = 65536
# The lowest ephemeral port that keeps clear of the well-known and registered-by-convention ports.
LOWEST_EPHEMERAL_PORT = 1024
HIGHEST_PORT = 65535


@dataclass(frozen=True)
class Finding:
    """One host setting too low for the plan: what it is, what is needed, why, and how to fix it."""

    setting: str
    value: int | list[int] | None
    needed: int | list[int]
    why: str
    fix: str
    tunable: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: the setting, its value against what is needed, why, and the fix."""
        return f"{self.setting} is {self.value}, needs {self.needed}: {self.why}; fix: {self.fix}"


def _sysctl_path(name: str, proc_sys: Path = PROC_SYS) -> Path:
    return proc_sys / name.replace(".", "/")


def _read_sysctl(name: str, proc_sys: Path = PROC_SYS) -> int | list[int] | None:
    try:
        fields = [int(x) for x in _sysctl_path(name, proc_sys).read_text().split()]
    except FileNotFoundError:
        return None
    return fields[0] if len(fields) == 1 else fields


def read_host_settings(proc_sys: Path = PROC_SYS) -> dict:
    """The sysctls in SYSCTLS (None when absent, e.g. nf_conntrack_max without the module loaded),
    ip_local_port_range as [low, high], and this process's RLIMIT_NOFILE hard limit (None: unlimited)."""
    settings = {name: _read_sysctl(name, proc_sys) for name in SYSCTLS}
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    settings[FD_HARD_LIMIT] = None if hard == resource.RLIM_INFINITY else hard
    return settings


def fds_needed(dead: int, active_connections: int) -> int:
    """The fds one server process needs to hold `dead` dead and the active connections."""
    return dead + active_connections + FD_SLACK


def max_dead_connections(settings: dict, active_connections: int) -> int | None:
    """The most dead connections one server process can hold under the fd hard limit (None: no limit)."""
    hard = settings.get(FD_HARD_LIMIT)
    if hard is None:
        hard = settings.get("fs.nr_open")
    return None if hard is None else max(0, hard - active_connections - FD_SLACK)


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


def assess(settings: dict, planned_dead_max: int, active_connections: int, source_addresses: int,
           backlog: int = SERVER_BACKLOG) -> list[Finding]:
    """The settings too low for a sweep up to planned_dead_max dead connections, spread over
    source_addresses client addresses, plus active_connections httperf connections."""
    if planned_dead_max < 0 or active_connections < 0 or source_addresses < 1:
        raise ValueError(f"assess needs planned_dead_max >= 0, active_connections >= 0, source_addresses >= 1 "
                         f"(got {planned_dead_max}, {active_connections}, {source_addresses})")
    findings = []
    connections = planned_dead_max + active_connections

    def sysctl(name: str, needed: int, why: str) -> None:
        value = settings.get(name)
        if value is not None and value < needed:
            findings.append(Finding(name, value, needed, why, f"sysctl -w {name}={needed}"))

    sysctl("net.core.somaxconn", backlog,
           f"listen() silently cuts the server's backlog of {backlog} to somaxconn: connections beyond the "
           "shorter accept queue are dropped and retried after a 1 s SYN timeout, a cost the 2002 setup "
           "did not have")
    sysctl("net.ipv4.tcp_max_syn_backlog", backlog,
           f"the SYN queue is shorter than the server's backlog of {backlog}: a burst of connects beyond it "
           "falls back to SYN cookies or is dropped")
    # Closed connections keep their conntrack entry for nf_conntrack_tcp_timeout_time_wait (120 s), so the
    # previous point's connections can still be in the table while the next point opens its own.
    sysctl("net.netfilter.nf_conntrack_max", 2 * connections,
           f"every loopback connection takes a conntrack entry and a closed one keeps it for 120 s: "
           f"{connections} connections, plus the previous point's still closing, need {2 * connections}; "
           "once the table is full the kernel drops new connections' SYNs "
           "('nf_conntrack: table full, dropping packet')")
    sysctl("fs.file-max", 2 * connections + FILE_MAX_SLACK,
           f"both ends of {connections} loopback connections are open files on this host, "
           f"{2 * connections} in all, beside what the rest of the system holds")
    per_process = fds_needed(planned_dead_max, active_connections)
    sysctl("fs.nr_open", per_process,
           f"setrlimit cannot raise a process's fd limit above fs.nr_open; the server needs {per_process}")

    tw_reuse = settings.get("net.ipv4.tcp_tw_reuse")
    if tw_reuse == 0:
        findings.append(Finding(
            "net.ipv4.tcp_tw_reuse", tw_reuse, 2,
            "connections closed at the end of a point hold their source port in TIME_WAIT for 60 s: without "
            "reuse, the next point's connects fail with EADDRNOTAVAIL (httperf: addrunavail) once the "
            "ephemeral range is used up",
            "sysctl -w net.ipv4.tcp_tw_reuse=2 (reuse for loopback only)"))

    port_range = settings.get("net.ipv4.ip_local_port_range")
    if port_range is not None:
        # httperf may share a source address with deadconn; without TIME_WAIT reuse a point needs the
        # ports of the one before it too.
        ports = math.ceil(planned_dead_max / source_addresses) + active_connections
        ports *= 1 if tw_reuse != 0 else 2
        size = port_range[1] - port_range[0] + 1
        if size < ports:
            why = (f"each connection from one source address to the server needs its own ephemeral port: "
                   f"{planned_dead_max} dead connections over {source_addresses} source address(es) plus "
                   f"{active_connections} active"
                   f"{', twice over without TIME_WAIT reuse,' if tw_reuse == 0 else ''} need {ports} ports, "
                   f"the range has {size}")
            wider = _port_range_for(ports, port_range)
            if wider is None:
                addresses = math.ceil(planned_dead_max / (HIGHEST_PORT - LOWEST_EPHEMERAL_PORT + 1
                                                          - active_connections))
                findings.append(Finding("net.ipv4.ip_local_port_range", port_range, ports, why,
                                        f"not fixable by the port range alone: spread the dead connections "
                                        f"over at least {addresses} source addresses (127.0.0.0/8)",
                                        tunable=False))
            else:
                findings.append(Finding("net.ipv4.ip_local_port_range", port_range, wider, why,
                                        f"sysctl -w net.ipv4.ip_local_port_range='{wider[0]} {wider[1]}'"))

    hard = settings.get(FD_HARD_LIMIT)
    if hard is not None and hard < per_process:
        most = max_dead_connections(settings, active_connections)
        findings.append(Finding(
            FD_HARD_LIMIT, hard, per_process,
            f"the server holds every dead and active connection as an fd: it needs {per_process}, the hard "
            f"RLIMIT_NOFILE is {hard}, so one server process holds at most {most} dead connections",
            f"not fixable by tuning: the hard limit is inherited from whoever started this process (ulimit "
            f"-Hn, systemd LimitNOFILE, docker --ulimit); the sweep adapts and runs no point above {most} "
            "dead connections", tunable=False))
    return findings


def _enough(setting: str, current: int | list[int] | None, needed: int | list[int]) -> bool:
    if current is None:
        return True
    if setting == "net.ipv4.ip_local_port_range":
        return current[1] - current[0] >= needed[1] - needed[0]
    if setting == "net.ipv4.tcp_tw_reuse":
        return current != 0
    return current >= needed


@dataclass
class Tuning:
    """The sysctls tune() changed; restore() (or leaving its `with` block, however) puts them back."""

    proc_sys: Path = PROC_SYS
    changed: list[dict] = field(default_factory=list)
    left_alone: list[dict] = field(default_factory=list)
    restored: bool = False

    def _apply(self, findings: list[Finding]) -> None:
        for finding in findings:
            if not finding.tunable:
                continue
            current = _read_sysctl(finding.setting, self.proc_sys)
            if _enough(finding.setting, current, finding.needed):
                self.left_alone.append({"setting": finding.setting, "value": current, "needed": finding.needed})
                continue
            path = _sysctl_path(finding.setting, self.proc_sys)
            old_text = path.read_text().strip()
            new_text = " ".join(map(str, finding.needed)) if isinstance(finding.needed, list) \
                else str(finding.needed)
            path.write_text(new_text)
            self.changed.append({"setting": finding.setting, "old": current, "new": finding.needed,
                                 "old_text": old_text})

    def restore(self) -> list[dict]:
        """Writes back every value tune() changed, unless someone else changed it since (then it is left
        and reported). Returns the settings not restored; safe to call more than once."""
        not_restored = []
        if self.restored:
            return not_restored
        self.restored = True
        for change in reversed(self.changed):
            current = _read_sysctl(change["setting"], self.proc_sys)
            if current != change["new"]:
                not_restored.append(dict(change, found=current))
                continue
            _sysctl_path(change["setting"], self.proc_sys).write_text(change["old_text"])
        return not_restored

    def __enter__(self) -> Tuning:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def tune(findings: list[Finding], proc_sys: Path = PROC_SYS) -> Tuning:
    """Raises (never lowers) the tunable findings' sysctls now; use as `with tune(findings) as tuning:`
    so they are restored on the way out, exceptions and KeyboardInterrupt included."""
    tunable = [f for f in findings if f.tunable]
    if tunable and os.geteuid() != 0:
        raise UserError("raising host limits needs root: run as root, or first run "
                        + "; ".join(f.fix for f in tunable))
    tuning = Tuning(proc_sys=proc_sys)
    try:
        tuning._apply(tunable)
    except BaseException as error:
        tuning.restore()
        if isinstance(error, OSError):
            raise UserError(f"could not write {error.filename}: {error.strerror} "
                            "(in a container, /proc/sys is read-only: tune the host)") from error
        raise
    return tuning
