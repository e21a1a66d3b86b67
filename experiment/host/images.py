"""The server and client images: the base image (found, pulled or bootstrapped) and the build."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ..errors import UserError
from ..paths import IMAGES, ROOT
from . import machine

DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
TARGETS = ("server", "client")
LABEL = "org.epollbench"


@dataclass(frozen=True)
class BuiltImage:
    target: str
    tag: str
    id: str
    source_hash: str


def source_hash() -> str:
    """Hash of everything that goes into the images: Dockerfile and images/ (less build output)."""
    digest = hashlib.sha256()
    files = [ROOT / "Dockerfile"] + sorted(
        p for p in IMAGES.rglob("*") if p.is_file() and "build" not in p.relative_to(IMAGES).parts
        and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_state() -> dict:
    """The commit the tree is at and whether it has uncommitted changes."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit, "dirty": dirty}


def ensure_base_image(client: docker.DockerClient, base_image: str, log_dir: Path, say=print) -> dict:
    """The base image present locally: found, pulled, or bootstrapped with mmdebstrap. Says which."""
    try:
        image = client.images.get(base_image)
        origin = image.labels.get(f"{LABEL}.base-origin", "local")
        return {"name": base_image, "id": image.id, "origin": origin}
    except docker.errors.ImageNotFound:
        pass
    repo, _, tag = base_image.partition(":")
    try:
        say(f"pulling {base_image}")
        image = client.images.pull(repo, tag=tag or "latest")
        return {"name": base_image, "id": image.id, "origin": "pulled"}
    except docker.errors.APIError as pull_error:
        reason = str(pull_error.explanation or pull_error).splitlines()[0]
    if not repo.endswith("debian") or not tag:
        raise UserError(f"base image {base_image} is not local and cannot be pulled ({reason}): "
                        "load it with `docker load`, or use a debian:<suite>[-slim] base image")
    return _bootstrap_debian(client, base_image, tag.removesuffix("-slim"), log_dir, say, reason)


def _bootstrap_debian(client, base_image: str, suite: str, log_dir: Path, say, pull_reason: str) -> dict:
    why = f"bootstrapping {base_image} (it could not be pulled: {pull_reason})"
    machine.ensure_packages(["mmdebstrap"], why)
    mirror, _host_suite = machine.apt_mirror()
    say(f"bootstrapping {base_image} with mmdebstrap from the host's apt mirror ({pull_reason})")
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "mmdebstrap.log", "wb") as log:
        proc = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", suite, "-",
                               f"deb {mirror} {suite} main"], stdout=subprocess.PIPE, stderr=log)
    if proc.returncode != 0 or not proc.stdout:
        raise UserError(f"mmdebstrap could not bootstrap {suite} from the host's mirror: see "
                        f"{log_dir / 'mmdebstrap.log'}; or load {base_image} with `docker load`")
    repo, _, tag = base_image.partition(":")
    changes = [f'LABEL {LABEL}.base-origin="mmdebstrap --variant=minbase {suite}"', 'CMD ["bash"]']
    image_id = client.api.import_image_from_data(proc.stdout, repository=repo, tag=tag, changes=changes)
    image = client.images.get(base_image)
    return {"name": base_image, "id": image.id or image_id, "origin": f"mmdebstrap --variant=minbase {suite}"}


class BuildSteps:
    """The progress of a build from the legacy builder's output: each step that runs (not one the layer cache
    answers) is said as it starts, e.g. "server: Step 7/19 : RUN make -C /src", and at the end how many ran
    and how many came from the cache. Only the steps that do work are said and counted (RUN, COPY, ADD; the
    others set metadata in an instant)."""

    def __init__(self, target: str, say):
        self.target, self.say = target, say
        self.pending: str | None = None  # a step said once its next line shows it is not cached
        self.partial = ""
        self.steps = self.cached = 0

    def feed(self, text: str) -> None:
        """Some of the build's output (the "stream" of a chunk: any number of lines, or part of one)."""
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if line.startswith("Step ") and " : " in line:
                self._flush()
                if line.split(" : ", 1)[1].split(" ", 1)[0].upper() in ("RUN", "COPY", "ADD"):
                    self.steps += 1
                    self.pending = line.strip()
            elif self.pending is not None and line.strip():
                if line.strip() == "---> Using cache":
                    self.cached += 1
                else:
                    self.say(f"{self.target}: {self.pending[:150]}")
                self.pending = None

    def _flush(self) -> None:
        if self.pending is not None:  # a step whose next line never came: it ran
            self.say(f"{self.target}: {self.pending[:150]}")
            self.pending = None

    def done(self) -> None:
        self._flush()
        self.say(f"{self.target}: built: {self.steps - self.cached} steps ran, {self.cached} came from the "
                 "layer cache")


def build(client: docker.DockerClient, base_image: str, log_dir: Path, say=print) -> dict[str, BuiltImage]:
    """Builds the server and client targets (layer cache makes an unchanged tree take seconds), saying each
    step that runs (BuildSteps)."""
    base = ensure_base_image(client, base_image, log_dir, say)
    src = source_hash()
    git = git_state()
    labels = {f"{LABEL}.source-hash": src, f"{LABEL}.git-commit": git["commit"],
              f"{LABEL}.git-dirty": str(git["dirty"]).lower(), f"{LABEL}.base-image": base_image,
              f"{LABEL}.base-image-id": base["id"]}
    built = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        tag = f"epollbench/{target}:{src}"
        say(f"building image {tag}")
        with open(log_dir / f"build-{target}.log", "w") as log:
            image_id = _build_target(client, target, tag, base_image, labels, log, BuildSteps(target, say))
        client.images.get(image_id).tag(f"epollbench/{target}", "latest")
        built[target] = BuiltImage(target=target, tag=tag, id=image_id, source_hash=src)
    return built


def _build_target(client, target: str, tag: str, base_image: str, labels: dict, log, steps: BuildSteps) -> str:
    image_id = None
    stream = client.api.build(path=str(ROOT), target=target, tag=tag, buildargs={"BASE_IMAGE": base_image},
                              labels=labels, network_mode="host", rm=True, forcerm=True, decode=True)
    for chunk in stream:
        if "stream" in chunk:
            log.write(chunk["stream"])
            log.flush()
            steps.feed(chunk["stream"])
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        if "error" in chunk:
            log.write(chunk["error"] + "\n")
            log.flush()
            raise UserError(f"building the {target} image failed: {chunk['error'].strip()} "
                            f"(full log: {log.name})")
    if image_id is None:
        raise UserError(f"building the {target} image gave no image ID: see {log.name}")
    steps.done()
    return image_id


def image_metadata(client: docker.DockerClient, name: str) -> dict:
    image = client.images.get(name)
    return {"name": name, "id": image.id, "repo_digests": image.attrs.get("RepoDigests", []),
            "labels": image.labels, "created": image.attrs.get("Created")}

