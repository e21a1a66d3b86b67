"""Publishing the images to a real registry (Debian's docker-registry on loopback) and to a gzipped archive,
and obtaining them back instead of building: digests checked, images runnable, bad inputs one-line errors.

Every test publishes its own images: the built ones with a random label on top, so that their IDs are
unique to the test and can be removed without touching anyone else's images.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import docker.errors
import pytest

from experiment.errors import UserError
from experiment.host import images, machine, publish
from experiment.host.images import BuiltImage
from experiment.paths import ROOT
from experiment.run.results import Run

REGISTRY_START_TIMEOUT_S = 30
# The archive of both images is ~160 MB and `docker save` ~390 MB: a process that streams stays far below.
STREAMING_RSS_LIMIT_KB = 100_000



@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1:<free port>, with its own config and storage; stopped at the end."""
    machine.ensure_packages(["docker-registry"], "the publish tests")
    folder = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{machine.free_port()}"
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {folder / 'storage'}\n  delete:\n    enabled: true\n"
                      f"http:\n  addr: {address}\n  secret: epollbench-tests\n")
    with open(folder / "registry.log", "wb") as log:
        proc = subprocess.Popen([shutil.which("docker-registry") or "/usr/bin/docker-registry", "serve",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (folder / "registry.log").read_text()
            assert time.monotonic() < deadline, f"docker-registry did not answer on {address}"
            time.sleep(0.2)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def built(client, tmp_path_factory):
    return images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path_factory.mktemp("build-logs"), say=quiet)


@pytest.fixture
def own(client, built):
    """Images of this test alone: the built ones plus a random label, tagged epollbench-test-<nonce>/<target>."""
    nonce = uuid.uuid4().hex[:10]
    mine = {}
    for target, image in built.items():
        tag = f"epollbench-test-{nonce}/{target}:{image.source_hash}"
        derived, _log = client.images.build(fileobj=io.BytesIO(f"FROM {image.id}\n".encode()), tag=tag, rm=True,
                                            labels={"org.epollbench.test-nonce": nonce})
        mine[target] = BuiltImage(target=target, tag=tag, id=derived.id, source_hash=image.source_hash)
    yield mine
    for image in mine.values():
        forget(client, image.id)


def forget(client, image_id: str) -> None:
    """Removes one of this test's images with every tag it has (pushed, pulled or loaded ones too)."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(image_id, force=True)


def quiet(_message: str) -> None:
    pass


def assert_runs(client, obtained: dict[str, BuiltImage]) -> None:
    server = client.containers.run(obtained["server"].tag, ["ephttpd", "--help"], network_mode="none", remove=True)
    assert b"--backend" in server
    version = client.containers.run(obtained["client"].tag, ["httperf", "--version"], network_mode="none",
                                    remove=True, stderr=True)
    assert b"httperf-0.9.0" in version


def tampered(record_path: Path, target: str, field: str, into: Path) -> str:
    record = json.loads(record_path.read_text())
    wrong = "sha256:" + hashlib.sha256(b"not the published image").hexdigest()
    record["images"][target][field] = wrong
    into.write_text(json.dumps(record))
    return wrong


# --- naming, without Docker -------------------------------------------------------------------------------

def test_one_ref_names_a_server_and_a_client_repository():
    assert publish.image_refs("127.0.0.1:5000/lab/epollbench:v1") == {
        "server": "127.0.0.1:5000/lab/epollbench-server:v1", "client": "127.0.0.1:5000/lab/epollbench-client:v1"}
    assert publish.image_refs("127.0.0.1:5000/epollbench")["client"] == "127.0.0.1:5000/epollbench-client:latest"
    with pytest.raises(UserError, match="give a tag, not a digest"):
        publish.image_refs("127.0.0.1:5000/epollbench@sha256:" + "0" * 64)


def test_published_json_goes_beside_an_archive_or_in_the_current_folder():
    assert publish.default_record_path("/data/run1.tar.gz") == Path("/data/run1.published.json")
    assert publish.default_record_path("run1.tgz") == Path("run1.published.json")
    assert publish.default_record_path("127.0.0.1:5000/epollbench:v1") == Path("published.json")
    assert publish.is_archive("x.tar.gz") and not publish.is_archive("127.0.0.1:5000/x:tar")


# --- registry -----------------------------------------------------------------------------------------------

@pytest.mark.docker
def test_loopback_registries_need_no_daemon_configuration(client):
    assert "127.0.0.0/8" in client.info()["RegistryConfig"]["InsecureRegistryCIDRs"]


@pytest.mark.docker
def test_pushed_images_are_pulled_back_verified_and_run(client, registry, own, tmp_path):
    ref = f"{registry}/epollbench-{uuid.uuid4().hex[:8]}:v1"
    record_path = publish.publish(client, own, ref, tmp_path / "published.json", say=quiet)
    record = json.loads(record_path.read_text())
    assert record["kind"] == "registry" and record["digest_kind"] == "manifest" and record["to"] == ref
    labels = client.images.get(own["server"].id).labels
    assert record["git"]["commit"] == labels["org.epollbench.git-commit"]
    assert record["base_image"] == {"name": labels["org.epollbench.base-image"],
                                    "id": labels["org.epollbench.base-image-id"]}
    for target, image in own.items():
        entry = record["images"][target]
        assert entry["ref"] == ref.replace(":v1", f"-{target}:v1")
        assert entry["image_id"] == image.id
        repo = entry["ref"].rsplit(":", 1)[0]
        assert f"{repo}@{entry['digest']}" in client.images.get(image.id).attrs["RepoDigests"]

    for image in own.values():
        forget(client, image.id)
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(image.id)
    obtained, provenance = publish.obtain(client, image_ref=ref, published_json=record_path, say=quiet)

    assert {t: b.id for t, b in obtained.items()} == {t: b.id for t, b in own.items()}
    assert {t: b.tag for t, b in obtained.items()} == {t: e["ref"] for t, e in record["images"].items()}
    assert provenance["source"] == "registry" and provenance["ref"] == ref and provenance["verified"]
    assert provenance["digest_kind"] == "manifest"
    assert provenance["digests"] == {t: e["digest"] for t, e in record["images"].items()}
    assert provenance["git"] == record["git"] and provenance["published_at"] == record["published_at"]
    assert publish.base_image_of(client, obtained)["id"] == record["base_image"]["id"]
    assert_runs(client, obtained)

    # published.json alone says where to pull from; a resumed run takes its images from where it took them
    again, _ = publish.obtain(client, published_json=record_path, say=quiet)
    assert again == obtained
    resumed, base, resumed_provenance = publish.prepare(client, images.DEFAULT_BASE_IMAGE, tmp_path,
                                                        resumed_from=provenance, say=quiet)
    assert resumed == obtained and base["id"] == record["base_image"]["id"]
    assert resumed_provenance["digests"] == provenance["digests"] and resumed_provenance["verified"]


@pytest.mark.docker
def test_a_registry_image_that_is_not_the_published_one_is_refused(client, registry, own, tmp_path):
    ref = f"{registry}/epollbench-{uuid.uuid4().hex[:8]}:v1"
    record_path = publish.publish(client, own, ref, tmp_path / "published.json", say=quiet)
    real = json.loads(record_path.read_text())["images"]["client"]["digest"]
    wrong = tampered(record_path, "client", "digest", tmp_path / "tampered.json")

    with pytest.raises(UserError) as refused:
        publish.obtain(client, image_ref=ref, published_json=tmp_path / "tampered.json", say=quiet)
    message = str(refused.value)
    assert real in message and wrong in message and "client" in message
    assert len(message.splitlines()) == 1


@pytest.mark.docker
def test_an_unreachable_registry_or_a_missing_image_is_a_one_line_error(client, registry):
    with pytest.raises(UserError) as unreachable:
        publish.obtain(client, image_ref=f"127.0.0.1:{machine.free_port()}/epollbench:v1", say=quiet)
    assert "connection refused" in str(unreachable.value) and "start the registry" in str(unreachable.value)

    missing = f"{registry}/absent-{uuid.uuid4().hex[:8]}:v1"
    with pytest.raises(UserError) as not_there:
        publish.obtain(client, image_ref=missing, say=quiet)
    assert "is not in the registry" in str(not_there.value)
    assert f"invoke publish --to {missing}" in str(not_there.value)
    for error in (unreachable, not_there):
        assert len(str(error.value).splitlines()) == 1


# --- archive ------------------------------------------------------------------------------------------------

@pytest.mark.docker
def test_a_saved_archive_is_loaded_back_verified_and_runs(client, own, tmp_path):
    """Its published.json verifies it and another one (of other images) is refused; the images run."""
    archive = tmp_path / "epollbench.tar.gz"
    record_path = publish.publish(client, own, str(archive), say=quiet)
    assert record_path == tmp_path / "epollbench.published.json"
    record = json.loads(record_path.read_text())
    assert record["kind"] == "archive" and record["digest_kind"] == "image-id"
    assert {t: e["digest"] for t, e in record["images"].items()} == {t: b.id for t, b in own.items()}
    with open(archive, "rb") as f:
        assert record["archive"]["sha256"] == "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    assert record["archive"]["bytes"] == archive.stat().st_size
    with gzip.open(archive) as tar:
        assert tar.read(262)[257:262] == b"ustar", "a gzipped tar"

    wrong = tampered(record_path, "server", "image_id", tmp_path / "tampered.json")
    with pytest.raises(UserError) as refused:
        publish.obtain(client, archive=archive, published_json=tmp_path / "tampered.json", say=quiet)
    assert own["server"].id in str(refused.value) and wrong in str(refused.value)

    for image in own.values():
        forget(client, image.id)
    obtained, provenance = publish.obtain(client, archive=archive, say=quiet)

    assert {t: b.id for t, b in obtained.items()} == {t: b.id for t, b in own.items()}
    assert provenance["source"] == "archive" and provenance["verified"], "published.json found beside it"
    assert provenance["published_json"] == str(record_path.resolve())
    assert provenance["digests"] == {t: b.id for t, b in own.items()}
    assert_runs(client, obtained)


@pytest.mark.docker
def test_a_damaged_archive_is_a_one_line_error(client, tmp_path):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(gzip.compress(bytes(range(256)) * 4096)[:2000])
    not_gzip = tmp_path / "plain.tar.gz"
    not_gzip.write_bytes(b"not an archive\n" * 100)
    for path in (truncated, not_gzip):
        with pytest.raises(UserError) as damaged:
            publish.obtain(client, archive=path, say=quiet)
        assert str(damaged.value).startswith(f"{path} is damaged") and "copy it again" in str(damaged.value)
        assert len(str(damaged.value).splitlines()) == 1
    with pytest.raises(UserError, match="no archive at"):
        publish.obtain(client, archive=tmp_path / "absent.tar.gz", say=quiet)


@pytest.mark.docker
def test_save_and_load_stream_in_bounded_memory(own, tmp_path):
    """A process that saves and loads both images stays far below the archive's size in memory.

    Its VmHWM, not ru_maxrss: Linux carries the forking process's peak across exec into ru_maxrss."""
    archive = tmp_path / "epollbench.tar.gz"
    script = """
import json, sys
from pathlib import Path
from experiment.host import engine, publish
from experiment.host.images import BuiltImage
client = engine.connect()
built = {t: BuiltImage(**b) for t, b in json.loads(sys.argv[1]).items()}
publish.save(client, built, Path(sys.argv[2]), say=lambda _: None)
publish.obtain(client, archive=sys.argv[2], say=lambda _: None)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
    own_json = json.dumps({t: vars(b) for t, b in own.items()})
    proc = subprocess.run([sys.executable, "-c", script, own_json, str(archive)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak_kb = int(proc.stdout.split()[-1])
    assert archive.stat().st_size > STREAMING_RSS_LIMIT_KB * 1024, "an archive that would not fit the limit"
    assert peak_kb < STREAMING_RSS_LIMIT_KB, f"peak RSS {peak_kb} KB"


# --- the whole path: `invoke reproduce --image` (needs the lead's wiring of tasks.py and sweep.py) ------------

@pytest.mark.docker
def test_reproduce_runs_a_smoke_sweep_from_pushed_images(client, registry, own, tmp_path):
    """`invoke reproduce --image REF --published FILE` pulls instead of building and says so in run.json."""
    ref = f"{registry}/epollbench-{uuid.uuid4().hex[:8]}:smoke"
    record_path = publish.publish(client, own, ref, tmp_path / "published.json", say=quiet)
    record = json.loads(record_path.read_text())
    for image in own.values():
        forget(client, image.id)
    results_dir = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "invoke", "reproduce", "--image", ref, "--published",
                           str(record_path), "--variants", "up", "--backends", "epoll", "--dead", "0,1000",
                           "--duration", "2", "--sweeps", "dead", "--no-report", "--results-dir", str(results_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "building image" not in proc.stdout

    run = Run.open(None, results_dir)
    meta = run.record().metadata
    source = meta["images_source"]
    assert source["source"] == "registry" and source["ref"] == ref and source["verified"]
    assert source["digests"] == {t: e["digest"] for t, e in record["images"].items()}
    assert meta["image_ids"] == {t: b.id for t, b in own.items()}
    points = run.points()
    assert sorted(p.x for p in points) == [0, 1000]
    assert all(p.ok for p in points), [p.reason for p in points]
