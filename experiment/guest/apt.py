"""A private apt configuration under the cache: its own sources list (the host's mirror, suites bookworm,
trixie and sid), lists, archives and an empty dpkg status, so that fetching a kernel leaves the host's apt
state as it was. Signatures are checked as for the host's apt, against Debian's archive keyring."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from ..errors import UserError
from ..host import machine
from .cache import cache_dir, cache_path

SUITES = ("bookworm", "trixie", "sid")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE_S = 24 * 3600
FOLDER = "apt"  # in the cache
# The host's apt.conf.d is read (a proxy set there still applies); its hooks are not run for these lists.
APT_CONF = """\
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
Dir::Etc::SourceList "{root}/sources.list";
Dir::Etc::SourceParts "{root}/sources.list.d";
Dir::Etc::Preferences "{root}/preferences";
Dir::Etc::PreferencesParts "{root}/preferences.d";
Dir::State "{root}/state";
Dir::State::Lists "{lists}";
Dir::State::status "{root}/state/status";
Dir::Cache "{root}/cache";
Dir::Cache::archives "{root}/cache/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::GzipIndexes "false";
Acquire::Languages "none";
APT::Architecture "amd64";
APT::Architectures {{ "amd64"; }};
APT::Sandbox::User "root";
"""


def root() -> Path:
    """The private apt's folder, laid out on first use: sources.list, apt.conf, state and cache."""
    path = cache_dir(FOLDER)
    for sub in ("sources.list.d", "preferences.d", "cache/archives/partial", "debs"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (lists_folder() / "partial").mkdir(parents=True, exist_ok=True)
    (path / "state" / "status").touch()
    (path / "apt.conf").write_text(APT_CONF.format(root=path, lists=lists_folder()))
    mirror, _suite = machine.apt_mirror()
    (path / "sources.list").write_text("".join(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n"
                                               for suite in SUITES))
    return path


def apt_get(*args: str) -> str:
    """apt-get with the private configuration; a failure is a UserError with apt's last line."""
    machine.ensure_packages(["apt", "debian-archive-keyring", "dpkg"], "fetching Debian kernels for the guests")
    conf = root() / "apt.conf"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "-c", str(conf), "-q", *args], capture_output=True, text=True, env=env,
                          cwd=root() / "debs")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        raise UserError(f"apt-get {args[0]} for the guest kernels failed ({' '.join(tail)}): check the "
                        f"host's apt mirror in /etc/apt, or remove {root()} to start its apt state anew")
    return proc.stdout


def lists_folder() -> Path:
    """Where the private apt keeps its lists (not created: reading them lays out nothing)."""
    return cache_path(FOLDER, "state", "lists")


def index_files() -> dict[str, list[Path]]:
    """The suite's Packages index files the last update fetched, by suite (empty when never updated)."""
    lists = lists_folder()
    return {suite: sorted(lists.glob(f"*_dists_{suite}_main_binary-amd64_Packages")) for suite in SUITES}


def lists_age_s() -> float | None:
    """Seconds since the private lists were fetched; None when a suite has none."""
    files = index_files()
    if not all(files.values()):
        return None
    return time.time() - min(path.stat().st_mtime for paths in files.values() for path in paths)


def update(force: bool = False, say=print) -> None:
    """apt-get update of the private lists when forced, missing, or older than a day."""
    age = lists_age_s()
    if not force and age is not None and age < LISTS_MAX_AGE_S:
        return
    say(f"apt-get update of the guest kernels' lists ({', '.join(SUITES)}, private: {root()})")
    apt_get("update")


STANZA_START = re.compile(r"^Package: ", re.M)


def read_stanzas(path: Path, prefix: str = "linux-") -> list[dict[str, str]]:
    """The stanzas of a Packages file whose package name starts with prefix, as {field: value}
    (continuation lines kept, joined by newlines)."""
    text = path.read_text(errors="replace")
    found = []
    for chunk in text.split("\n\n"):
        if not chunk.startswith(f"Package: {prefix}"):
            continue
        fields: dict[str, str] = {}
        key = ""
        for line in chunk.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        found.append(fields)
    return found


def packages(prefix: str = "linux-") -> dict[str, list[dict[str, str]]]:
    """{suite: its stanzas of packages named prefix*} from the private lists."""
    return {suite: [s for path in paths for s in read_stanzas(path, prefix)]
            for suite, paths in index_files().items()}


def cached_packages(prefix: str = "linux-") -> dict[str, list[dict[str, str]]] | None:
    """packages() when an update has fetched every suite's lists, else None: what the dry run and doctor
    resolve against, since they never fetch."""
    return packages(prefix) if lists_age_s() is not None else None


def deb_pattern(package: str, version: str) -> str:
    """The file names apt-get download gives the package's .deb of that version (its epoch's colon escaped)."""
    return f"{package}_{version.replace(':', '%3a')}_*.deb"


def download(package: str, version: str) -> Path:
    """The package's .deb of that version in the private cache, fetched (and verified by apt) when missing."""
    debs = root() / "debs"
    pattern = deb_pattern(package, version)
    found = sorted(debs.glob(pattern))
    if not found:
        apt_get("download", f"{package}={version}")
        found = sorted(debs.glob(pattern))
    if not found:
        raise UserError(f"apt-get download {package}={version} left no .deb in {debs}: remove that folder and "
                        "try again")
    return found[0]


def extract(deb: Path, into: Path) -> None:
    """dpkg-deb -x of the package into the folder; a failure is a UserError naming the .deb."""
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"dpkg-deb -x {deb} failed ({proc.stderr.strip()[-200:]}): remove it from the cache "
                        "and try again")
