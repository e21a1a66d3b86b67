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
# `make -C images sanitize`: the same programs under AddressSanitizer and UBSan, which the tests run.
SANITIZED = BUILD / "sanitize"
# The first report ends the program with a nonzero status (UBSan's because of -fno-sanitize-recover).
SANITIZER_ENV = {"ASAN_OPTIONS": "halt_on_error=1:abort_on_error=1:detect_leaks=1",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
SANITIZER_REPORTS = ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "LeakSanitizer has")
DEADCONN = IMAGES / "deadconn" / "deadconn.py"
PYHTTPD = IMAGES / "pyhttpd" / "pyhttpd.py"


class ProgramError(RuntimeError):
    """A program under test failed to build, start or stop as it should."""


def build(target: str = "all") -> Path:
    """Compile images/ with make; returns the folder holding ephttpd and pipetest: BUILD, optimised as the
    images are, or with target "sanitize" SANITIZED."""
    proc = subprocess.run(["make", "-s", "-C", str(IMAGES), target], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProgramError(f"make -C images {target} failed:\n{proc.stdout}{proc.stderr}")
    return SANITIZED if target == "sanitize" else BUILD


def sanitized_env(detect_leaks: bool = True) -> dict[str, str]:
    """The environment to run a sanitized program in. detect_leaks False where LeakSanitizer cannot work: under
    ptrace (strace), or for a program that frees nothing before it exits."""
    env = {**os.environ, **SANITIZER_ENV}
    if not detect_leaks:
        env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
    return env


def sanitizer_report(stderr: str) -> str | None:
    """The sanitizer report in a program's stderr, from its first line on, or None."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if any(mark in line for mark in SANITIZER_REPORTS):
            return "\n".join(lines[i:i + 40])
    return None


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
    build: Path = BUILD  # or SANITIZED

    name = "ephttpd"

    def command(self) -> list[str]:
        return [str(self.build / "ephttpd"), "--backend", self.backend, "--bind", self.bind,
                "--port", str(self.port), *self.extra_args]

    def start(self, timeout: float = 10.0) -> Ephttpd:
        cmd = self.command()
        self.proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env=sanitized_env(),
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
        """SIGTERM, then the one JSON stats line it prints on the way out. ProgramError if it exits other than
        with 0, or a sanitizer reported something."""
        proc = self.running
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise ProgramError(f"{self.name} ignored SIGTERM for {timeout} s") from None
        report = sanitizer_report(err)
        if proc.returncode != 0 or report:
            raise ProgramError(f"{self.name} exited {proc.returncode}: {report or err.strip()}")
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        self.stats = lines[-1]
        return self.stats

    def close(self) -> None:
        """Kills it unless stop() or the caller has ended it and read its output. ProgramError if a sanitizer
        reported something: a report ends the program, which its client may not have noticed."""
        proc = self.proc
        if proc is None or proc.stderr is None or proc.stderr.closed:
            return
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
        report = sanitizer_report(err)
        if report:
            raise ProgramError(f"{self.name} (exit {proc.returncode}): {report}")

    def __enter__(self) -> Ephttpd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


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
