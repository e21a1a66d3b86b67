"""What a system call's cost depends on, for a run's metadata: the kernel command line, the CPU vulnerability
mitigations in force, the clocksource, and a process's seccomp mode (a container's filter runs on every
system call it makes)."""

from __future__ import annotations

from pathlib import Path

VULNERABILITIES = Path("/sys/devices/system/cpu/vulnerabilities")
CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
CMDLINE = Path("/proc/cmdline")
SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def mitigations(root: Path = VULNERABILITIES) -> dict[str, str]:
    """vulnerability -> the kernel's line for it ("Not affected", "Mitigation: Retpolines; ...")."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return {}
    return {entry.name: text for entry in entries if (text := _read(entry)) is not None}


def seccomp(pid: int) -> dict:
    """The Seccomp and Seccomp_filters lines of /proc/PID/status: {"mode": "filter", "filters": 1}; a
    kernel without them (or a process gone) gives {"mode": None}."""
    status = _read(Path(f"/proc/{pid}/status")) or ""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    mode = fields.get("Seccomp", "").strip()
    filters = fields.get("Seccomp_filters", "").strip()
    return {"mode": SECCOMP_MODES.get(mode, mode or None), "filters": int(filters) if filters.isdigit() else None}


def syscall_cost_factors(pid: int | None = None) -> dict:
    """The metadata entry "syscall_cost": command line, mitigations, clocksource, and with pid the seccomp
    mode of that process (the server's, or a process of its container)."""
    found = {"kernel_cmdline": _read(CMDLINE), "cpu_vulnerabilities": mitigations(),
             "clocksource": _read(CLOCKSOURCE)}
    if pid is not None:
        found["seccomp"] = seccomp(pid)
    return found
