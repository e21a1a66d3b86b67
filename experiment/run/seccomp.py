"""The seccomp profile every server container runs under: ours, so that the filter is the same on every engine.

experiment/data/seccomp-docker-default-io_uring.json is Docker's default profile as Debian's Docker 20.10.24
ships it (golang-github-docker-docker-dev: profiles/seccomp/default.json, Apache-2.0, from the Moby project),
with io_uring_setup, io_uring_enter and io_uring_register in its allow list. Docker 20.10 allows them by
default already; Docker 25 and later do not (moby #46762), so under their default the io_uring backends would
be refused. Giving the profile explicitly keeps the filter, whose cost falls on every system call (more of
them per reply for a readiness backend than for io_uring-recv), the same whichever engine runs the server.
A point records the profile's name (the server section's "seccomp").
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources

PROFILE_FILE = "seccomp-docker-default-io_uring.json"
IO_URING_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")
# A Service's seccomp that runs it with no filter at all (Docker's seccomp=unconfined), what `invoke bench`
# compares our filter with; an engine may refuse it (a policy plugin, a rootless engine's own filter).
UNCONFINED = "unconfined"


@cache
def profile_text() -> str:
    """The profile as Docker's security_opt takes it: seccomp=<this JSON>."""
    return resources.files("experiment").joinpath("data", PROFILE_FILE).read_text()


@cache
def profile_name() -> str:
    """How a point names the profile: its file and the first 12 hex digits of its SHA-256."""
    return f"{PROFILE_FILE.removesuffix('.json')}@{hashlib.sha256(profile_text().encode()).hexdigest()[:12]}"


def allowed(profile: dict) -> set[str]:
    """The system calls a profile allows unconditionally (its rules with no argument or capability test)."""
    return {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
            and not rule.get("includes") and not rule.get("excludes") for name in rule["names"]}


def security_opt(profile: str | None) -> list[str] | None:
    """Docker's security_opt for a Service's seccomp: None, the engine's default; UNCONFINED, no filter;
    profile_name(), ours."""
    if profile is None:
        return None
    if profile == UNCONFINED:
        return [f"seccomp={UNCONFINED}"]
    if profile != profile_name():
        raise ValueError(f"unknown seccomp profile {profile!r}: ours is {profile_name()}, or {UNCONFINED}")
    return [f"seccomp={json.dumps(json.loads(profile_text()), separators=(',', ':'))}"]
