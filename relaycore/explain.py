"""msgspec's validation errors -> relaycore's one line about the config file.

msgspec checks types, ranges and unknown keys while it decodes, and says where in its own
words ("Expected `int` >= 1 - at `$.relay.workers`"); `explain` rewrites that as the line
a user sees, path first, with the value the user wrote ("relay.workers: expected an
integer >= 1, got 0"), which msgspec leaves out and we find again in the untyped document.
A check of relaycore's own (a ConfigError raised in a Struct's __post_init__, with a path
relative to that Struct) comes wrapped in msgspec's error: the location msgspec adds
completes its path.
"""

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

from relaycore.errors import ConfigError

_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
}


def explain(err: msgspec.ValidationError, text: str | bytes, source: str, root: type) -> str:
    """`err`, raised decoding `text` (from `source`) as `root`, as one line that starts
    with the path of the key at fault."""
    match = re.fullmatch(r"(?s)(.*?)(?: - at `\$([^`]*)`)?", str(err))
    assert match is not None  # the pattern matches any string
    body, path = match[1], (match[2] or "").removeprefix(".")
    if isinstance(err.__cause__, ConfigError):
        return f"{path}.{err.__cause__}".removeprefix(".")
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", body):
        # The top level has no path of its own; the file stands for it.
        return f"{path or source}: unknown key {m[1]!r}"
    if m := re.fullmatch(r"Object missing required field `(.*)`", body):
        return f"{path}.{m[1]}: required key is missing".removeprefix(".")
    got = _got(msgspec.toml.decode(text), path)
    if body.startswith("Invalid enum value"):
        return f"{path}: expected one of {_one_of(path, root)}{got}"
    if re.match(r"Expected `str(?: \| null)?`", body) and _choices(path, root):
        # `min_tls = 1.2` is the natural slip: TOML reads a number where the key wants text.
        return f"{path}: expected one of {_one_of(path, root)} (in quotes){got}"
    if m := re.fullmatch(r"Expected `str \| array`(?:, got `\w+`)?", body):
        # A key that takes one string or a list of them ([gateway] listen).
        return f"{path}: expected a string or an array of strings{got}"
    # TOML has no null: `str | null` is how msgspec names an optional key's type.
    if m := re.fullmatch(r"Expected `(\w+)(?: \| null)?`(?:, got `\w+`)?(.*)", body):
        bound = re.sub(r"(\d)\.0\b", r"\1", m[2])
        return f"{path}: expected {_WORDS.get(m[1], m[1])}{bound}{got}"
    return f"{path or source}: {lower_first(body)}"


def _parts(path: str) -> list[str | int]:
    return [int(p[1:-1]) if p[0] == "[" else p for p in re.findall(r"\[\d+\]|[^.\[]+", path)]


def _got(doc: Any, path: str) -> str:
    # The value as the user wrote it: msgspec's messages name only its type.
    for part in _parts(path):
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return ""
    return f", got {_show(doc)}"


def _choices(path: str, root: type) -> tuple[Any, ...]:
    t: mi.Type = mi.type_info(root)
    for part in _parts(path):
        if isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == part), mi.AnyType())
        elif isinstance(t, mi.VarTupleType | mi.ListType):
            t = t.item_type
    if isinstance(t, mi.UnionType):  # an optional key: Literal[...] | None
        t = next((u for u in t.types if isinstance(u, mi.LiteralType)), t)
    return t.values if isinstance(t, mi.LiteralType) else ()


def _one_of(path: str, root: type) -> str:
    return ", ".join(repr(v) for v in _choices(path, root))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value) if isinstance(value, str) else str(value)


def lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]
