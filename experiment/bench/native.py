"""Build and run the programs under test natively, without Docker (tests, `invoke bench`)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import IMAGES

BUILD = IMAGES / "build"
SANITIZED = BUILD / "sanitize"  # `make -C images sanitize`: under ASan and UBSan, for the tests
# Where Ephttpd runs ephttpd from: the last build() (the tests build the sanitized programs, `invoke bench`
# the optimised ones it measures).
programs = BUILD
DEADCONN = IMAGES / "deadconn" / "deadconn.py"
PYHTTPD = IMAGES / "pyhttpd" / "pyhttpd.py"


class ProgramError(RuntimeError):
    """A program under test failed to build, start or stop as it should."""


def build(sanitized: bool = False) -> Path:
    """Compile images/ with make (sanitized: under AddressSanitizer and UndefinedBehaviorSanitizer, where any
    report aborts the program); returns the folder holding ephttpd and pipetest, which Ephttpd then runs."""
    global programs
    target = ["sanitize"] if sanitized else []
    proc = subprocess.run(["make", "-s", "-C", str(IMAGES), *target], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProgramError(f"make -C images {' '.join(target)} failed:\n{proc.stdout}{proc.stderr}")
    programs = SANITIZED if sanitized else BUILD
    return programs


@dataclass
class Ephttpd:
    """One running ephttpd: started by start(), stopped (SIGTERM, stats read) by stop()."""

    backend: str = "epoll"
    extra_args: list[str] = field(default_factory=list)
    bind: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None
    listening: dict | None = None
    stats: dict | None = None
    nofile: int | None = None  # RLIMIT_NOFILE, soft and hard, to start it under; None: inherit

    name = "ephttpd"

    def command(self) -> list[str]:
        return [str(programs / "ephttpd"), "--backend", self.backend, "--bind", self.bind,
                "--port", str(self.port), *self.extra_args]

    def start(self, timeout: float = 10.0) -> Ephttpd:
        cmd = self.command()
        self.proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            preexec_fn=None if self.nofile is None else self._limit_nofile)
        line = _readline(proc, timeout)
        if not line:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise ProgramError(f"{self.name} did not say it was listening: {' '.join(cmd)}\n{err}")
        self.listening = json.loads(line)
        self.port = self.listening["port"]
        return self

    def _limit_nofile(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    @property
    def running(self) -> subprocess.Popen:
        if self.proc is None:
            raise ProgramError(f"{self.name} was not started")
        return self.proc

    @property
    def pid(self) -> int:
        return self.running.pid

    def snapshot(self, timeout: float = 10.0) -> dict:
        """SIGUSR1: the counters of a running one-worker ephttpd, from the "snapshot" line it prints.
        ephttpd does not count the wakeups its own signals cause, so a snapshot changes no counter."""
        self.running.send_signal(signal.SIGUSR1)
        line = _readline(self.running, timeout)
        if not line:
            raise ProgramError(f"{self.name} printed no snapshot within {timeout} s of SIGUSR1")
        return json.loads(line)

    def stop(self, timeout: float = 10.0) -> dict:
        """SIGTERM, then the one JSON stats line it prints on the way out."""
        proc = self.running
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise ProgramError(f"{self.name} ignored SIGTERM for {timeout} s") from None
        if proc.returncode != 0:
            raise ProgramError(f"{self.name} exited {proc.returncode}: {err.strip()}")
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        self.stats = lines[-1]
        return self.stats

    def __enter__(self) -> Ephttpd:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Pyhttpd(Ephttpd):
    """One running pyhttpd (images/pyhttpd): the same protocol as ephttpd, run by this interpreter."""

    name = "pyhttpd"

    def command(self) -> list[str]:
        return [sys.executable, str(PYHTTPD), "--backend", self.backend, "--bind", self.bind,
                "--port", str(self.port), *self.extra_args]


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One line of proc's stdout, or '' when it exits or says nothing within timeout."""
    import selectors

    if proc.stdout is None:
        raise ProgramError("a program's stdout is read only when it was started with stdout=PIPE")
    stdout = proc.stdout
    sel = selectors.DefaultSelector()
    sel.register(stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                return stdout.readline()
            if proc.poll() is not None:
                return ""
        return ""
    finally:
        sel.close()


def deadconn_command(*args: str) -> list[str]:
    return [sys.executable, str(DEADCONN), *args]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
