"""Item 5: pipetest's token passes/s per backend at 10 pipes and at the most pipes allowed, next to
2002's."""

from __future__ import annotations

import json
import subprocess

from ... import catalog, paths
from ...run.plan import max_pipes
from .. import native
from ..registry import Context

PIPETEST_SECONDS = 2
REFERENCE = paths.ROOT / "experiment" / "data" / "lse-2002.json"


def run(context: Context) -> dict:
    return pipetest(context.fd_limit)


def pipetest(fd_limit: int) -> dict:
    reference = json.loads(REFERENCE.read_text())["pipetest_smp"]["series"]
    rows = [_passes(backend, pipes) for backend in catalog.PIPETEST_BACKENDS
            for pipes in (10, max_pipes(fd_limit, backend))]
    return {"rows": rows, "reference_2002": reference}


def _passes(backend: str, pipes: int) -> dict:
    proc = subprocess.run([str(native.BUILD / "pipetest"), "--backend", backend, "--pipes", str(pipes),
                           "--generations", "1000000000", "--max-seconds", str(PIPETEST_SECONDS)],
                          capture_output=True, text=True, timeout=PIPETEST_SECONDS * 10 + 30)
    if proc.returncode != 0:
        return {"backend": backend, "pipes": pipes, "error": proc.stderr.strip()}
    return {"backend": backend, "pipes": pipes, "passes_per_s": json.loads(proc.stdout)["passes_per_s"]}
