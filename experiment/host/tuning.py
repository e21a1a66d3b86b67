"""--tune-host: raising the host settings the preflight found too low, and putting them back.

tune() raises the tunable findings' sysctls (root, /proc/sys; never lowers one) and puts the old values
back when the sweep ends, whatever way it ends. When loopback traffic is tracked it exempts it (lo,
127.0.0.0/8 both ends) in the raw table, with the tool the host's other rules use (iptables, whichever its
backend; nft only without iptables), and removes exactly the rules it added. Untracked loopback packets skip
NAT too: a DNAT to 127.0.0.1 (Docker with userland-proxy off) stops working while the rules are in; the
sweep's containers use the host network.

A process killed outright (SIGKILL, the OOM killer) restores nothing, and the sysctls and rules outlive it.
So tune() keeps a journal in the run folder (journal.journal_path), written before each change and again
after it, and marked when everything is back; journal.restore_abandoned() undoes a dead run's.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import model
from ..errors import UserError
from .conntrack import (
    IPTABLES,
    NFT,
    NFT_TABLE,
    NOTRACK_CHAINS,
    firewall,
    firewall_or_fail,
    iptables_notrack_rule,
    nft_notrack_table,
    read_loopback_conntrack,
)
from .preflight import LOOPBACK_CONNTRACK, PROC_SYS, Finding, read_sysctl, sysctl_path
from .process import this_process


def _enough(setting: str, current: int | list[int] | None, needed: int | list[int] | str) -> bool:
    if current is None:
        return True
    if isinstance(current, list) and isinstance(needed, list):  # a range: ip_local_port_range
        return current[1] - current[0] >= needed[1] - needed[0]
    if setting == "net.ipv4.tcp_tw_reuse":
        return current != 0
    if isinstance(current, int) and isinstance(needed, int):
        return current >= needed
    raise TypeError(f"{setting}: cannot compare {current!r} with {needed!r}")


def _sysctl_text(value: int | list[int] | str) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class Tuning:
    """The sysctls tune() changed and the loopback NOTRACK rules it added; restore() (or leaving its `with`
    block, however) puts the sysctls back and removes those rules. A change with "undo" is rules: the
    commands that remove exactly what was added. A change is recorded before it is made ("applied" false
    until it is), and with a journal every record is written there too, for journal.restore_abandoned()."""

    proc_sys: Path = PROC_SYS
    iptables: Path = IPTABLES
    nft: Path = NFT
    changed: list[dict] = field(default_factory=list)
    left_alone: list[dict] = field(default_factory=list)
    restored: bool = False
    journal: Path | None = None
    # The journal's contents: which process changed the host (process.this_process) and when, and whether
    # and when it was all put back, beside the changes.
    record: dict = field(default_factory=dict)

    def _begin(self, change: dict) -> dict:
        change["applied"] = False
        self.changed.append(change)
        self._write_journal()
        return change

    def _applied(self, change: dict) -> None:
        change["applied"] = True
        self._write_journal()

    def _write_journal(self, must: bool = True) -> None:
        if self.journal is None:
            return
        if not self.record:
            self.record = {"schema_version": model.SCHEMA_VERSION, **this_process(),
                           "started_at": model.utc_now(), "restored_at": None}
        self.record["changes"] = self.changed
        try:
            model.write_json_atomic(self.journal, self.record, overwrite=True)
        except OSError:
            if must:  # no change is made that the journal does not hold
                raise

    # ---- making the changes --------------------------------------------------------------------------------

    def _apply(self, findings: list[Finding]) -> None:
        for finding in findings:
            if not finding.tunable:
                continue
            if finding.setting == LOOPBACK_CONNTRACK:
                self._untrack_loopback()
            else:
                self._raise_sysctl(finding)

    def _raise_sysctl(self, finding: Finding) -> None:
        current = read_sysctl(finding.setting, self.proc_sys)
        if _enough(finding.setting, current, finding.needed):
            self.left_alone.append({"setting": finding.setting, "value": current, "needed": finding.needed})
            return
        path = sysctl_path(finding.setting, self.proc_sys)
        change = self._begin({"setting": finding.setting, "old": current, "new": finding.needed,
                              "old_text": path.read_text().strip()})
        path.write_text(_sysctl_text(finding.needed))
        self._applied(change)

    def _untrack_loopback(self) -> None:
        state = read_loopback_conntrack(True, self.iptables, self.nft)
        if state["tool"] is None or state["error"]:
            raise UserError("cannot exempt loopback from conntrack: "
                            + (state["error"] or "neither iptables nor nft is installed (apt-get install iptables)"))
        missing = [chain for chain in NOTRACK_CHAINS if chain not in state["untracked_chains"]]
        if not missing:
            self.left_alone.append({"setting": LOOPBACK_CONNTRACK, "value": "untracked", "needed": "untracked"})
            return
        if state["tool"] == "nft" and firewall([str(self.nft), "list", "table", "ip", NFT_TABLE]).returncode == 0:
            raise UserError(f"nft table ip {NFT_TABLE} exists but does not exempt all loopback traffic: "
                            f"`nft delete table ip {NFT_TABLE}` (a run that did not end cleanly left it)")
        change = {"setting": LOOPBACK_CONNTRACK, "old": "tracked", "new": "untracked", "tool": state["tool"],
                  "backend": state["backend"], "added": [], "undo": []}
        if state["tool"] == "iptables":
            # iptables-nft creates the raw table and its base chains for the first rule and leaves them behind
            # when the rule goes: hooks every packet passes. Drop them again if they were not there before.
            raw_table = [str(self.nft), "list", "table", "ip", "raw"]
            change["drop_empty_raw_table"] = (state["backend"] == "nf_tables" and os.access(self.nft, os.X_OK)
                                              and firewall(raw_table).returncode != 0)
        # Each rule's undo is recorded before the rule goes in: a delete of a rule that never went in fails
        # harmlessly, a rule in without its undo recorded would stay for good.
        self._begin(change)
        if state["tool"] == "iptables":
            self._add_iptables_rules(change, missing)
        else:
            self._add_nft_table(change, missing)
        self._applied(change)

    def _add_iptables_rules(self, change: dict, chains: list[str]) -> None:
        for chain in chains:
            rule = iptables_notrack_rule(chain)
            change["added"].append(shlex.join(["iptables", "-t", "raw", "-A", *rule]))
            change["undo"].append([str(self.iptables), "-t", "raw", "-D", *rule])
            self._write_journal()
            firewall_or_fail([str(self.iptables), "-t", "raw", "-I", *rule])

    def _add_nft_table(self, change: dict, chains: list[str]) -> None:
        table = nft_notrack_table(chains)
        change["added"].append(table)
        change["undo"].append([str(self.nft), "delete", "table", "ip", NFT_TABLE])
        self._write_journal()
        firewall_or_fail([str(self.nft), "-f", "-"], stdin=table)

    # ---- putting them back ---------------------------------------------------------------------------------

    def restore(self, say: Callable[[str], None] | None = None) -> list[dict]:
        """Writes back every value tune() changed, unless someone else changed it since (then it is left
        and reported), and deletes the rules it added. Returns the settings not restored; with say, says
        one line per item put back. Safe to call more than once."""
        not_restored: list[dict] = []
        if self.restored:
            return not_restored
        self.restored = True
        for change in reversed(self.changed):
            if change.get("undone"):  # by a restore that was itself cut short
                continue
            left = self._remove_rules(change, say) if "undo" in change else self._restore_sysctl(change, say)
            if left is not None:
                not_restored.append(left)
            change["undone"] = True
            self._write_journal(must=False)  # a full disk must not keep the rest of the host from going back
        if self.record:
            self.record.update(restored_at=model.utc_now(), restored_by=os.getpid(), not_restored=not_restored)
            self._write_journal(must=False)
        return not_restored

    def _remove_rules(self, change: dict, say: Callable[[str], None] | None) -> dict | None:
        """Runs a rules change's undo commands; the change with what failed when some did, else None."""
        failed = []
        for argv in change["undo"]:
            proc = firewall(argv)
            if proc.returncode == 0:
                if say:
                    say(f"{change['setting']}: removed with `{shlex.join(argv)}`")
            elif change["applied"]:  # someone removed it already; a delete never matches a rule we did not add
                failed.append(f"{shlex.join(argv)}: {proc.stderr.strip()}")
        if change.get("drop_empty_raw_table"):
            self._drop_raw_table_if_empty()
        return dict(change, found="; ".join(failed)) if failed else None

    def _restore_sysctl(self, change: dict, say: Callable[[str], None] | None) -> dict | None:
        """Writes a sysctl back if it still has the value tune() wrote; the change with the value found when
        someone else has changed it since, else None."""
        current = read_sysctl(change["setting"], self.proc_sys)
        if current == change["new"]:
            sysctl_path(change["setting"], self.proc_sys).write_text(change["old_text"])
            if say:
                say(f"{change['setting']} back to {' '.join(change['old_text'].split())} "
                    f"from {_sysctl_text(change['new'])}")
        elif change["applied"]:  # else the process died before the write: nothing to put back
            return dict(change, found=current)
        return None

    def _drop_raw_table_if_empty(self) -> None:
        """Deletes the raw table tune() made iptables create, unless someone has put a rule in it since."""
        listing = firewall([str(self.iptables), "-t", "raw", "-S"])
        if listing.returncode == 0 and all(line.startswith("-P ") for line in listing.stdout.splitlines()):
            firewall([str(self.nft), "delete", "table", "ip", "raw"])

    def __enter__(self) -> Tuning:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def tune(findings: list[Finding], proc_sys: Path = PROC_SYS, iptables: Path = IPTABLES, nft: Path = NFT,
         journal: Path | None = None) -> Tuning:
    """Raises (never lowers) the tunable findings' sysctls now and exempts loopback from conntrack when that
    was found; use as `with tune(findings) as tuning:` so all is undone on the way out, exceptions and
    KeyboardInterrupt included. With a journal (journal.journal_path), each change is written there before it
    is made, so that journal.restore_abandoned() can undo it should this process be killed before it can."""
    tunable = [f for f in findings if f.tunable]
    if tunable and os.geteuid() != 0:
        raise UserError("raising host limits needs root: run as root, or first run "
                        + "; ".join(f.fix for f in tunable))
    tuning = Tuning(proc_sys=proc_sys, iptables=iptables, nft=nft, journal=journal)
    try:
        tuning._apply(tunable)
    except BaseException as error:
        tuning.restore()
        if isinstance(error, OSError):
            hint = " (in a container, /proc/sys is read-only: tune the host)" \
                if str(error.filename).startswith(str(proc_sys)) else ""
            raise UserError(f"could not write {error.filename}: {error.strerror}{hint}") from error
        raise
    return tuning
