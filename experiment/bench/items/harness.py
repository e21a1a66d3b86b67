"""Item 4: the harness: wall time of a quick profile run with cached images, split into images, setup,
measuring and report (read from the run's own timings). The one item measured in containers besides
item 9."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ... import paths
from ...errors import UserError
from ..registry import Context


def run(context: Context) -> dict | None:
    return None if context.skip_harness else harness()


def harness() -> dict:
    """A quick profile run with cached images, in a scratch results folder, and its phase timings."""
    with tempfile.TemporaryDirectory(prefix="epollbench-harness-") as tmp:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "invoke", "reproduce", "--results-dir", tmp],
                              cwd=paths.ROOT, capture_output=True, text=True)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise UserError(f"the quick profile failed: {proc.stderr.strip()[-300:]}")
        record = json.loads((Path(tmp) / "latest" / "run.json").read_text())
    timings = record.get("timings", {})
    measuring = timings.get("measuring_s")
    return {"wall_s": wall, "timings": timings, "measuring_share": measuring / wall if measuring else None}
