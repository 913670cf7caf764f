"""The config file: TOML decoded by msgspec into frozen Structs, and the one place where a
problem with it becomes a ConfigError.

msgspec checks types, ranges and unknown keys while it decodes, and says where in its own
words ("Expected `int` >= 1 - at `$.relay.workers`"); _explain rewrites that as relaycore's
one line, path first, with the value the user wrote ("relay.workers: expected an integer
>= 1, got 0"), which msgspec leaves out and we find again in the untyped document. Checks
that need parsing or span several fields run in __post_init__, so that a Struct built in
code is held to them too. They raise ConfigError with a path relative to their own Struct
("listen: ..."); msgspec wraps it, and the location it adds completes the path.
"""

import os
import re
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi

from relaycore.addresses import HostPort, parse_host_port
from relaycore.errors import ConfigError

MAX_WORKERS = 256
# A week: some bound, because TOML can spell `inf` and a timer in milliseconds cannot hold it.
MAX_SECONDS = 604_800

Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
Splice = Literal["auto", "off", "always"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _default_workers() -> int:
    # The CPUs this process may run on (taskset, cpusets), not all the machine has.
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS) or 1


class Relay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[relay]`: the process as a whole. `workers` is resolved when the file is loaded."""

    workers: Annotated[int, msgspec.Meta(ge=1, le=MAX_WORKERS)] = msgspec.field(
        default_factory=_default_workers
    )
    run_dir: Annotated[str, msgspec.Meta(min_length=1)] = "/run/relaycore"
    drain_timeout_s: Seconds = 30.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    splice: Splice = "auto"


class Timeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[timeouts]`, in seconds, for every connector."""

    connect_s: Seconds = 10.0
    idle_s: Seconds = 900.0


class Connector(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[connector]]`: accept on `listen`, forward to `upstream`."""

    name: str
    listen: str
    upstream: str
    tls: bool = True

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"name: expected 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        for key, require_ip in (("listen", True), ("upstream", False)):
            try:
                parse_host_port(getattr(self, key), require_ip=require_ip)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from e
        if self.tls:
            raise ConfigError(
                "tls: TLS origination is not available in this build yet;"
                " set tls = false for a plain TCP relay"
            )

    @property
    def listen_addr(self) -> HostPort:
        return parse_host_port(self.listen, require_ip=True)

    @property
    def upstream_addr(self) -> HostPort:
        return parse_host_port(self.upstream, require_ip=False)


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole file. `connectors` is the `[[connector]]` array, never empty."""

    relay: Relay = msgspec.field(default_factory=Relay)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    connectors: tuple[Connector, ...] = msgspec.field(default=(), name="connector")

    def __post_init__(self) -> None:
        if not self.connectors:
            raise ConfigError("connector: at least one [[connector]] table is required")
        names: dict[str, int] = {}
        listens: dict[HostPort, int] = {}
        for i, c in enumerate(self.connectors):
            if (j := names.setdefault(c.name, i)) != i:
                raise ConfigError(
                    f"connector[{i}].name: {c.name!r} is also the name of connector[{j}]"
                )
            if (j := listens.setdefault(c.listen_addr, i)) != i:
                raise ConfigError(
                    f"connector[{i}].listen: {c.listen_addr} is also the listen address"
                    f" of connector[{j}] ({self.connectors[j].name!r})"
                )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the file at `path`; any problem is a one-line ConfigError."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"{source}: file not found") from e
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from e
    return parse_config(data, source)


def parse_config(text: str | bytes, source: str = "<string>") -> Config:
    """Check TOML text; `source` names it where no field path can (bad TOML, top level)."""
    try:
        return msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(_explain(e, text, source)) from e
    except msgspec.DecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {_lower_first(str(e))}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 (byte {e.start})") from e


def config_summary(cfg: Config) -> str:
    """A few lines for a human, as `relaycore check` prints them."""
    r = cfg.relay
    lines = [f"workers: {r.workers} (up to {r.max_connections} connections each)"]
    lines += [
        f"{c.name}: {c.listen_addr} -> {c.upstream_addr} ({'tls' if c.tls else 'plain'})"
        for c in cfg.connectors
    ]
    return "\n".join(lines)


_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
}


def _explain(err: msgspec.ValidationError, text: str | bytes, source: str) -> str:
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
    if m := re.fullmatch(r"Expected `(\w+)`(?:, got `\w+`)?(.*)", body):
        bound = re.sub(r"(\d)\.0\b", r"\1", m[2])
        return f"{path}: expected {_WORDS.get(m[1], m[1])}{bound}{got}"
    if body.startswith("Invalid enum value"):
        choices = ", ".join(repr(v) for v in _choices(path))
        return f"{path}: expected one of {choices}{got}"
    return f"{path or source}: {_lower_first(body)}"


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


def _choices(path: str) -> tuple[Any, ...]:
    t: mi.Type = mi.type_info(Config)
    for part in _parts(path):
        if isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == part), mi.AnyType())
        elif isinstance(t, mi.VarTupleType | mi.ListType):
            t = t.item_type
    return t.values if isinstance(t, mi.LiteralType) else ()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value) if isinstance(value, str) else str(value)


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]
