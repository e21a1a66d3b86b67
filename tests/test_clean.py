"""`invoke clean`: what killed runs left is removed, and nothing of a run that still runs.

Other people's runs and tests share this Docker engine, so every test here names its own runs (a test-unique
run id) and its own image repository: clean is asked about those alone. The containers are real (the client
image, sleeping), labelled as a run labels them (containers.Containers); a run is "running" as a real one is:
a process (here a child process, then killed with SIGKILL) holds its run.lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid

import guestcache
import pytest
from reproducing import labelled_containers, run_record
from test_tune_host import LOW_SOMAXCONN, SOMAXCONN, killed_tuned_run, raw_rules, real_host

from experiment import model
from experiment.host import images, process
from experiment.run import leftovers
from experiment.run.containers import LABEL_HARNESS, LABEL_ROLE, LABEL_RUN, Containers
from experiment.run.results import Run
from experiment.run.services import Service

pytestmark = pytest.mark.docker

FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
HOLDER = """
import sys, time
from experiment.run.results import Run
Run(__import__("pathlib").Path(sys.argv[1])).hold()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def image(client, tmp_path_factory):
    return images.build(client, images.DEFAULT_BASE_IMAGE, tmp_path_factory.mktemp("build"))["client"].tag


@pytest.fixture
def run_ids(client):
    """Test-unique run ids; their containers are removed at the end whatever happens."""
    made: list[str] = []

    def new(name: str) -> str:
        made.append(f"test-clean-{name}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for run_id in made:
        for container in labelled_containers(client, run_id):
            with contextlib.suppress(Exception):
                container.remove(force=True)


def sleeper(client, image: str, run_id: str, run_dir=None, count: int = 2) -> list:
    runner = Containers(client, run_id, FD_LIMIT, run_dir)
    return [runner.run(image, Service(role=f"sleeper{n}", target="client", command=("sleep", "600"),
                                      cpuset="0")).container
            for n in range(count)]


def gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def clean(client, results_dir, runs, repositories=()) -> list[str]:
    said: list[str] = []
    leftovers.clean(client, results_dir, said.append, runs=runs, repositories=repositories)
    return said


def test_a_run_killed_while_its_lock_was_held_is_cleaned_and_a_held_one_is_not(client, image, run_ids, tmp_path):
    killed_id, alive_id = run_ids("killed"), run_ids("alive")
    killed, alive = (Run.create(run_record(i), tmp_path) for i in (killed_id, alive_id))
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(run.path)], stdout=subprocess.PIPE, text=True)
               for run in (killed, alive)]
    try:
        for holder in holders:
            assert holder.stdout.readline() == "held\n"
        sleeper(client, image, killed_id, killed.path)
        sleeper(client, image, alive_id, alive.path)
        said = clean(client, tmp_path, {killed_id, alive_id})
        assert len(labelled_containers(client, killed_id)) == len(labelled_containers(client, alive_id)) == 2, said
        assert f"left 2 container(s) of run {alive_id}: it is running (a process holds {alive.path}/run.lock)" in said

        holders[0].send_signal(signal.SIGKILL)
        holders[0].wait()
        said = clean(client, tmp_path, {killed_id, alive_id})
        assert labelled_containers(client, killed_id) == []
        assert len(labelled_containers(client, alive_id)) == 2, "never a running run's containers"
        assert (f"removed 2 container(s) of run {killed_id}, which is not running (no process holds "
                f"{killed.path}/run.lock)") in said
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_without_its_folder_a_run_is_judged_by_its_harness_process(client, image, run_ids, tmp_path):
    gone, here, elsewhere = run_ids("gone"), run_ids("here"), run_ids("elsewhere")
    sleeper(client, image, here, tmp_path / "removed" / here)  # this process is its harness: alive
    # A run whose folder is gone (a test's temporary folder) and whose harness has ended; and one whose
    # harness ran on another machine sharing the engine, where its pid says nothing.
    harness = dict(process.this_process(), pid=gone_pid(), hostname=socket.gethostname())
    for run_id, host in ((gone, harness["hostname"]), (elsewhere, "elsewhere.example")):
        client.containers.run(image, ["sleep", "600"], detach=True, network_mode="host", labels={
            LABEL_RUN: run_id, LABEL_ROLE: "sleeper", LABEL_HARNESS: json.dumps(dict(harness, hostname=host))})
    said = clean(client, tmp_path, {gone, here, elsewhere})
    assert len(labelled_containers(client, elsewhere)) == 1
    assert any(line.startswith(f"left 1 container(s) of run {elsewhere}: cannot tell whether it is running (its "
                               "harness runs on another machine (elsewhere.example))") for line in said), said
    assert labelled_containers(client, gone) == []
    assert f"removed 1 container(s) of run {gone}, which is not running (its harness process {harness['pid']} " \
           "is gone)" in said
    assert len(labelled_containers(client, here)) == 2
    assert f"left 2 container(s) of run {here}: it is running (its harness process {os.getpid()} is " \
           "alive)" in said


def test_a_container_from_before_the_labels_goes_only_when_its_run_folder_says_it_ended(client, image, run_ids,
                                                                                      tmp_path):
    ended, unknown = run_ids("ended"), run_ids("unknown")
    Run.create(run_record(ended, status="interrupted", ended_at=model.utc_now()), tmp_path)
    for run_id in (ended, unknown):
        client.containers.run(image, ["sleep", "600"], detach=True, network_mode="host",
                              labels={LABEL_RUN: run_id, LABEL_ROLE: "sleeper"})
    said = clean(client, tmp_path, {ended, unknown})
    assert labelled_containers(client, ended) == []
    assert f"removed 1 container(s) of run {ended}, which is not running (its run.json says it ended " \
           "(interrupted))" in said
    left, = labelled_containers(client, unknown)
    assert (f"left 1 container(s) of run {unknown}: cannot tell whether it is running (no run folder "
            f"{tmp_path / unknown} and no harness label); if it is not: docker rm -f {left.name}") in said


def test_only_image_tags_no_run_and_no_current_source_refers_to_are_removed(client, image, tmp_path):
    repository = f"epollbench-test-{uuid.uuid4().hex[:8]}/client"
    current, recorded = images.source_hash(), "0123456789abcdef"
    tags = {name: f"{repository}:{name}" for name in (current, recorded, "fedcba9876543210", "latest")}
    Run.create(run_record("recorded", metadata={"images": {"client": {"labels": {
        "org.epollbench.source-hash": recorded}}}}), tmp_path)
    try:
        for tag in tags.values():
            client.images.get(image).tag(tag)
        found = leftovers.find(client, tmp_path, runs=set(), repositories=[repository])
        assert found.image_tags == [tags["fedcba9876543210"]]
        assert found.summary() == f"1 image tag(s) no run folder or current source refers to ({found.image_tags[0]})"
        said = clean(client, tmp_path, set(), [repository])
        assert said == [f"removed image tag {tags['fedcba9876543210']}: no run folder under {tmp_path} and no "
                        "current source refers to it"]
        assert sorted(t for t in client.images.get(image).tags if t.startswith(repository)) == sorted(
            tags[name] for name in (current, recorded, "latest"))
        assert client.images.get(image).id, "the image itself stays"
    finally:
        for tag in tags.values():
            with contextlib.suppress(Exception):
                client.images.remove(tag)


@real_host
def test_clean_after_a_killed_tune_host_run_leaves_no_container_rule_or_changed_sysctl(tmp_path, client):
    """A real reproduce --tune-host killed with SIGKILL mid-point: `invoke clean --run` puts it all back."""
    with killed_tuned_run(tmp_path, client) as (run, _proc, rules_before):
        found = leftovers.find(client, tmp_path, runs={run.id}, repositories=())
        assert [r.run_id for r in found.ended] == [run.id] and found.journals == [run.path / "tuning.json"]
        cleaning = subprocess.run([sys.executable, "-m", "invoke", "clean", "--results-dir", str(tmp_path),
                                   "--run", run.id], capture_output=True, text=True, timeout=300)
        assert cleaning.returncode == 0, cleaning.stderr
        assert labelled_containers(client, run.id) == []
        assert int(SOMAXCONN.read_text()) == LOW_SOMAXCONN
        assert raw_rules() == rules_before
        out = cleaning.stdout
        assert f"container(s) of run {run.id}, which is not running (no process holds {run.path}/run.lock)" in out
        assert f"tune-host: run {run.id} ended without restoring the host: net.core.somaxconn back to " \
               f"{LOW_SOMAXCONN}" in out
        assert model.read_json(run.path / "tuning.json", model.TUNING)["restored_at"]
        assert leftovers.find(client, tmp_path, runs={run.id}, repositories=()).summary() is None


def test_clean_stops_the_qemu_guest_of_a_run_that_is_gone(tmp_path):
    from experiment.guest import leftovers as guest_leftovers

    gone = subprocess.Popen(["true"])
    gone.wait()
    env = dict(os.environ, **{guest_leftovers.OWNER_ENV: guest_leftovers.owner_identity(gone.pid),
                              guest_leftovers.FOLDER_ENV: str(tmp_path)})
    label = f"test-{uuid.uuid4().hex[:8]}"
    guest = guestcache.reaped(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-name",
                                                f"epollbench-guest,process={guest_leftovers.PROCESS_PREFIX}{label}"],
                                               env=env))
    said: list[str] = []
    try:
        # Until it has exec'd, the child's /proc/PID/cmdline is still pytest's: wait until it reads as a guest.
        deadline = time.monotonic() + 30
        while label not in {g.label for g in guest_leftovers.leftover_guests()} and time.monotonic() < deadline:
            time.sleep(0.05)
        leftovers.clean(None, tmp_path, said.append)
        assert guest.wait(timeout=30) == -signal.SIGTERM
    finally:
        guest.kill()
    assert any(label in line and "the run that booted it is gone" in line for line in said), said
    assert not any(line.startswith("nothing to clean") for line in said)
