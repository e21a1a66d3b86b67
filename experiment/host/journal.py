"""The journal of what --tune-host changed on the host, and the restoring of a killed run's.

A process killed outright (SIGKILL, the OOM killer) restores nothing, and the sysctls and rules it changed
outlive it. So tune() (tuning.py) keeps a journal in the run folder, tuning.json: which process changed the
host (process.this_process), each change written before it is made and again after, and when it was all put
back. restore_abandoned() finds the journals of runs whose process is gone without restoring, and undoes what
they say was changed, where it is still as that run left it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import model
from ..errors import UserError
from .preflight import PROC_SYS
from .process import alive, boot_id, namespaces
from .tuning import Tuning

# A run's journal of what tune() changed: tuning.json, a resumed attempt's tuning.1.json and so on.
JOURNAL = "tuning.json"
JOURNAL_GLOB = "tuning*.json"


def journal_path(run_dir: Path) -> Path:
    """Where an attempt at a run journals its tuning: tuning.json, or for a resumed run, tuning.N.json
    beside the earlier attempts' journals."""
    path, n = run_dir / JOURNAL, 1
    while path.exists():
        path, n = run_dir / f"tuning.{n}.json", n + 1
    return path


def journal_state(record: dict) -> str:
    """What a tuning journal needs: "restored" (nothing), "rebooted" (the reboot undid it), "elsewhere" (made
    from another pid or network namespace: not ours to judge), "running" (its run goes on), or "abandoned"
    (its process is gone without restoring: restore_abandoned() undoes it)."""
    if record.get("restored_at"):
        return "restored"
    if record.get("boot_id") != boot_id():
        return "rebooted"
    if record.get("namespaces") != namespaces():
        return "elsewhere"
    return "running" if alive(record) else "abandoned"


def journals(results_dir: Path | None, also: Iterable[Path] = ()) -> list[Path]:
    """Every tuning journal in a run folder under results_dir (None: none) or in the run folders `also` names."""
    found = [*(results_dir.glob(f"*/{JOURNAL_GLOB}") if results_dir else ()),
             *(p for run in also for p in Path(run).glob(JOURNAL_GLOB))]
    return sorted({p.resolve() for p in found})  # resolved: results/latest is a run folder again


def abandoned_journals(results_dir: Path | None, also: Iterable[Path] = ()) -> list[Path]:
    """The journals restore_abandoned() would undo, without undoing anything."""
    abandoned = []
    for path in journals(results_dir, also):
        with contextlib.suppress(UserError):
            if journal_state(model.read_json(path, model.TUNING)) == "abandoned":
                abandoned.append(path)
    return abandoned


def restore_abandoned(results_dir: Path | None, say: Callable[[str], None] = print, also: Iterable[Path] = (),
                      proc_sys: Path = PROC_SYS) -> list[Path]:
    """Undoes the tuning of runs that ended without undoing it (SIGKILL, the OOM killer): every journal in
    a run folder under results_dir (None: none), or in the run folders `also` names, that is not marked
    restored and whose process is gone. Each sysctl goes back where it still has the value that run wrote;
    each rule it added is deleted (a rule already gone is left so). One line per item says so, and the
    journal is marked restored. A live run's journal is never touched, nor one from another pid or network
    namespace (a container's: its process cannot be told apart from here, and its changes are not this
    namespace's). Returns the journals it restored."""
    return [path for path in journals(results_dir, also) if _restore_journal(path, say, proc_sys)]


def _restore_journal(path: Path, say: Callable[[str], None], proc_sys: Path) -> bool:
    """restore_abandoned() for one journal: whether it restored what the journal says was changed."""
    try:
        record = model.read_json(path, model.TUNING)
    except UserError as error:
        say(f"tune-host: {error}")
        return False
    state = journal_state(record)
    if state in ("restored", "running"):
        return False
    about = f"tune-host: run {path.parent.name} ended without restoring the host"
    if state == "rebooted":
        say(f"{about}, but the host has rebooted since, which undid it: nothing to restore")
        with contextlib.suppress(OSError):  # a user's reproduce in root's results: said, left to root
            model.write_json_atomic(path, dict(record, restored_at=model.utc_now(), restored_by="reboot"),
                                      overwrite=True)
        return False
    if state == "elsewhere":
        say(f"tune-host: run {path.parent.name} tuned the host from another pid or network namespace (a "
            f"container?): its journal {path} is left for a reproduce there")
        return False
    if os.geteuid() != 0:
        say(f"{about} ({', '.join(c['setting'] for c in record['changes'])}): as root, the next "
            "`invoke reproduce` (or `invoke clean`) puts it back")
        return False
    return _undo(path, record, about, say, proc_sys)


def _undo(path: Path, record: dict, about: str, say: Callable[[str], None], proc_sys: Path) -> bool:
    """Puts back what an abandoned journal's run changed, saying each item after `about`; whether it could."""
    tuning = Tuning(proc_sys=proc_sys, changed=record["changes"], journal=path, record=record)
    try:
        left = tuning.restore(say=lambda line: say(f"{about}: {line}"))
    except OSError as error:
        say(f"{about}, and cannot write {error.filename} ({error.strerror}): restore it by hand from {path}")
        return False
    for change in left:
        say(f"{about}: left {change['setting']} as it is ({change['found']}): it was set to "
            f"{change['new']}, and has been changed since")
    return True
