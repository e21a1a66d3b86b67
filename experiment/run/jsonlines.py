"""The JSON objects in a program's output: ephttpd, pyhttpd, deadconn, pipetest and openload each print one
JSON object per line, among lines of other text (warnings, a sanitizer's report, the engine's own)."""

from __future__ import annotations

import json
from collections.abc import Callable


def json_object(line: str) -> dict | None:
    """The JSON object one line of output holds; None for any other line."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def last_json(text: str, accept: Callable[[dict], bool] = lambda _: True) -> dict | None:
    """The last JSON object in text that accept takes (any, by default); None when there is none."""
    for line in reversed(text.splitlines()):
        data = json_object(line)
        if data is not None and accept(data):
            return data
    return None
