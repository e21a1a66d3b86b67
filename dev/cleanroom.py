"""`./run clean-room`: CI's `.ci/run` in a fresh clone of HEAD, inside a throwaway container that has Debian's
base system and python3 and nothing else, so that every package, tool and service the tests use must be
installed by the project itself (.ci/run -> ./run -> ./run test), as on a fresh machine; then, in the same
container, one tiny reproduce from a freshly bootstrapped base image, so that its images build with no cache.

The container runs on the host's Docker engine and uses it through its socket (so installing and starting the
engine itself is not covered here, only on a real fresh machine), host networking, the host's fd limit and
the host's pip settings. The tests start containers on that engine, which see the host's file system: the
clone and TMPDIR are at the same absolute paths inside the container as on the host. What cannot run in an
unprivileged container (a second dockerd, host sysctls, cgroup files, firewall rules) skips through the
needs_host marker (tests/conftest.py), which lists those skips at the end of the pytest run; under CI=true a
skip for anything not installed is a failure (tests/tools.py).
"""

from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.types

from experiment.errors import UserError
from experiment.host import engine, images, machine
from experiment.paths import ROOT

IMAGE = "epollbench-cleanroom/python3"
# pip's configuration files: global, and the user's under HOME (PIP_CONFIG_FILE names one more).
PIP_CONFS = (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"))
USER_PIP_CONFS = (".config/pip/pip.conf", ".pip/pip.conf")
CONTAINER_HOME = Path("/root")
# Where the CA bundle pip is given goes: no package owns this path. At its own path (Debian's
# /etc/ssl/certs/ca-certificates.crt), installing ca-certificates would regenerate it without the CAs the host
# added (the host has the package already, so the host's bundle stays).
PIP_CERT = Path("/etc/epollbench-cleanroom/pip-cert.pem")
SHM_SIZE = "1g"              # chromium's renderer needs more than Docker's 64 MB of /dev/shm
INTERRUPT_GRACE_S = 60       # how long the tests get to remove what they started after a Ctrl-C
REPRODUCE = ["--sweeps", "pipetest", "--pipes", "10", "--variants", "up", "--no-report"]
# Only python3 on top of the base: python3-venv and everything after it is .ci/run's and ./run's to install.
DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
"""


@dataclass
class Step:
    name: str
    exit_code: int | None = None
    seconds: float = 0.0


def say(line: str) -> None:
    print(f"clean room: {line}", flush=True)


def run() -> int:
    """Runs the clean room; returns .ci/run's exit code (1 if only the reproduce failed). A Ctrl-C or a
    SIGTERM removes what it made."""
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    client = engine.connect(log_dir=ROOT / "results" / ".engine-logs", say=say)
    socket = _socket_path()
    head, subject = _git("rev-parse", "HEAD"), _git("log", "-1", "--format=%s")
    changed = _git("status", "--porcelain").splitlines()
    if changed:
        say(f"WARNING: the working tree has {len(changed)} uncommitted change(s), which the clean room does not "
            f"see: it tests the committed HEAD {head[:12]} (commit first to test them)")
    stamp = time.strftime("%Y%m%dt%H%M%S", time.gmtime())
    work = Path(tempfile.mkdtemp(prefix=f"epollbench-cleanroom-{stamp}-")).resolve()
    clone = work / "epollbench"
    base_tag = f"epollbench-cleanroom-{stamp}/{images.DEFAULT_BASE_IMAGE}"
    steps, transcript, fresh = [], bytearray(), None
    container = None
    try:
        say(f"cloning HEAD {head[:12]} ({subject}) into {clone}")
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True)
        (work / "tmp").mkdir()
        image = _image(client, work)
        container = _container(client, image, work, socket, f"epollbench-cleanroom-{stamp}")
        steps.append(_step(client, container, ".ci/run", ["bash", ".ci/run"], clone, transcript))
        before = {str(image.id) for image in client.images.list(all=True)}
        steps.append(_step(client, container, "reproduce", ["./run", "reproduce", "--base-image", base_tag,
                                                             *REPRODUCE], clone, transcript))
        fresh = _fresh_build(client, base_tag, before)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if container is not None:
            _quietly(container.remove, force=True)
        _remove_fresh_images(client, base_tag)
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            say(f"could not remove all of {work}: remove it by hand")
        _summary(head, steps, fresh, transcript, time.monotonic() - started)
    ci, reproduce = steps
    if ci.exit_code:
        return ci.exit_code
    return 1 if reproduce.exit_code or not fresh else 0


def pip_settings(environ: dict[str, str], confs: tuple[Path, ...] = PIP_CONFS
                 ) -> tuple[dict[str, str], dict[Path, Path], list[Path]]:
    """The host's pip settings: its PIP_* variables; the files to copy in, {host path: path in the container}
    (its pip configuration files and the files they or the variables name, such as a constraints file; the
    CA bundle goes to PIP_CERT, which the variables then name); and the folders they name, to mount
    read-only at the same paths (find-links, a file:// index)."""
    env = {k: v for k, v in environ.items() if k.startswith("PIP_")}
    values = list(env.values())
    files: dict[Path, Path] = {}
    cert_values: list[str | None] = []
    home = Path(environ.get("HOME", "/root"))
    extra = (Path(environ["PIP_CONFIG_FILE"]),) if "PIP_CONFIG_FILE" in environ else ()
    for conf in (*confs, *(home / name for name in USER_PIP_CONFS), *extra):
        if not conf.is_file():
            continue
        # The user's configuration goes to the container's user, root.
        files[conf] = CONTAINER_HOME / conf.relative_to(home) if conf.is_relative_to(home) else conf
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(conf)
        values += [v for section in parser.sections() for v in parser[section].values()]
        cert_values += [parser[section].get("cert") for section in parser.sections()]
    certs = [env["PIP_CERT"]] if "PIP_CERT" in env else [c for c in cert_values if c]
    if certs and Path(certs[0]).is_file():
        files[Path(certs[0])] = PIP_CERT
        env["PIP_CERT"] = str(PIP_CERT)
    folders: list[Path] = []
    for value in values:
        for word in value.split():
            path = Path(word.removeprefix("file://"))
            if not path.is_absolute():
                continue
            if word.startswith("file://") and path.name == "simple":
                path = path.parent  # a local index's pages link to files beside it (../../files/…)
            if path.is_dir() and path not in folders:
                folders.append(path)
            elif path.is_file() and path not in files:
                files[path] = path
    return env, files, folders


TRACEFS = Path("/sys/kernel/tracing")


def container_options(work: Path, socket: str, fd_limit: int, environ: dict[str, str],
                      confs: tuple[Path, ...] = PIP_CONFS) -> dict:
    """docker create's options for the clean room, less the image and the name."""
    pip_env, _files, folders = pip_settings(environ, confs)
    volumes = {socket: {"bind": engine.DEFAULT_SOCKET.removeprefix("unix://"), "mode": "rw"},
               str(work): {"bind": str(work), "mode": "rw"}}
    for folder in folders:
        volumes[str(folder)] = {"bind": str(folder), "mode": "ro"}
    # A fresh Debian machine has tracefs mounted (systemd does it); a container does not, and perf's syscall
    # tracepoints (the anatomy) need it.
    if TRACEFS.is_dir() and any(TRACEFS.iterdir()):
        volumes[str(TRACEFS)] = {"bind": str(TRACEFS), "mode": "rw"}
    return {
        # SIGINT ignored: a Ctrl-C is passed on with `kill -INT -1`, which must not end the container first.
        "command": ["sh", "-c", "trap '' INT; exec sleep infinity"],
        "init": True,  # reaps what the tests leave orphaned
        "network_mode": "host",
        # On a machine perf runs as root (the anatomy's tests); in a container perf_event_open needs Docker's
        # seccomp filter lifted and CAP_SYS_ADMIN, and perf record's ring buffers locked memory beyond the
        # container's limit (CAP_IPC_LOCK; the host refuses a higher RLIMIT_MEMLOCK), and /proc/kallsyms's
        # addresses for the kernel frames the folding goes by (CAP_SYSLOG), as the machine's root has.
        "security_opt": ["seccomp=unconfined"],
        "cap_add": ["SYS_ADMIN", "IPC_LOCK", "SYSLOG"],
        "ulimits": [docker.types.Ulimit(name="nofile", soft=fd_limit, hard=fd_limit)],
        "shm_size": SHM_SIZE,
        "environment": {**pip_env, "CI": "true", "EPOLLBENCH_CLEAN_ROOM": "1", "TMPDIR": str(work / "tmp")},
        "volumes": volumes,
        "working_dir": str(work / "epollbench"),
    }


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _socket_path() -> str:
    url = engine.default_url()
    if not url.startswith("unix://"):
        raise UserError(f"the clean room mounts the Docker engine's socket; DOCKER_HOST is {url}: "
                        "unset it, or point it at a unix:// socket")
    return url.removeprefix("unix://")


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {ROOT}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _image(client: docker.DockerClient, work: Path) -> str:
    """The project's Debian base image (found, or bootstrapped as for the sweeps) plus python3."""
    base = images.ensure_base_image(client, images.DEFAULT_BASE_IMAGE, work / "logs", say=say)
    tag = f"{IMAGE}:{base['id'].removeprefix('sha256:')[:12]}"
    say(f"image {tag}: {images.DEFAULT_BASE_IMAGE} ({base['origin']}) and python3")
    output = []
    for chunk in client.api.build(fileobj=io.BytesIO(DOCKERFILE.encode()), tag=tag, rm=True, forcerm=True,
                                  buildargs={"BASE_IMAGE": images.DEFAULT_BASE_IMAGE}, network_mode="host",
                                  decode=True):
        output.append(chunk.get("stream", ""))
        if "error" in chunk:
            raise UserError(f"building {tag} failed: {chunk['error'].strip()} ({''.join(output)[-300:]})")
    return tag


def _container(client, image: str, work: Path, socket: str, name: str):
    _env, files, _folders = pip_settings(dict(os.environ))
    container = client.containers.create(image, name=name, **container_options(work, socket, machine.fd_hard_limit(),
                                                                                  dict(os.environ)))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", dereference=True) as tar:
        for path, inside in files.items():
            tar.add(path, arcname=str(inside).lstrip("/"))
    container.put_archive("/", archive.getvalue())
    container.start()
    return container


def _step(client, container, name: str, argv: list[str], clone: Path, transcript: bytearray) -> Step:
    """Runs argv in the container, streaming its output; a Ctrl-C passes SIGINT on and waits for the tests'
    own clean-up (their containers run on the host's engine) before it stops the clean room."""
    say(f"{name}: {' '.join(argv)}")
    step, started = Step(name), time.monotonic()
    exec_id = client.api.exec_create(container.id, argv, workdir=str(clone))["Id"]
    try:
        for chunk in client.api.exec_start(exec_id, stream=True):
            transcript.extend(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        say(f"interrupted: SIGINT to everything in the container; waiting up to {INTERRUPT_GRACE_S} s for the "
            "tests to remove what they started (Ctrl-C again to stop at once)")
        client.api.exec_start(client.api.exec_create(container.id, ["sh", "-c", "kill -INT -1"])["Id"])
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while client.api.exec_inspect(exec_id)["Running"] and time.monotonic() < deadline:
            time.sleep(0.5)
        raise
    step.exit_code = client.api.exec_inspect(exec_id)["ExitCode"]
    step.seconds = time.monotonic() - started
    say(f"{name}: exit {step.exit_code} after {_duration(step.seconds)}")
    return step


def _fresh_build(client, base_tag: str, before: set[str]) -> dict | None:
    """The bootstrapped base and the images the reproduce built on it, when that base's ID is new to the
    engine: then no layer on it can have come from an earlier build's cache (a layer's cache key starts
    from its parent's ID)."""
    try:
        base = client.images.get(base_tag)
    except docker.errors.ImageNotFound:
        return None
    built = client.images.list(filters={"label": f"{images.LABEL}.base-image-id={base.id}"})
    origin = base.labels.get(f"{images.LABEL}.base-origin", "")
    if not origin.startswith("mmdebstrap") or not built or base.id in before:
        return None
    return {"origin": origin, "images": sorted(t for image in built for t in image.tags)}


def _remove_fresh_images(client, base_tag: str) -> None:
    """The bootstrapped base and every image built on it, intermediate ones too. The reproduce's images took
    the host's epollbench/*:<hash> tags, which the next build gives back to the usual base's images from
    the cache."""
    try:
        base = client.images.get(base_tag)
    except docker.errors.ImageNotFound:
        return
    for image_id in [*_descendants(client, base.id), base.id]:
        try:
            client.images.remove(image_id, force=True)
        except docker.errors.ImageNotFound:
            pass  # removed with its child: an untagged parent goes with its last child
        except docker.errors.DockerException as error:
            say(f"clean-up: {error}")


def _descendants(client, base_id: str) -> list[str]:
    """The images whose parent chain reaches base_id, children before their parents."""
    parent = {image.id: image.attrs.get("Parent") for image in client.images.list(all=True)}
    depth: dict[str, int] = {}
    for image_id in parent:
        chain, node = 0, parent[image_id]
        while node and node != base_id:
            chain, node = chain + 1, parent.get(node)
        if node == base_id:
            depth[image_id] = chain
    return sorted(depth, key=lambda image_id: depth[image_id], reverse=True)


def _quietly(action, *args, **kwargs) -> None:
    try:
        action(*args, **kwargs)
    except docker.errors.DockerException as error:
        say(f"clean-up: {error}")


def _summary(head: str, steps: list[Step], fresh: dict | None, transcript: bytearray, total_s: float) -> None:
    text = transcript.decode(errors="replace")
    closing = re.findall(r"^=+ (.*\d+ (?:passed|failed|errors?)\b.*) =+$", text, re.M)
    section = re.search(r"^=+ (clean-room skips: \d+ .*?) =+\n(.*?)(?=^=|\Z)", text, re.M | re.S)
    print("\n" + "=" * 30 + " clean room summary " + "=" * 30)
    print(f"HEAD {head[:12]}, total {_duration(total_s)}")
    for step in steps:
        print(f"{step.name}: exit {step.exit_code} in {_duration(step.seconds)}")
    if closing:
        print(f"pytest: {closing[-1]}")
    if section:
        print(section.group(1))
        print(section.group(2).rstrip())
    if len(steps) == 2:
        print("reproduce's images: " + (f"built with no earlier cache on a base bootstrapped now "
                                        f"({fresh['origin']}): {', '.join(fresh['images'])}"
                                        if fresh else "NOT built on a base bootstrapped now"))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
