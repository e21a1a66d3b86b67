"""What the host has and lacks: Debian packages, the apt mirror, the fd limit, the CPUs."""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
from pathlib import Path

from ..errors import UserError

_apt_updated = False


def is_debian_root() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def missing_packages(packages: list[str]) -> list[str]:
    missing = []
    for name in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        if "install ok installed" not in proc.stdout:
            missing.append(name)
    return missing


def ensure_packages(packages: list[str], why: str) -> None:
    """Installs the Debian packages that are missing (as root on Debian), else says which to install."""
    global _apt_updated
    if shutil.which("dpkg-query") is None:
        raise UserError(f"{why} needs the Debian packages {' '.join(packages)}: install their equivalents")
    missing = missing_packages(packages)
    if not missing:
        return
    if not is_debian_root():
        raise UserError(f"{why} needs the Debian packages {' '.join(missing)}: "
                        f"run `sudo apt-get install {' '.join(missing)}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        _apt_updated = True
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise UserError(f"apt-get install {' '.join(missing)} failed ({' '.join(tail)}): "
                        "check the apt sources in /etc/apt")


def apt_mirror() -> tuple[str, str]:
    """(mirror URI, suite) of the host's Debian main archive, read from its apt configuration."""
    sources = Path("/etc/apt")
    candidates = sorted((sources / "sources.list.d").glob("*.sources")) + \
        sorted((sources / "sources.list.d").glob("*.list")) + [sources / "sources.list"]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
                uris, suites = fields.get("URIs", "").split(), fields.get("Suites", "").split()
                if uris and suites and "security" not in uris[0] and fields.get("Enabled", "yes") != "no":
                    return uris[0], suites[0]
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and "security" not in m.group(1):
                    return m.group(1), m.group(2)
    raise UserError("no Debian mirror found in /etc/apt/sources.list{,.d}: configure apt, "
                    "or load a base image yourself and pass --base-image")


def fd_hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return os.uname().machine


def free_port() -> int:
    """A TCP port nothing listens on at this moment on 127.0.0.1 (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
