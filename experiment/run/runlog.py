"""A run's own log: everything the harness prints on the terminal goes to logs/harness.log in the run folder too.

capture() tees sys.stdout and sys.stderr from the start of `invoke reproduce`, keeping what is printed in
memory until the run folder exists (attach()), then appending to the file as it is printed. What ends the
command is logged as the terminal shows it: a UserError's one line, any other exception's traceback. The live
progress bar is the terminal's alone (it redraws itself many times a second); it prints to
terminal_stderr(), and logs one line per point with log_only() instead.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import UserError

HARNESS_LOG = "harness.log"


class RunLog:
    """The text of a run's log: in memory until attach() names its file, then written through."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.file: IO[str] | None = None
        self.path: Path | None = None

    def write(self, text: str) -> None:
        if self.file is None:
            self.pending.append(text)
            return
        self.file.write(text)
        self.file.flush()

    def attach(self, path: Path) -> None:
        """From now on into path (appended to: a resumed run's attempts share one log), what came before first."""
        if self.path == path:
            return
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file, self.path = open(path, "a", encoding="utf-8", errors="replace"), path  # noqa: SIM115
        pending, self.pending = "".join(self.pending), []
        self.write(pending)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Tee:
    """A text stream that writes to the terminal's stream and to the run's log; asked anything else (isatty,
    fileno, encoding), it answers as the terminal's stream."""

    def __init__(self, terminal: Any, log: RunLog):
        self.terminal = terminal
        self.log = log

    def write(self, text: str) -> int:
        written = self.terminal.write(text)
        self.log.write(text)
        return written

    def flush(self) -> None:
        self.terminal.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.terminal, name)


_active: RunLog | None = None


@contextlib.contextmanager
def capture() -> Iterator[RunLog]:
    """Tees stdout and stderr into a RunLog for the duration (nested: the outer one's)."""
    global _active
    if _active is not None:
        yield _active
        return
    log = RunLog()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    _active = log
    try:
        yield log
    except UserError as error:
        log.write(f"epollbench: {error}\n")
        raise
    except BaseException:
        log.write(traceback.format_exc())
        raise
    finally:
        sys.stdout, sys.stderr = saved
        _active = None
        log.close()


def attach(run_dir: Path) -> None:
    """The capturing log (if any) goes to run_dir/logs/harness.log from now on."""
    if _active is not None:
        _active.attach(run_dir / "logs" / HARNESS_LOG)


def log_only(line: str) -> None:
    """A line for the run's log that the terminal does not get (it has the live progress bar)."""
    if _active is not None:
        _active.write(line + "\n")


def terminal_stderr() -> Any:
    """stderr without the run's log."""
    return sys.stderr.terminal if isinstance(sys.stderr, Tee) else sys.stderr
