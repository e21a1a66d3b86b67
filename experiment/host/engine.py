"""A Docker engine that answers: connect to it, or (root on Debian) install docker.io and start dockerd.

An engine over TCP is reached as the Docker CLI reaches it: with DOCKER_TLS_VERIFY set (to anything but
the empty string) or DOCKER_CERT_PATH set, over TLS with DOCKER_CERT_PATH's (default ~/.docker) ca.pem,
cert.pem and key.pem, the server's certificate verified against ca.pem when DOCKER_TLS_VERIFY is set: the
SDK's from-environment settings (docker.utils.kwargs_from_env), for DOCKER_HOST and for a URL given here.
Unlike the SDK left alone, the certificate is verified against that ca.pem even where REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE is set (requests lets those replace a session's CA for every request; the CLI ignores them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import docker.errors
import docker.tls
import docker.utils

from ..errors import UserError
from . import machine

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
START_TIMEOUT_S = 60
# The API version a client speaks to ask an engine which version it speaks (Docker 1.12's; the SDK's minimum).
MIN_API_VERSION = "1.24"


def default_url() -> str:
    """The engine a URL-less client talks to: DOCKER_HOST, else the local socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def tls_settings(url: str, environment: dict | None = None) -> docker.tls.TLSConfig | None:
    """The TLS settings the Docker CLI would use for url: for tcp:// when DOCKER_TLS_VERIFY or
    DOCKER_CERT_PATH says so (docker.utils.kwargs_from_env), else None. Missing certificate files are a
    UserError naming them."""
    if not url.startswith("tcp://"):
        return None
    try:
        tls = docker.utils.kwargs_from_env(environment=environment or dict(os.environ)).get("tls")
    except docker.errors.TLSParameterError as error:
        env = environment or os.environ
        where = env.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
        raise UserError(f"TLS for {url} (DOCKER_TLS_VERIFY={env.get('DOCKER_TLS_VERIFY', '')!r}): {error}; put "
                        f"ca.pem, cert.pem and key.pem in {where}, or set DOCKER_CERT_PATH to their folder") from None
    return tls or None


def _verify_with_own_ca(session) -> None:
    """Keeps the CA the TLS settings gave the session (a requests.Session) for its requests: requests would let
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE override it, and the engine's certificate would then be checked
    against the system's CAs instead of DOCKER_CERT_PATH's ca.pem."""
    merge = session.merge_environment_settings

    def merge_keeping_ca(url, proxies, stream, verify, cert):
        settings = merge(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = session.verify
        return settings

    session.merge_environment_settings = merge_keeping_ca


def _ping(base_url: str | None, timeout: int = 600, plain: bool = False) -> docker.DockerClient | None:
    url = base_url or DEFAULT_SOCKET
    tls = None if plain else tls_settings(url)
    try:
        if tls is not None and tls.verify and tls.ca_cert:
            # The API version is asked of the engine (as the SDK's "auto" does) once the session keeps its CA.
            asking = docker.APIClient(base_url=url, timeout=timeout, tls=tls, version=MIN_API_VERSION)
            _verify_with_own_ca(asking)
            version = asking.version(api_version=False)["ApiVersion"]
            asking.close()
            client = docker.DockerClient(base_url=url, timeout=timeout, tls=tls, version=version)
            _verify_with_own_ca(client.api)
        else:
            client = docker.DockerClient(base_url=url, timeout=timeout, tls=tls or False)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        return None


def answers(base_url: str | None, timeout: int, plain: bool = False) -> docker.DockerClient | None:
    """A client of the engine at base_url (default DOCKER_HOST, else the local socket) if it answers a ping
    within timeout seconds, else None; never starts anything. plain: without TLS whatever DOCKER_TLS_VERIFY
    says (a guest's engine, which serves plain TCP on a forwarded loopback port)."""
    client = _ping(base_url or os.environ.get("DOCKER_HOST"), timeout, plain)
    if client is not None:
        client.api.timeout = 600
    return client


def connect(base_url: str | None = None, log_dir: Path | None = None, say=print,
            plain: bool = False) -> docker.DockerClient:
    """A client of the engine at base_url (default: the local socket, started here when needed); plain: as for
    answers()."""
    client = _ping(base_url or os.environ.get("DOCKER_HOST"), plain=plain)
    if client:
        return client
    local = (base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET) == DEFAULT_SOCKET
    if not local:
        url = base_url or os.environ.get("DOCKER_HOST")
        how = " over TLS (DOCKER_TLS_VERIFY/DOCKER_CERT_PATH)" if tls_settings(url or "") else ""
        raise UserError(f"no Docker engine answers at {url}{how}: start it there, or check the URL"
                        + ("" if how or not (url or "").startswith("tcp://") else
                           " (an engine serving TLS needs DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH, as for the "
                           "docker CLI)"))
    if not machine.is_debian_root():
        raise UserError("no Docker engine answers at /var/run/docker.sock: start dockerd "
                        "(or run as root on Debian so epollbench can install docker.io and start it)")
    machine.ensure_packages(["docker.io"], "running the sweeps in containers")
    log_dir = log_dir or Path("/var/log")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "dockerd.log"
    say(f"starting dockerd (log: {log_path})")
    with open(log_path, "ab") as log:
        subprocess.Popen([shutil.which("dockerd") or "/usr/sbin/dockerd"], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        client = _ping(None)
        if client:
            return client
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise UserError(f"dockerd did not answer within {START_TIMEOUT_S} s: see {log_path} ({' | '.join(tail)})")


def copy_images(src: docker.DockerClient, dst: docker.DockerClient, refs: list[str] | tuple[str, ...]) -> dict:
    """Copies images from one engine to another, `docker save | docker load` streamed through this process,
    so that a second engine (another machine's, or a second dockerd here) runs the very same images.
    Returns {ref: "copied" or "present"}; one dst already has with the same ID is not sent again."""
    done = {}
    for ref in refs:
        try:
            image = src.images.get(ref)
        except docker.errors.ImageNotFound:
            raise UserError(f"no image {ref} on the source engine to copy: build it there first") from None
        try:
            if dst.images.get(ref).id == image.id:
                done[ref] = "present"
                continue
        except docker.errors.ImageNotFound:
            pass
        try:
            dst.images.load(src.api.get_image(ref))
        except docker.errors.DockerException as error:
            raise UserError(f"copying image {ref} to the other engine failed: {error}") from None
        if dst.images.get(ref).id != image.id:
            raise UserError(f"image {ref} arrived on the other engine with another ID: "
                            f"{dst.images.get(ref).id} instead of {image.id}")
        done[ref] = "copied"
    return done


# What a container on an engine sees of its host: the open-file limit its containers get, the CPUs they may
# use, the kernel, and the boot id, which two engines on one host share. `sh` and coreutils only.
PROBE_SCRIPT = """\
echo "fd_hard_limit=$(ulimit -H -n)"
echo "nr_open=$(cat /proc/sys/fs/nr_open)"
echo "cpu_list=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"
echo "nproc=$(nproc)"
echo "kernel=$(uname -r)"
echo "machine=$(uname -m)"
echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "memory_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
"""


def probe(client: docker.DockerClient, image: str) -> dict:
    """The host facts of an engine, from a container of image on host networking (see PROBE_SCRIPT)."""
    try:
        out = client.containers.run(image, ["sh", "-c", PROBE_SCRIPT], remove=True, stdout=True, stderr=True,
                                    network_mode="host")
    except docker.errors.DockerException as error:
        raise UserError(f"cannot run {image} on the engine to read its limits and CPUs: {error}") from None
    facts = dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)
    fd_limit = facts.get("fd_hard_limit", "")
    return {"fd_hard_limit": int(fd_limit) if fd_limit.isdigit() else int(facts["nr_open"]),
            "cpu_list": facts.get("cpu_list", "").strip(), "cpus": len(expand_cpu_list(facts.get("cpu_list", ""))),
            "nproc": int(facts.get("nproc") or 0), "kernel": facts.get("kernel"), "machine": facts.get("machine"),
            "cpu_model": (facts.get("cpu_model") or "").strip() or None,
            "memory_bytes": int(facts["memory_kb"]) * 1024 if facts.get("memory_kb", "").isdigit() else None,
            "hostname": facts.get("hostname"), "boot_id": facts.get("boot_id")}


def expand_cpu_list(text: str) -> list[int]:
    """The CPUs of a kernel CPU list such as "0-3,6"."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus += range(int(low), int(high or low) + 1)
    return cpus


def is_local(url: str | None) -> bool:
    """Whether an engine URL is a socket on this machine (its containers share our limits and CPUs)."""
    return (url or default_url()).startswith("unix://")


def facts(client: docker.DockerClient, url: str | None, probed: dict) -> dict:
    """An engine's metadata: its URL, Docker version and info, and its host facts as probe() read them."""
    version, info = client.version(), client.info()
    return {"url": url or default_url(), "name": info.get("Name"),
            "id": info.get("ID"), "docker_version": version.get("Version"), "api_version": version.get("ApiVersion"),
            "os": info.get("OperatingSystem"), "kernel_version": info.get("KernelVersion"), "ncpu": info.get("NCPU"),
            "mem_total": info.get("MemTotal"), "cgroup_version": info.get("CgroupVersion"),
            "cgroup_driver": info.get("CgroupDriver"), "docker_root_dir": info.get("DockerRootDir"), **probed}
