"""The tools the tests run from the host, and the one way a test says that one is missing.

A missing tool skips the test on a developer's machine, but fails it under CI=true: `./run test` installs
every package named here (dev/testenv.py), so in CI a missing one is a missing install step, which a
skip would hide behind a green run. Every "X is not installed" in tests/ goes through require() or missing();
tests/test_tools.py holds the tests to that.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

# name: (where to look: an absolute path or a name on PATH, the Debian package that brings it)
TOOLS = {
    "nginx": (("/usr/sbin/nginx", "nginx"), "nginx-light"),
    "strace": (("strace",), "strace"),
    "iptables": (("/usr/sbin/iptables",), "iptables"),
    "nft": (("/usr/sbin/nft",), "nftables"),
    "docker-compose": (("docker-compose",), "docker-compose"),
    "chromium": (("/usr/bin/chromium", "chromium"), "chromium"),
    "git": (("git",), "git"),
    "wrk": (("wrk",), "wrk"),
    "openssl": (("openssl",), "openssl"),
    "ctags": (("ctags",), "universal-ctags"),
    # The test task gets dockerd from docker.io when no engine answers (experiment/host/engine.py).
    "dockerd": (("dockerd", "/usr/sbin/dockerd"), "docker.io"),
    "docker": (("/usr/bin/docker", "docker"), "docker.io"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def find(name: str) -> str | None:
    """The tool's path, or None when this host lacks it."""
    places, _package = TOOLS[name]
    for place in places:
        if os.path.isabs(place):
            if os.access(place, os.X_OK):
                return place
        elif found := shutil.which(place):
            return found
    return None


def require(name: str) -> str:
    """The tool's path; without it the test skips, or fails under CI."""
    path = find(name)
    if path is None:
        missing(f"{name} is not installed: apt-get install {TOOLS[name][1]} (./run test installs it)")
    return path


def missing(reason: str) -> NoReturn:
    """A test that cannot run because something is not installed: a skip, or under CI a failure."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
