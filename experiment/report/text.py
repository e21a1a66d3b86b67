"""Numbers and strings as the report writes them: three significant digits, shares, ratios, markdown."""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------------------
# Numbers as text

def human(value: float | None) -> str:
    """Three significant digits with a k/M/G suffix: 31712 -> 31.7k, 60000 -> 60.0k, 414.5 -> 414."""
    if value is None:
        return "–"
    rounded = float(f"{value:.3g}")
    scale, suffix = next(((s, x) for s, x in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if abs(rounded) >= s), (1, ""))
    scaled = rounded / scale
    digits = 0 if abs(scaled) >= 100 or scaled == 0 else 1 if abs(scaled) >= 10 else 2
    return f"{scaled:.{digits}f}{suffix}"


def percent(ratio: float | None) -> str:
    if ratio is None:
        return "–"
    value = ratio * 100
    if value >= 10:
        return f"{value:.0f}%"
    if value >= 1:
        return f"{value:.1f}%"
    return f"{value:.2g}%"


def number(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"×{ratio:.3f}" if 0.995 < ratio < 1.005 else f"×{ratio:.2f}"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~!])")


def md_escape(value) -> str:
    """Any text as literal GitHub markdown: <, > and & as entities (no raw HTML survives in any renderer),
    backslash escapes for the characters markdown would act on."""
    if value is None:
        return ""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")
