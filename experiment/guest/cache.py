"""Where the guests' downloads and builds are kept: outside the checkout, reused by every later run."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$XDG_CACHE_HOME/epollbench (else ~/.cache/epollbench), joined with parts, created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base, "epollbench", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
