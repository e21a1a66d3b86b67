"""Publishing the server and client images, and obtaining published images instead of building them.

`invoke publish --to REGISTRY/NAME:TAG` pushes the two images as REGISTRY/NAME-server:TAG and
REGISTRY/NAME-client:TAG (TAG defaults to latest) and writes published.json (default: ./published.json).
`invoke publish --to FILE.tar.gz` (or .tgz) writes `docker save` of both images, gzipped, and
FILE.published.json beside it.  Both stream: no archive is held in memory.

published.json names each image, its digest and its image ID, with the git commit, source hash and base image
the images were built from (read from their labels, so they describe the images, not the checkout).
"digest_kind" says what "digest" is: "manifest" for a registry (the sha256 manifest digest after the push,
what `docker pull REPO@DIGEST` takes), "image-id" for an archive (the config digest `docker load` restores).

`invoke reproduce --image REF` / `--from-archive FILE` pulls or loads the images; with `--published FILE`
(found beside an archive when not given) their digests and image IDs must match it, or the run stops.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.utils import parse_repository_tag

from ..errors import UserError
from ..model import utc_now
from . import images
from .images import LABEL, TARGETS, BuiltImage

RECORD_FORMAT = 1
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
CHUNK_BYTES = 1 << 20
# gzip level 1: a slightly larger archive than gzip's default level, written several times faster (README).
GZIP_LEVEL = 1


def is_archive(target: str | Path) -> bool:
    return str(target).endswith(ARCHIVE_SUFFIXES)


def image_refs(ref: str) -> dict[str, str]:
    """REGISTRY/NAME[:TAG] -> {"server": "REGISTRY/NAME-server:TAG", "client": "REGISTRY/NAME-client:TAG"}."""
    if "@" in ref:
        raise UserError(f"{ref}: give a tag, not a digest (REGISTRY/NAME:TAG); "
                        "published.json pins the digests")
    repo, tag = parse_repository_tag(ref)
    if not repo or repo.endswith("/"):
        raise UserError(f"{ref!r}: give the images as REGISTRY/NAME:TAG, e.g. 127.0.0.1:5000/epollbench:v1")
    return {target: f"{repo}-{target}:{tag or 'latest'}" for target in TARGETS}


def default_record_path(to: str | Path) -> Path:
    """Where published.json goes: FILE.published.json beside an archive, else ./published.json."""
    if is_archive(to):
        path = Path(to)
        stem = next(path.name[:-len(s)] for s in ARCHIVE_SUFFIXES if path.name.endswith(s))
        return path.with_name(f"{stem}.published.json")
    return Path("published.json")


def publish(client: docker.DockerClient, built: dict[str, BuiltImage], to: str,
            record_path: Path | None = None, say=print) -> Path:
    """Pushes (REGISTRY/NAME:TAG) or saves (FILE.tar.gz) the images and writes published.json; returns its path."""
    record = save(client, built, Path(to), say) if is_archive(to) else push(client, built, to, say)
    if record["git"]["dirty"]:
        say("warning: the images were built from a tree with uncommitted changes (published.json says so)")
    path = record_path or default_record_path(to)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    say(f"wrote {path}")
    return path


def push(client: docker.DockerClient, built: dict[str, BuiltImage], ref: str, say=print) -> dict:
    """Tags the images REGISTRY/NAME-<target>:TAG, pushes them, and returns the published.json record."""
    refs = image_refs(ref)
    entries = {}
    for target in TARGETS:
        image = built[target]
        repo, tag = parse_repository_tag(refs[target])
        try:
            client.api.tag(image.id, repo, tag)
        except docker.errors.APIError as e:
            raise UserError(f"cannot tag {refs[target]}: {_reason(e)}: give --to as REGISTRY/NAME:TAG") from None
        say(f"pushing {refs[target]}")
        entries[target] = {"ref": refs[target], "digest": _push_one(client, repo, tag, ref),
                           "image_id": image.id}
    return _record(client, built, kind="registry", to=ref, digest_kind="manifest", entries=entries)


def _push_one(client: docker.DockerClient, repo: str, tag: str | None, published_ref: str) -> str:
    digest = None
    try:
        for chunk in client.api.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise UserError(_registry_problem("push", f"{repo}:{tag}", chunk["error"], published_ref))
            digest = chunk.get("aux", {}).get("Digest") or digest
    except docker.errors.APIError as e:
        raise UserError(_registry_problem("push", f"{repo}:{tag}", _reason(e), published_ref)) from None
    digest = digest or _repo_digest(client.images.get(f"{repo}:{tag}"), repo)
    if not digest:
        raise UserError(f"the registry gave no digest for {repo}:{tag}: push it again")
    return digest


def save(client: docker.DockerClient, built: dict[str, BuiltImage], path: Path, say=print) -> dict:
    """Streams `docker save` of both images through gzip into path; returns the published.json record."""
    path = Path(path)
    if not is_archive(path):
        raise UserError(f"{path}: name the archive FILE.tar.gz or FILE.tgz")
    names = [built[target].tag for target in TARGETS]
    say(f"saving {' and '.join(names)} to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        # The SDK saves one image at a time; its low-level client's private calls fetch both in one archive.
        api: Any = client.api
        response = api._get(api._url("/images/get"), params={"names": names}, stream=True)
        api._raise_for_status(response)
        # No time or file name in the gzip header. (Two saves still differ: dockerd orders manifest.json at
        # random; image IDs, not archive bytes, identify the images.)
        with open(partial, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                       compresslevel=GZIP_LEVEL, mtime=0) as archive:
            for chunk in response.iter_content(CHUNK_BYTES):
                archive.write(chunk)
        partial.replace(path)
    except docker.errors.APIError as e:
        raise UserError(f"docker save of {' '.join(names)} failed: {_reason(e)}: build the images first "
                        "(`invoke build-images`)") from None
    except requests.exceptions.RequestException as e:
        raise UserError(f"docker save of {' '.join(names)} broke off ({_reason(e)}): check that dockerd runs, "
                        "and publish again") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}: choose a writable place with free space") from None
    finally:
        partial.unlink(missing_ok=True)
    entries = {target: {"ref": built[target].tag, "digest": built[target].id, "image_id": built[target].id}
               for target in TARGETS}
    record = _record(client, built, kind="archive", to=str(path), digest_kind="image-id", entries=entries)
    record["archive"] = {"file": path.name, "bytes": path.stat().st_size, "sha256": _file_sha256(path)}
    return record


def _record(client, built: dict[str, BuiltImage], kind: str, to: str, digest_kind: str, entries: dict) -> dict:
    labels = _labels(client, built["server"].id, built["server"].tag)
    return {"format": RECORD_FORMAT, "kind": kind, "to": to, "published_at": utc_now(),
            "digest_kind": digest_kind, "images": entries, **_build_facts(labels)}


def _build_facts(labels: dict) -> dict:
    return {"git": {"commit": labels.get(f"{LABEL}.git-commit", "unknown"),
                    "dirty": labels.get(f"{LABEL}.git-dirty") == "true"},
            "source_hash": labels.get(f"{LABEL}.source-hash"),
            "base_image": {"name": labels.get(f"{LABEL}.base-image"), "id": labels.get(f"{LABEL}.base-image-id")}}


def _labels(client, image_id: str, ref: str) -> dict:
    labels = client.images.get(image_id).labels or {}
    if f"{LABEL}.source-hash" not in labels:
        raise UserError(f"{ref} is not an epollbench image (it has no {LABEL} labels): "
                        "publish images built by `invoke build-images`")
    return labels


# --- obtaining --------------------------------------------------------------------------------------------

def obtain(client: docker.DockerClient, image_ref: str | None = None, archive: str | Path | None = None,
           published_json: str | Path | None = None, say=print) -> tuple[dict[str, BuiltImage], dict]:
    """The published images, pulled (image_ref) or loaded (archive), checked against published_json.

    Returns (built, provenance): built has the shape of images.build's result; provenance is for run.json.
    With only published_json, the images are taken from where it says they were published."""
    if image_ref and archive:
        raise UserError("give --image or --from-archive, not both")
    record_path = Path(published_json) if published_json else None
    if record_path is None and archive and default_record_path(archive).is_file():
        record_path = default_record_path(archive)
    record = read_record(record_path) if record_path else None
    if not image_ref and not archive:
        if record is None or record_path is None:
            raise UserError("no images to use: give --image REGISTRY/NAME:TAG, --from-archive FILE.tar.gz "
                            "or --published FILE")
        if record["kind"] == "registry":
            image_ref = record["to"]
        else:
            archive = record_path.parent / record["archive"]["file"]
    if image_ref:
        found, digest_kind = _pull(client, image_ref, say), "manifest"
    else:
        found, digest_kind = _load(client, Path(str(archive)), record, say), "image-id"
    if record and record_path:
        say(f"checking the images against {record_path}")
        _verify(found, record, digest_kind, record_path)
    labels = {target: _labels(client, entry["image_id"], entry["ref"]) for target, entry in found.items()}
    built = {target: BuiltImage(target=target, tag=entry["ref"], id=entry["image_id"],
                                source_hash=labels[target][f"{LABEL}.source-hash"])
             for target, entry in found.items()}
    checkout = images.source_hash()
    if built["server"].source_hash != checkout:
        say(f"note: the images were built from other sources ({built['server'].source_hash}) than this "
            f"checkout ({checkout}); the run records both")
    provenance = {"source": "registry" if image_ref else "archive",
                  "ref": image_ref or str(Path(str(archive)).resolve()), "digest_kind": digest_kind,
                  "images": found, "digests": {t: e["digest"] for t, e in found.items()},
                  "verified": record is not None,
                  "published_json": str(record_path.resolve()) if record_path else None,
                  "published_at": record["published_at"] if record else None,
                  **_build_facts(labels["server"]), "checkout_source_hash": checkout}
    return built, provenance


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}: give the published.json written by "
                        "`invoke publish`") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON ({e}): give the published.json written by `invoke publish`") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or \
            not all(t in record.get("images", {}) for t in TARGETS):
        raise UserError(f"{path} is not a published.json of format {RECORD_FORMAT} with server and client "
                        "images: give the file `invoke publish` wrote")
    return record


def _pull(client: docker.DockerClient, ref: str, say) -> dict:
    found = {}
    for target, target_ref in image_refs(ref).items():
        repo, tag = parse_repository_tag(target_ref)
        say(f"pulling {target_ref}")
        digest = None
        try:
            for chunk in client.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise UserError(_registry_problem("pull", target_ref, chunk["error"], ref))
                status = chunk.get("status", "")
                if status.startswith("Digest: "):
                    digest = status.removeprefix("Digest: ").strip()
        except docker.errors.APIError as e:
            raise UserError(_registry_problem("pull", target_ref, _reason(e), ref)) from None
        image = client.images.get(target_ref)
        found[target] = {"ref": target_ref, "digest": digest or _repo_digest(image, repo), "image_id": image.id}
    return found


def _load(client: docker.DockerClient, path: Path, record: dict | None, say) -> dict:
    if not path.is_file():
        raise UserError(f"no archive at {path}: copy the FILE.tar.gz that `invoke publish` wrote")
    say(f"loading {path}")
    archive = _Gunzipped(path)
    tags, failure = [], None
    try:
        for chunk in client.api.load_image(archive):
            match = re.match(r"Loaded image: (\S+)", chunk.get("stream", ""))
            if match:
                tags.append(match.group(1))
            failure = chunk.get("error") or failure
    except (docker.errors.DockerException, OSError) as e:
        failure = _reason(e)
    if archive.error:
        raise UserError(f"{path} is damaged ({archive.error}): copy it again (published.json has its sha256)")
    if failure:
        raise UserError(f"docker load of {path} failed ({failure}): copy it again, or publish it again "
                        "with `invoke publish --to FILE.tar.gz`")
    loaded = {tag: client.images.get(tag).id for tag in tags}
    found = {}
    for target in TARGETS:
        published = record["images"][target] if record else None
        for tag, image_id in loaded.items():
            if _is_target(tag, image_id, target, published):
                found[target] = {"ref": tag, "digest": image_id, "image_id": image_id}
                break
        if target not in found:
            wanted = f" tagged {published['ref']} or with ID {published['image_id']}" if published else ""
            raise UserError(f"{path} has no {target} image{wanted} (it has {', '.join(loaded) or 'no tagged image'}): "
                            "give the archive written by `invoke publish --to FILE.tar.gz` with its published.json")
    return found


class _Gunzipped:
    """The archive's tar stream, chunk by chunk, for the body of `docker load`.

    A damaged archive ends the stream early and is kept in `error`: raised inside the upload it would reach
    the caller wrapped in a connection error."""

    def __init__(self, path: Path):
        self.path = path
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            with gzip.open(self.path, "rb") as stream:
                yield from _chunks(stream)
        except (OSError, EOFError) as e:
            self.error = e


def _chunks(stream) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


def _is_target(tag: str, image_id: str | None, target: str, published: dict | None) -> bool:
    """Whether a loaded image is the target's: the published one by tag or ID, else by name
    (.../server:TAG or .../NAME-server:TAG)."""
    if published:
        return tag == published["ref"] or image_id == published["image_id"]
    repo = parse_repository_tag(tag)[0].rsplit("/", 1)[-1]
    return repo == target or repo.endswith(f"-{target}")


def _verify(found: dict, record: dict, digest_kind: str, record_path: Path) -> None:
    """Image IDs always; the digests too when both are of one kind: registry manifests, or for an archive
    the image IDs again (published.json's digest must not say other than its image_id)."""
    for target in TARGETS:
        published, got = record["images"][target], found[target]
        pairs = [("image ID", published["image_id"], got["image_id"])]
        if digest_kind == record["digest_kind"]:
            pairs.insert(0, ("digest", published["digest"], got["digest"]))
        for what, want, have in pairs:
            if want != have:
                raise UserError(f"the {target} image {got['ref']} has {what} {have} but {record_path} says {want}: "
                                "it is not the published image; use the published.json of this publication, "
                                "or publish again")


def _repo_digest(image, repo: str) -> str | None:
    for repo_digest in image.attrs.get("RepoDigests", []):
        name, _, digest = repo_digest.partition("@")
        if name == repo:
            return digest
    return None


def _reason(error: Exception) -> str:
    text = str(getattr(error, "explanation", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _registry_problem(action: str, ref: str, message: str, published_ref: str) -> str:
    """One line naming what went wrong with the registry and the fix."""
    reason = message.strip().splitlines()[0] if message.strip() else "no reason given"
    first, slash, _rest = ref.partition("/")
    # Docker's rule: the first component names a registry when it has a dot or a port, or is localhost.
    registry = first if slash and ("." in first or ":" in first or first == "localhost") else ""
    low = reason.lower()
    if any(s in low for s in ("connection refused", "no such host", "i/o timeout", "dial tcp", "no route")):
        fix = (f"start the registry at {registry}, or check the address" if registry
               else "check that dockerd reaches Docker Hub, or name a registry: REGISTRY/NAME:TAG")
    elif "http response to https client" in low:
        fix = (f'add "{registry}" to "insecure-registries" in /etc/docker/daemon.json and restart dockerd '
               "(127.0.0.0/8 is insecure by default), or serve the registry over TLS")
    elif any(s in low for s in ("unauthorized", "denied", "authentication required")):
        fix = f"run `{' '.join(['docker', 'login', registry]).strip()}`"
    elif action == "pull" and any(s in low for s in ("not found", "manifest unknown")):
        return (f"{ref} is not in the registry ({reason}): check the name and tag, or publish it with "
                f"`invoke publish --to {published_ref}`")
    else:
        fix = f"check that dockerd can reach {registry or 'Docker Hub'}"
    return f"cannot {action} {ref}: {reason}: {fix}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in _chunks(f):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


# --- for the sweep ----------------------------------------------------------------------------------------

def prepare(client: docker.DockerClient, base_image: str, log_dir: Path, image_ref: str | None = None,
            archive: str | Path | None = None, published_json: str | Path | None = None,
            resumed_from: dict | None = None, say=print) -> tuple[dict[str, BuiltImage], dict, dict]:
    """(built, base, provenance) of a run's images: obtained when image_ref, archive or published_json is
    given, or when the run resumed used published images (resumed_from: its provenance); else built here."""
    if not (image_ref or archive or published_json) and resumed_from and resumed_from["source"] != "built":
        image_ref = resumed_from["ref"] if resumed_from["source"] == "registry" else None
        archive = resumed_from["ref"] if resumed_from["source"] == "archive" else None
        published_json = resumed_from["published_json"]
    if image_ref or archive or published_json:
        built, provenance = obtain(client, image_ref, archive, published_json, say)
        return built, base_image_of(client, built), provenance
    built = images.build(client, base_image, log_dir, say=say)
    base = images.ensure_base_image(client, base_image, log_dir, say=say)
    entries = {t: {"ref": b.tag, "digest": b.id, "image_id": b.id} for t, b in built.items()}
    provenance = {"source": "built", "ref": None, "digest_kind": "image-id", "images": entries,
                  "digests": {t: e["digest"] for t, e in entries.items()}, "verified": False,
                  "published_json": None, "published_at": None, "git": images.git_state(),
                  "source_hash": built["server"].source_hash, "base_image": {"name": base["name"], "id": base["id"]},
                  "checkout_source_hash": images.source_hash()}
    return built, base, provenance


def base_image_of(client: docker.DockerClient, built: dict[str, BuiltImage]) -> dict:
    """The base image of obtained images, from their labels: it need not be present (or pullable) here."""
    labels = _labels(client, built["server"].id, built["server"].tag)
    return {"name": labels.get(f"{LABEL}.base-image"), "id": labels.get(f"{LABEL}.base-image-id"),
            "origin": "label of the published image"}
