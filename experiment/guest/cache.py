"""Where the guests' downloads and builds are kept: outside the checkout, reused by every later run."""

from __future__ import annotations

import os
from pathlib import Path


def cache_path(*parts: str) -> Path:
    """$XDG_CACHE_HOME/epollbench (else ~/.cache/epollbench), joined with parts, as it is: what looks without
    fetching (the dry run, doctor) leaves the cache untouched."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "epollbench", *parts)


def cache_dir(*parts: str) -> Path:
    """cache_path(*parts), created."""
    path = cache_path(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def prune(folder: Path, pattern: str, keep: int, using: Path) -> list[Path]:
    """Removes all but the keep most recently used files of folder matching pattern, marking using as just used
    first (a root disk of an older recipe, or an images disk of an older image build, is never asked for again).
    Returns what it removed."""
    using.touch()
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    stale = [p for p in files[keep:] if p != using]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
