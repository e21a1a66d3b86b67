"""Loopback connection tracking: whether the raw table exempts loopback traffic, and the rules that do.

Each loopback connect creates a conntrack entry, and a closed connection keeps it for a while. Rules in the
raw table can exempt loopback traffic (lo, 127.0.0.0/8 both ends). They are read and written with the tool
the host's other rules use: iptables when installed (whichever its backend), nft only without iptables.
read_loopback_conntrack() says whether loopback is tracked, for the preflight to judge; the rules and the nft
table here are the ones --tune-host (tune()) adds and removes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from ..errors import UserError

IPTABLES = Path("/usr/sbin/iptables")
NFT = Path("/usr/sbin/nft")
LOOPBACK_NET = "127.0.0.0/8"
# A loopback packet passes the raw table twice: in OUTPUT as it is sent on lo, in PREROUTING as it arrives.
NOTRACK_CHAINS = {"PREROUTING": "-i", "OUTPUT": "-o"}
# Marks the iptables rules tune() adds, so that restore() deletes those and no one else's.
NOTRACK_COMMENT = "epollbench: loopback untracked"
# The nft table tune() adds when the host has nft but no iptables; restore() deletes it whole.
NFT_TABLE = "epollbench_notrack"
FIREWALL_TIMEOUT_S = 30


def firewall(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """Runs an iptables or nft command; one that hangs fails after FIREWALL_TIMEOUT_S."""
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=FIREWALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 1, "", f"{argv[0]} did not answer within {FIREWALL_TIMEOUT_S} s")


def firewall_or_fail(argv: list[str], stdin: str | None = None) -> None:
    proc = firewall(argv, stdin)
    if proc.returncode != 0:
        raise UserError(f"`{shlex.join(argv)}` failed: {proc.stderr.strip()}")


def iptables_rule_untracks_loopback(line: str, chain: str) -> bool:
    """Whether an `iptables -S` line is a rule of chain that exempts all loopback traffic from conntrack:
    target CT --notrack (or NOTRACK), narrowed by nothing but the lo interface and 127.0.0.0/8 addresses."""
    tokens = shlex.split(line)
    if tokens[:2] != ["-A", chain]:
        return False
    matches = tokens[2:]
    for at in range(len(matches) - 3):
        if matches[at:at + 3] == ["-m", "comment", "--comment"]:
            del matches[at:at + 4]  # a comment narrows nothing
            break
    for target in (["-j", "CT", "--notrack"], ["-j", "NOTRACK"]):
        if matches[-len(target):] == target:
            matches = matches[:-len(target)]
            break
    else:
        return False
    allowed = {("-s", LOOPBACK_NET), ("-d", LOOPBACK_NET), (NOTRACK_CHAINS[chain], "lo")}
    return len(matches) % 2 == 0 and set(zip(matches[::2], matches[1::2], strict=True)) <= allowed


_NFT_HOOK = re.compile(r"^\s*type filter hook (prerouting|output) priority ")
_NFT_NOTRACK = re.compile(r'^\s*(?:(iifname|oifname) "lo" )?(?:ip saddr 127\.0\.0\.0/8 )?(?:ip daddr 127\.0\.0\.0/8 )?'
                          r'(?:counter (?:packets \d+ bytes \d+ )?)?notrack(?: comment ".*")?\s*$')


def nft_untracked_chains(ruleset: str) -> list[str]:
    """The raw-table chains (PREROUTING, OUTPUT) in which an `nft list ruleset` exempts all loopback traffic
    from conntrack: a notrack rule in a base chain on that hook narrowed only by lo and 127.0.0.0/8."""
    found, hook = set(), None
    for line in ruleset.splitlines():
        if line.strip().startswith("chain "):
            hook = None
        matched = _NFT_HOOK.match(line)
        if matched:
            hook = matched.group(1).upper()
            continue
        rule = _NFT_NOTRACK.match(line)
        if hook and rule and rule.group(1) in (None, "iifname" if hook == "PREROUTING" else "oifname"):
            found.add(hook)
    return [chain for chain in NOTRACK_CHAINS if chain in found]


def read_loopback_conntrack(conntrack_loaded: bool, iptables: Path = IPTABLES, nft: Path = NFT) -> dict:
    """Whether this network namespace tracks loopback traffic: conntrack loaded and no rule in the raw table
    exempting lo's 127.0.0.0/8 traffic in both PREROUTING and OUTPUT. The tool is iptables when installed
    (backend "nf_tables" or "legacy", as `iptables -V` says), else nft. tracked is None when the rules could
    not be read (reading needs root; `error` says why) or there is no tool to read them with."""
    state: dict[str, Any] = {"conntrack_loaded": conntrack_loaded, "tool": None, "backend": None,
                             "untracked_chains": [], "tracked": None, "error": None}
    if os.access(iptables, os.X_OK):
        version = firewall([str(iptables), "-V"]).stdout
        backend = re.search(r"\((nf_tables|legacy)\)", version)
        # iptables before 1.8 has only the legacy backend and does not name it.
        state.update(tool="iptables", backend=backend.group(1) if backend else "legacy")
        listing = firewall([str(iptables), "-t", "raw", "-S"])
        chains = [c for c in NOTRACK_CHAINS
                  if any(iptables_rule_untracks_loopback(line, c) for line in listing.stdout.splitlines())]
    elif os.access(nft, os.X_OK):
        state.update(tool="nft", backend="nf_tables")
        listing = firewall([str(nft), "list", "ruleset"])
        chains = nft_untracked_chains(listing.stdout)
    else:
        state["tracked"] = conntrack_loaded
        return state
    if listing.returncode != 0:
        state["error"] = listing.stderr.strip() or f"{state['tool']} exited with {listing.returncode}"
        return state
    state["untracked_chains"] = chains
    state["tracked"] = conntrack_loaded and chains != list(NOTRACK_CHAINS)
    return state


def notrack_commands(iptables: Path = IPTABLES) -> str:
    """The iptables commands that exempt loopback from conntrack, for a person to run."""
    return "; ".join(f"{iptables} -t raw -I {chain} {side} lo -s {LOOPBACK_NET} -d {LOOPBACK_NET} -j CT --notrack"
                     for chain, side in NOTRACK_CHAINS.items())


def iptables_notrack_rule(chain: str) -> list[str]:
    """tune()'s rule for chain, as the arguments of `iptables -t raw -I` (or -D, to delete it)."""
    return [chain, NOTRACK_CHAINS[chain], "lo", "-s", LOOPBACK_NET, "-d", LOOPBACK_NET,
            "-m", "comment", "--comment", NOTRACK_COMMENT, "-j", "CT", "--notrack"]


def nft_notrack_table(chains: list[str]) -> str:
    """tune()'s nft table exempting loopback in chains, as `nft -f -` reads it."""
    body = "".join(f"  chain {chain.lower()} {{\n    type filter hook {chain.lower()} priority raw;\n"
                   f'    {"iifname" if chain == "PREROUTING" else "oifname"} "lo" ip saddr {LOOPBACK_NET} '
                   f"ip daddr {LOOPBACK_NET} notrack\n  }}\n" for chain in chains)
    return f"table ip {NFT_TABLE} {{\n{body}}}\n"
