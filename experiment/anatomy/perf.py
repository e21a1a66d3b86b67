"""Debian's `perf` (package linux-perf): finding the real binary, installing it, and running `perf stat` and
`perf record` on a set of processes between two commands on a control FIFO.

Debian's linux-base ships /usr/bin/perf as a wrapper that runs perf_<kernel version> and fails when that
version is not installed; linux-perf (bookworm on) diverts the wrapper and installs the real binary at
/usr/bin/perf. find() takes the first candidate that answers `perf --version`, so the wrapper alone is
not mistaken for perf.

Both commands start with their events disabled (`-D -1`) and listen on a FIFO (`--control`): the window
opens when perf acknowledges "enable" and closes when it acknowledges "disable", so perf's own start-up
(reading /proc of every process, synthesizing their mappings) and its shutdown fall outside it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "linux-perf"
CANDIDATES = ("perf", "/usr/bin/perf", "/usr/sbin/perf")
# Older Debian (linux-perf-5.10) and Ubuntu (linux-tools-*) put the versioned binary here.
VERSIONED_GLOBS = ("/usr/bin/perf_*", "/usr/lib/linux-tools/*/perf", "/usr/lib/linux-tools-*/perf")
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
ACK_TIMEOUT_S = 30.0   # perf start-up on a process with tens of thousands of descriptors; never a measurement
STOP_TIMEOUT_S = 120.0  # perf record writing its data and build-ids


class PerfError(RuntimeError):
    """perf could not do what was asked: the message says why, for an `unavailable` record."""


def _answers(path: str) -> bool:
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.startswith("perf version")


def find(candidates: tuple[str, ...] = CANDIDATES) -> str | None:
    """The path of a perf that runs (not Debian's wrapper without its versioned binary), or None."""
    seen: list[str] = []
    for place in candidates:
        path = place if os.path.isabs(place) else shutil.which(place)
        if path and path not in seen:
            seen.append(path)
    for pattern in VERSIONED_GLOBS:
        seen.extend(p for p in sorted(glob.glob(pattern), reverse=True) if p not in seen)
    for path in seen:
        if os.access(path, os.X_OK) and _answers(path):
            return path
    return None


def ensure(install: bool = True) -> tuple[str | None, str]:
    """(perf's path, "") or (None, why not). With install, root on Debian installs linux-perf first
    (experiment/host/machine.py's ensure_packages, as for the project's other host packages)."""
    path = find()
    if path:
        return path, ""
    if install:
        from ..errors import UserError
        from ..host import machine

        if machine.is_debian_root():
            try:
                machine.ensure_packages([PACKAGE], "the kernel cost anatomy")
            except UserError as error:
                return None, str(error)
            path = find()
            if path:
                return path, ""
            return None, f"{PACKAGE} is installed but no perf binary answers `perf --version`"
    return None, f"perf is not installed: apt-get install {PACKAGE} (as root on Debian epollbench installs it)"


def tracefs() -> Path | None:
    for path in TRACEFS:
        if (path / "events").is_dir():
            return path
    return None


def tracepoints(names: list[str]) -> list[str]:
    """Those of the "group:event" tracepoints this kernel has (tracefs lists them)."""
    root = tracefs()
    if root is None:
        return []
    return [name for name in names if (root / "events" / name.replace(":", "/")).is_dir()]


def check(perf: str) -> str:
    """"" when perf can count and sample a process here (software events: no tracefs needed), else the reason
    it cannot (not root, perf_event_paranoid, a perf that is not one)."""
    if not os.access(perf, os.X_OK):
        return f"{perf} is not an executable (apt-get install {PACKAGE})"
    return _counts(perf, ["cpu-clock", "context-switches"])


def check_tracepoints(perf: str, events: tuple[str, ...] = ("raw_syscalls:sys_enter",)) -> str:
    """"" when perf can count the tracepoints here (by default the syscall tracepoint the anatomy needs), else
    the reason it cannot (tracefs not mounted, no such tracepoint, perf refused)."""
    return tracefs_missing() or _counts(perf, list(events))


def check_filter(perf: str, event: str, condition: str) -> str:
    """"" when perf can count the tracepoint event with a filter on its fields (`--filter`), else why not."""
    return _counts(perf, [event], ["-e", event, "--filter", condition])


def tracefs_missing() -> str:
    """Why the tracepoints cannot be listed and opened: tracefs is not mounted; "" when it is."""
    if tracefs() is not None:
        return ""
    return (f"tracefs is not mounted ({TRACEFS[0]}): the syscall tracepoints cannot be counted (as root, "
            f"`invoke reproduce` mounts it; or: mount -t tracefs nodev {TRACEFS[0]})")


def _counts(perf: str, events: list[str], args: list[str] | None = None) -> str:
    """"" when `perf stat` counts every one of events over `true` (args: its arguments for them, by default
    -e and their names), else why not."""
    try:
        proc = subprocess.run([perf, "stat", "-x", ",", *(args or ["-e", ",".join(events)]), "--", "true"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{perf} stat failed to run: {error}"
    counted = parse_stat_csv(proc.stderr)
    if proc.returncode != 0 or any(counted.get(event) is None for event in events):
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        return f"perf cannot count {','.join(events)} here (exit {proc.returncode}): {tail}"
    return ""


@dataclass
class Controlled:
    """One perf command running disabled, driven through its control FIFO."""

    argv: list[str]
    proc: subprocess.Popen
    ctl: int
    ack: int
    folder: str
    stderr_path: Path

    @classmethod
    def start(cls, perf: str, command: str, args: list[str], cpus: Iterable[int] | None = None) -> Controlled:
        """perf command with args, disabled; cpus: the only CPUs perf's own process may run on (None: any)."""
        folder = tempfile.mkdtemp(prefix="epollbench-perf-")
        ctl_path, ack_path = os.path.join(folder, "ctl"), os.path.join(folder, "ack")
        os.mkfifo(ctl_path)
        os.mkfifo(ack_path)
        stderr_path = Path(folder) / "stderr"
        argv = [perf, command, "-D", "-1", "--control", f"fifo:{ctl_path},{ack_path}", *args]
        with open(stderr_path, "w") as err:
            allowed = None if cpus is None else set(cpus)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    preexec_fn=None if allowed is None else lambda: os.sched_setaffinity(0, allowed))
        # Non-blocking opens: perf opens the FIFOs once it is set up; neither side must wait on the other.
        ack = os.open(ack_path, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while True:
            try:
                ctl = os.open(ctl_path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:  # ENXIO: perf has not opened its end yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    os.close(ack)
                    raise PerfError(f"perf {command} did not start: {_tail(stderr_path)}") from None
                time.sleep(0.005)
        return cls(argv, proc, ctl, ack, folder, stderr_path)

    def command(self, word: str) -> None:
        """Sends "enable" or "disable" and waits for perf's "ack"."""
        os.write(self.ctl, word.encode() + b"\n")
        deadline = time.monotonic() + ACK_TIMEOUT_S
        got = b""
        while b"ack" not in got:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise PerfError(f"perf did not acknowledge {word!r}: {_tail(self.stderr_path)}")
            ready, _, _ = select.select([self.ack], [], [], min(left, 0.5))
            chunk = os.read(self.ack, 64) if ready else b""
            if chunk:
                got += chunk
            elif ready:  # perf has not opened its end yet: the FIFO reads as empty
                time.sleep(0.005)

    def interrupt(self) -> None:
        """SIGINT: perf stops and writes what it has; stop() waits for that."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self) -> str:
        """SIGINT, then perf's stderr once it has exited (perf record writes its data first)."""
        self.interrupt()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise PerfError(f"perf ignored SIGINT for {STOP_TIMEOUT_S:.0f} s") from None
        finally:
            self.close()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        for fd in (self.ctl, self.ack):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.ctl = self.ack = -1
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(nothing on stderr)"
    except OSError:
        return "(no stderr)"


def parse_stat_csv(text: str) -> dict[str, int | None]:
    """event -> count from `perf stat -x ,` output; None where perf says "<not counted>" or "<not supported>"."""
    return dict(parse_stat_rows(text))


def parse_stat_rows(text: str) -> list[tuple[str, int | None]]:
    """(event, count) from `perf stat -x ,` output, in the order perf printed them (its events' order: an
    event given twice, with two filters, is printed twice under one name); None as in parse_stat_csv."""
    rows: list[tuple[str, int | None]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) < 3:
            continue
        value, event = fields[0], fields[2]
        try:
            rows.append((event, int(float(value))))
        except ValueError:
            rows.append((event, None))
    return rows
