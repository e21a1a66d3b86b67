"""JSON Schema (draft 2020-12) of a dataclass, from its fields' types: the published schemas of run.json and
the point files are made from model's dataclasses this way, so a field added there extends them.

A field without a default is required; a dataclass allows no other property. A dataclass whose JSON form is
not its fields says so in a JSON_SCHEMA class attribute, which is used as it is. Types map as JSON reads them:
int to integer, float to number (an integer is a number too), tuple[X, ...] and list[X] to arrays, dict to
an object, X | None to X or null.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def of_type(hint: Any) -> dict:
    """The schema of one annotated type."""
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is Any or hint is object:
        return {}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return getattr(hint, "JSON_SCHEMA", None) or of_dataclass(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [of_type(a) for a in args]
        if all(set(o) == {"type"} for o in options):
            return {"type": [o["type"] for o in options]}
        return {"anyOf": options}
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": of_type(item)}
    if origin is dict or hint is dict:
        return {"type": "object", **({"additionalProperties": of_type(args[1])} if args else {})}
    raise TypeError(f"no JSON schema for {hint!r}")


def of_dataclass(cls: type, skip: tuple[str, ...] = ()) -> dict:
    """An object of cls's fields (less skip), the ones without a default required, no other property."""
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        properties[f.name] = of_type(hints[f.name])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
