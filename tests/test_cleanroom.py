"""`./run clean-room`'s container: what it is given from the host (the run itself is `./run clean-room`)."""

import io
import tarfile
import uuid
from pathlib import Path

import pytest

from dev import cleanroom
from experiment.host import images


def test_the_clean_room_gets_the_hosts_engine_network_fd_limit_and_pip_settings(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    work = tmp_path / "work"
    environ = {"PIP_FIND_LINKS": str(wheels), "PIP_CERT": str(cert), "PIP_DEFAULT_TIMEOUT": "180",
               "HOME": str(tmp_path / "home"), "CI": "false"}
    options = cleanroom.container_options(work, "/run/docker.sock", 12345, environ, confs=())

    assert options["network_mode"] == "host"
    nofile, = options["ulimits"]
    assert (nofile["Name"], nofile["Soft"], nofile["Hard"]) == ("nofile", 12345, 12345)
    assert options["shm_size"] == "1g"
    env = options["environment"]
    assert env["CI"] == "true" and env["EPOLLBENCH_CLEAN_ROOM"] == "1"
    assert {k: env[k] for k in environ if k.startswith("PIP_")} == {**{k: v for k, v in environ.items()
                                                                     if k.startswith("PIP_")},
                                                                  "PIP_CERT": str(cleanroom.PIP_CERT)}
    assert "HOME" not in env
    volumes = options["volumes"]
    assert volumes["/run/docker.sock"] == {"bind": "/var/run/docker.sock", "mode": "rw"}
    # Docker-outside-of-docker: containers the tests start bind paths of the clone, which the host must see.
    assert volumes[str(work)] == {"bind": str(work), "mode": "rw"}
    assert Path(env["TMPDIR"]).is_relative_to(work) and Path(options["working_dir"]).is_relative_to(work)
    assert volumes[str(wheels)] == {"bind": str(wheels), "mode": "ro"}
    assert str(cert) not in volumes, "copied in, where installing Debian's ca-certificates leaves it alone"


def test_pip_confs_and_the_files_and_folders_pip_settings_name_are_found(tmp_path):
    cert, wheels, index, constraints = tmp_path / "cert.pem", tmp_path / "wheels", tmp_path / "index", \
        tmp_path / "constraints.txt"
    cert.write_text("x")
    constraints.write_text("x<2\n")
    wheels.mkdir()
    (index / "simple").mkdir(parents=True)
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\ncert = {cert}\nconstraint = {constraints}\ntimeout = 60\n")
    home = tmp_path / "home"
    (home / ".config/pip").mkdir(parents=True)
    (home / ".config/pip/pip.conf").write_text(f"[global]\nfind-links = {wheels}\n"
                                               f"extra-index-url = file://{index}/simple https://example.invalid/x\n")
    env, files, folders = cleanroom.pip_settings({"PIP_NO_INPUT": "1", "PATH": "/usr/bin", "HOME": str(home)},
                                                 (conf, tmp_path / "absent.conf"))
    assert env == {"PIP_NO_INPUT": "1", "PIP_CERT": str(cleanroom.PIP_CERT)}, "the conf's cert, at its new path"
    # The user's pip.conf goes to root's, the user of the clean room.
    assert files == {conf: conf, home / ".config/pip/pip.conf": Path("/root/.config/pip/pip.conf"),
                     cert: cleanroom.PIP_CERT, constraints: constraints}
    assert folders == [wheels, index], "a file:// index with the files its pages link to, beside simple/"


TRANSCRIPT = b"""\
============================= test session starts ==============================
..s.
=========================== short test summary info ============================
SKIPPED [1] tests/conftest.py:40: clean room: writes /proc/sys
==================== clean-room skips: 2 (needs_host, tests/conftest.py) ====================
tests/test_preflight.py::test_tune: writes /proc/sys
tests/test_engines.py::test_copy: starts a second dockerd
================= 300 passed, 2 skipped in 912.31s (0:15:12) ==================
results: results/20261130T000000Z
"""


def test_the_summary_repeats_pytests_closing_line_and_the_clean_room_skips(capsys):
    steps = [cleanroom.Step(".ci/run", 0, 1000.0), cleanroom.Step("reproduce", 0, 200.0)]
    fresh = {"origin": "mmdebstrap --variant=minbase bookworm", "images": ["epollbench/server:abc"]}
    cleanroom._summary("0123456789abcdef", steps, fresh, bytearray(TRANSCRIPT), 1234.0)
    out = capsys.readouterr().out
    assert "HEAD 0123456789ab, total 20 min 34 s" in out
    assert ".ci/run: exit 0 in 16 min 40 s" in out and "reproduce: exit 0 in 3 min 20 s" in out
    assert "pytest: 300 passed, 2 skipped in 912.31s (0:15:12)" in out
    assert ("clean-room skips: 2 (needs_host, tests/conftest.py)\n"
            "tests/test_preflight.py::test_tune: writes /proc/sys\n"
            "tests/test_engines.py::test_copy: starts a second dockerd\n") in out
    assert "built with no earlier cache on a base bootstrapped now (mmdebstrap" in out


@pytest.mark.docker
def test_the_fresh_base_and_every_image_built_on_it_are_found_then_removed(client):
    """Built on a base new to the engine, the images count as fresh; at the end the base goes with every
    image on it, also those of a build stage that no final image descends from (they piled up, a branch per
    clean room, as the Dockerfile's build stage)."""
    tag = f"epollbench-test-cleanroom-{uuid.uuid4().hex[:8]}/debian:bookworm-slim"
    repo, _, version = tag.partition(":")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        tar.addfile(info, io.BytesIO(b""))
    before = {image.id for image in client.images.list(all=True)}
    client.api.import_image_from_data(archive.getvalue(), repository=repo, tag=version,
                                      changes=[f'LABEL {images.LABEL}.base-origin="mmdebstrap test"'])
    base_id = client.images.get(tag).id
    try:
        dockerfile = (f"FROM {tag} AS stage\nENV A=1\nENV B=2\n"
                      f"FROM {tag}\nENV C=3\nLABEL {images.LABEL}.base-image-id={base_id}\n")
        list(client.api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{repo}-built:x", rm=True))
        chain = cleanroom._descendants(client, base_id)
        assert len(chain) == 4, "ENV, ENV in the stage, ENV, LABEL in the image: one image each"
        built = client.images.get(f"{repo}-built:x")
        assert chain.index(built.id) < chain.index(built.attrs["Parent"]), "children before their parents"

        assert cleanroom._fresh_build(client, tag, before) == {"origin": "mmdebstrap test",
                                                                 "images": [f"{repo}-built:x"]}
        assert cleanroom._fresh_build(client, tag, before | {base_id}) is None, "a base the engine had before"
    finally:
        cleanroom._remove_fresh_images(client, tag)
    remaining = {image.id for image in client.images.list(all=True)}
    assert base_id not in remaining and not set(chain) & remaining
