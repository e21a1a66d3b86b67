"""Debian version strings ordered as dpkg orders them (epoch, upstream version, revision; ~ sorts first)."""

from __future__ import annotations

import functools
import re


def _order(char: str) -> int:
    """dpkg's weight of one non-digit character: ~ before the end, the end before letters, letters before
    the rest."""
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of one upstream version or revision: alternating non-digit and digit runs."""
    while a or b:
        a_text, a = re.match(r"(\D*)(.*)", a).groups()  # type: ignore[union-attr]
        b_text, b = re.match(r"(\D*)(.*)", b).groups()  # type: ignore[union-attr]
        for x, y in zip(a_text + "\0" * len(b_text), b_text + "\0" * len(a_text), strict=False):
            weights = (0 if x == "\0" else _order(x), 0 if y == "\0" else _order(y))
            if weights[0] != weights[1]:
                return -1 if weights[0] < weights[1] else 1
        a_num, a = re.match(r"(\d*)(.*)", a).groups()  # type: ignore[union-attr]
        b_num, b = re.match(r"(\d*)(.*)", b).groups()  # type: ignore[union-attr]
        if int(a_num or 0) != int(b_num or 0):
            return -1 if int(a_num or 0) < int(b_num or 0) else 1
    return 0


def split(version: str) -> tuple[int, str, str]:
    """(epoch, upstream version, Debian revision) of a version string."""
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return int(epoch or 0), upstream, revision


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as dpkg --compare-versions would order a and b."""
    (a_epoch, a_up, a_rev), (b_epoch, b_up, b_rev) = split(a), split(b)
    if a_epoch != b_epoch:
        return -1 if a_epoch < b_epoch else 1
    return _compare_part(a_up, b_up) or _compare_part(a_rev, b_rev)


sort_key = functools.cmp_to_key(compare)
