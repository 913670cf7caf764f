"""The shape of ext/ that a reader relies on (ext/_core.pxd explains it): files of at most
400 lines, _core.pyx a table of contents that includes every part once, every function
one file uses from another declared in a .pxd with its contract, and [may close] on
exactly the functions after which a connection they were given may be CLOSED (those that
can reach conn_close).

Read from the sources with regular expressions: module-level `cdef` functions start at
column 0, their bodies are indented, and comments start with #.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EXT = Path(__file__).resolve().parents[2] / "ext"
MAX_LINES = 400
TAG = "[may close]"
DEF = re.compile(r"^cdef (?!class |struct |enum|extern)[^=(]*?\b(\w+)\(")


@dataclass
class Function:
    name: str
    path: Path
    contract: str  # the comment lines right after the signature (.pxi) or before (.pxd)
    code: str  # the body, comments left out


def sources(*suffixes: str) -> list[Path]:
    return sorted(p for p in EXT.rglob("*") if p.suffix in suffixes)


def code_of(line: str) -> str:
    return line.split("#", 1)[0]


def signature_end(lines: list[str], k: int) -> int:
    """The line where the signature starting at line k closes its parentheses."""
    depth = 0
    for j in range(k, len(lines)):
        depth += code_of(lines[j]).count("(") - code_of(lines[j]).count(")")
        if depth == 0:
            return j
    raise AssertionError(f"unbalanced signature: {lines[k]!r}")


def definitions() -> dict[str, Function]:
    """Every module-level cdef function with a body (in a .pxi, or inline in a .pxd)."""
    functions: dict[str, Function] = {}
    for path in sources(".pxi", ".pxd"):
        lines = path.read_text().splitlines()
        for k, line in enumerate(lines):
            m = DEF.match(line)
            if not m:
                continue
            end = signature_end(lines, k)
            if not code_of(lines[end]).rstrip().endswith(":"):
                continue  # a prototype
            body = []
            for later in lines[end + 1 :]:
                if later.strip() and not later.startswith(" "):
                    break
                body.append(later)
            if path.suffix == ".pxd":
                comments = preceding_comments(lines, k)
            else:
                comments = []
                for b in body:
                    if not b.strip().startswith("#"):
                        break
                    comments.append(b)
            functions[m.group(1)] = Function(
                m.group(1), path, "\n".join(comments), "\n".join(map(code_of, body))
            )
    return functions


def preceding_comments(lines: list[str], k: int) -> list[str]:
    comments = []
    while k > 0 and lines[k - 1].startswith("#"):
        k -= 1
        comments.insert(0, lines[k])
    return comments


def declarations() -> dict[str, str]:
    """Every function prototype in a .pxd: name -> its contract comment."""
    declared = {}
    for path in sources(".pxd"):
        lines = path.read_text().splitlines()
        for k, line in enumerate(lines):
            m = DEF.match(line)
            if m and not code_of(lines[signature_end(lines, k)]).rstrip().endswith(":"):
                declared[m.group(1)] = "\n".join(preceding_comments(lines, k))
    return declared


def uses(function: Function, names: set[str]) -> set[str]:
    return {n for n in re.findall(r"\b(\w+)\b", function.code) if n in names} - {function.name}


def test_no_ext_file_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(EXT)): n
        for p in sources(".pyx", ".pxd", ".pxi", ".h")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_core_pyx_includes_every_part_once_and_defines_nothing() -> None:
    text = (EXT / "_core.pyx").read_text()
    included = re.findall(r'^include "([^"]+)"$', text, re.M)
    parts = [str(p.relative_to(EXT)) for p in sources(".pxi")]
    assert sorted(included) == parts
    assert not re.search(r"^(cdef|def|class) ", text, re.M)


def test_functions_used_across_files_are_declared() -> None:
    functions = definitions()
    declared = declarations()
    names = set(functions)
    undeclared = sorted(
        f"{callee} ({functions[callee].path.relative_to(EXT)}, used in {f.path.name})"
        for f in functions.values()
        for callee in uses(f, names)
        if functions[callee].path != f.path
        and functions[callee].path.suffix == ".pxi"
        and callee not in declared
    )
    assert undeclared == []


def test_may_close_marks_exactly_the_functions_that_can_close() -> None:
    functions = definitions()
    declared = declarations()
    names = set(functions)
    calls = {name: uses(f, names) for name, f in functions.items()}
    may_close = {"conn_close"}
    while True:
        more = {name for name, callees in calls.items() if callees & may_close} - may_close
        if not more:
            break
        may_close |= more
    wrong = []
    for name, f in sorted(functions.items()):
        if (TAG in f.contract) != (name in may_close) and f.path.suffix == ".pxi":
            wrong.append(f"{name} in {f.path.relative_to(EXT)}")
        if name in declared and (TAG in declared[name]) != (name in may_close):
            wrong.append(f"{name} in its .pxd contract")
    assert wrong == [], f"[may close] wrong (can close: {sorted(may_close)})"


def test_every_declaration_has_a_contract() -> None:
    assert [name for name, contract in declarations().items() if not contract] == []
