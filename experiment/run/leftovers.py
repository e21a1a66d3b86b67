"""What runs leave behind when they do not end cleanly, and `invoke clean`, which removes it.

A run removes its containers and puts the host back however it ends, short of being killed outright
(SIGKILL, the OOM killer, a power cut of the terminal's machine). Then three things stay:
- its containers (labelled with the run: containers.LABEL_RUN);
- image tags of ours (epollbench/server:<source hash>, epollbench/client:<source hash>) that no run folder
  and no current source refers to, from builds of trees since changed;
- what --tune-host changed on the host: sysctls and the loopback NOTRACK rules, which the run's journal
  (tuning.json) lists (journal.restore_abandoned).

A container is removed only when its run is known not to be running; other people's runs may share the
engine. A run is running while its harness process holds its run.lock (containers.LABEL_RUN_DIR names the
folder); without the folder, while the harness process the container names (containers.LABEL_HARNESS) is
alive; a container from before these labels, while its run folder under the results folder does not say it
ended. What cannot be told (no folder and no harness label, a harness on another machine or in another pid
namespace) is left alone and named.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.models.containers import Container

from .. import model
from ..errors import UserError
from ..guest import leftovers as guest_leftovers
from ..host import images, journal, process
from .containers import LABEL_HARNESS, LABEL_RUN, LABEL_RUN_DIR
from .results import LOCK, RESULTS, Run

REPOSITORIES = tuple(f"epollbench/{target}" for target in images.TARGETS)
RUNNING, ENDED, UNKNOWN = "running", "ended", "unknown"


@dataclass
class RunContainers:
    """The containers of one run on an engine, and whether the run is running (state, and why we think so)."""

    run_id: str
    containers: list[Container]
    state: str
    why: str
    run_dir: Path | None = None


@dataclass
class Leftovers:
    runs: list[RunContainers] = field(default_factory=list)
    image_tags: list[str] = field(default_factory=list)
    journals: list[Path] = field(default_factory=list)

    @property
    def ended(self) -> list[RunContainers]:
        return [r for r in self.runs if r.state == ENDED]

    @property
    def unknown(self) -> list[RunContainers]:
        return [r for r in self.runs if r.state == UNKNOWN]

    def summary(self) -> str | None:
        """One line naming what `invoke clean` would remove, or None when nothing."""
        parts = []
        if ended := self.ended:
            parts.append(f"{sum(len(r.containers) for r in ended)} container(s) of {len(ended)} run(s) that are "
                         f"not running ({', '.join(r.run_id for r in ended[:3])}{', ...' if len(ended) > 3 else ''})")
        if self.image_tags:
            parts.append(f"{len(self.image_tags)} image tag(s) no run folder or current source refers to "
                         f"({', '.join(self.image_tags[:3])}{', ...' if len(self.image_tags) > 3 else ''})")
        if self.journals:
            parts.append(f"host tuning of {len(self.journals)} killed --tune-host run(s) not put back "
                         f"({', '.join(p.parent.name for p in self.journals)})")
        return "; ".join(parts) or None


def run_state(run_id: str, labels: dict, results_dir: Path) -> tuple[str, str, Path | None]:
    """Whether the run a container is labelled with is running: (RUNNING, ENDED or UNKNOWN, why, its folder)."""
    run_dir = Path(labels[LABEL_RUN_DIR]) if labels.get(LABEL_RUN_DIR) else None
    if run_dir is not None and run_dir.name == run_id and (run_dir / LOCK).exists():
        if Run(run_dir).running():
            return RUNNING, f"a process holds {run_dir / LOCK}", run_dir
        return ENDED, f"no process holds {run_dir / LOCK}", run_dir
    if labels.get(LABEL_HARNESS):
        try:
            harness = json.loads(labels[LABEL_HARNESS])
        except json.JSONDecodeError:
            harness = {}
        this = process.this_process()
        if harness.get("hostname") != socket.gethostname():  # an engine two machines share
            return UNKNOWN, f"its harness runs on another machine ({harness.get('hostname')})", run_dir
        if harness.get("boot_id") != this["boot_id"]:
            return ENDED, "its harness ran before the host last booted", run_dir
        if (harness.get("namespaces") or {}).get("pid") != this["namespaces"]["pid"]:
            return UNKNOWN, "its harness runs in another pid namespace (a container?), not seen from here", run_dir
        if process.alive(harness):
            return RUNNING, f"its harness process {harness['pid']} is alive", run_dir
        return ENDED, f"its harness process {harness.get('pid')} is gone", run_dir
    folder = results_dir / run_id
    if (folder / "run.json").is_file():
        try:
            record = model.read_run(folder / "run.json")
        except UserError as error:
            return UNKNOWN, str(error), folder
        if record.ended_at:
            return ENDED, f"its run.json says it ended ({record.status})", folder
        return UNKNOWN, f"its run.json says {record.status}, without an end, from before runs held a lock", folder
    return UNKNOWN, f"no run folder {folder} and no harness label", None


def _referenced_hashes(results_dir: Path) -> set[str]:
    """The source hashes of the images every run under results_dir ran, and the current tree's."""
    hashes = {images.source_hash()}
    for path in results_dir.glob("*/run.json"):
        try:
            metadata = model.read_run(path).metadata
        except UserError:
            continue
        for meta in (metadata.get("images") or {}).values():
            if found := (meta.get("labels") or {}).get(f"{images.LABEL}.source-hash"):
                hashes.add(found)
        for under_test in (metadata.get("servers_under_test") or {}).values():
            hashes.add(str(under_test.get("image", "")).rpartition(":")[2])
    return hashes


def find(client: docker.DockerClient | None, results_dir: Path, runs: Collection[str] | None = None,
         repositories: Collection[str] = REPOSITORIES) -> Leftovers:
    """What killed runs left: their containers on the engine of client (None: no engine, no containers; runs:
    only these runs' containers and journals), image tags in repositories no run under results_dir and no
    current source refers to, and journals of host tuning not put back."""
    found = Leftovers()
    if client is not None:
        by_run: dict[str, list[Container]] = {}
        for container in client.containers.list(all=True, filters={"label": LABEL_RUN}):
            run_id = container.labels.get(LABEL_RUN, "")
            if runs is None or run_id in runs:
                by_run.setdefault(run_id, []).append(container)
        for run_id, containers in sorted(by_run.items()):
            state, why, run_dir = run_state(run_id, containers[0].labels, results_dir)
            found.runs.append(RunContainers(run_id, containers, state, why, run_dir))
        if repositories:
            keep = _referenced_hashes(results_dir)
            for repository in repositories:
                for image in client.images.list(name=repository):
                    found.image_tags += [tag for tag in image.tags if tag.rpartition(":")[0] == repository
                                         and tag.rpartition(":")[2] not in keep | {"latest"}]
    folders = [r.run_dir for r in found.runs if r.run_dir is not None]
    journals = journal.abandoned_journals(results_dir, also=folders)
    found.journals = [j for j in journals if runs is None or j.parent.name in runs]
    return found


def clean(client: docker.DockerClient | None, results_dir: Path, say: Callable[[str], None] = print,
          runs: Collection[str] | None = None, repositories: Collection[str] = REPOSITORIES) -> Leftovers:
    """Removes what find() finds: the containers of runs that are not running, the image tags no run refers
    to, and the host tuning of killed runs (restored where still as they left it); and stops the QEMU guests
    whose run is gone. Says one line per item
    and per run it leaves alone. Returns what it found."""
    found = find(client, results_dir, runs, repositories)
    for run in found.runs:
        if run.state == RUNNING:
            say(f"left {len(run.containers)} container(s) of run {run.run_id}: it is running ({run.why})")
            continue
        if run.state == UNKNOWN:
            say(f"left {len(run.containers)} container(s) of run {run.run_id}: cannot tell whether it is running "
                f"({run.why}); if it is not: docker rm -f {' '.join(str(c.name) for c in run.containers)}")
            continue
        for container in run.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        say(f"removed {len(run.containers)} container(s) of run {run.run_id}, which is not running ({run.why})")
    for tag in found.image_tags:
        try:
            if client is not None:  # tags are found on an engine only
                client.images.remove(tag, noprune=False)
            say(f"removed image tag {tag}: no run folder under {results_dir} and no current source refers to it")
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as error:  # a container still uses it
            say(f"left image tag {tag}: {error.explanation or error}")
    if found.journals:
        journal.restore_abandoned(None, say, also=sorted({j.parent for j in found.journals}))
    guests = guest_leftovers.stop_leftover_guests(say)
    if not found.runs and not found.image_tags and not found.journals and not guests:
        say("nothing to clean: no containers of runs that are not running, no unused image tags of ours, "
            "no host tuning left by a killed run, no QEMU guest of a run that is gone"
            + ("" if client is not None else " (no Docker engine answers)"))
    return found


ENGINE_TIMEOUT_S = 5


def main(results_dir: str | None = None, run: str | None = None, engine_url: str | None = None,
         say: Callable[[str], None] = print) -> Leftovers:
    """`invoke clean`: on the engine at engine_url (default DOCKER_HOST or the local socket; none answering, only
    the host tuning), everything find() finds, or with run (a run id or folder) only that run's containers and
    host tuning."""
    from ..host import engine

    where = Path(results_dir) if results_dir else RESULTS
    client = engine.answers(engine_url, ENGINE_TIMEOUT_S)
    if client is None and engine_url:
        raise UserError(f"no Docker engine answers at {engine_url}: start it, or check the URL")
    runs = [Path(run).name] if run else None
    return clean(client, where, say, runs=runs, repositories=() if run else REPOSITORIES)
