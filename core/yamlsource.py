"""YAML files with line numbers, duplicate-key detection and CHANGE_ marker scanning.

PyYAML silently keeps the last of two equal keys, which would hide a duplicated host
name in `hosts.yaml`; composing the node tree ourselves lets us refuse it and point at
the line of every key an error message names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError, InputProblem

KeyPath = tuple[str | int, ...]

# libyaml's parser when PyYAML was built with it: ten times the pure-Python one's speed.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Bounds on what a settings file may hold, far above any real one: a wrong path (a log, an
# image) or a file of aliases that expand exponentially ("billion laughs") is refused in
# bounded time and memory instead of exhausting them.
MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000  # YAML nodes, each alias counted as often as it is used
MAX_DEPTH = 64  # nesting; a recursive alias has none
MARKER = re.compile(r"#\s*(CHANGE_TO_YOUR_[A-Z0-9_]+)")


@dataclass(frozen=True)
class Placeholder:
    """A value the operator still has to set (its line carries a CHANGE_TO_YOUR_ marker)."""

    file: str
    line: int
    key: str
    marker: str


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file that remembers where each key was written."""

    path: Path
    label: str
    data: Any
    lines: dict[KeyPath, int]
    placeholders: tuple[Placeholder, ...]

    def line(self, key: KeyPath) -> int | None:
        """Line of `key`, or of its nearest ancestor the file spells out."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None

    def problem(self, key: KeyPath, message: str, fix: str) -> InputProblem:
        return InputProblem(self.label, dotted(key), message, fix, self.line(key))


def dotted(key: KeyPath) -> str:
    """`("synapse", "workers", 0)` → `synapse.workers[0]`."""
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def read_text(path: Path, label: str) -> str:
    """The text of the settings file `path`: a regular file of at most MAX_BYTES, UTF-8 (a BOM is allowed)."""
    try:
        if not path.is_file():
            if path.is_symlink() and not path.exists():
                problem = "a symbolic link to nothing (its target is missing, or a loop)"
                raise InputError([InputProblem(label, "(file)", problem, f"point {label} at the file itself")])
            if path.exists():
                raise InputError(
                    [InputProblem(label, "(file)", "not a regular file", "pass the path of the file itself")]
                )
            raise InputError([InputProblem(label, "(file)", "file not found", f"create {label} or pass its path")])
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(
            [InputProblem(label, "(file)", f"cannot read: {exc.strerror}", "check the path and its permissions")]
        ) from None
    if len(raw) > MAX_BYTES:
        raise InputError(
            [
                InputProblem(
                    label,
                    "(file)",
                    f"larger than {MAX_BYTES // 1024 // 1024} MiB: not a settings file",
                    "check that the path names the right file",
                )
            ]
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            [
                InputProblem(
                    label,
                    "(encoding)",
                    f"not UTF-8 text (byte {raw[exc.start : exc.start + 1]!r} at offset {exc.start})",
                    f"save it as UTF-8, e.g. iconv -f <its encoding> -t UTF-8 {path} > {path}.utf8 (then rename)",
                    line,
                )
            ]
        ) from None


def load_yaml(path: Path, label: str | None = None) -> YamlDoc:
    """Parse `path`; an unreadable file, a syntax error, a duplicate key or a runaway alias becomes an InputError."""
    label = label or str(path)
    text = read_text(path, label)
    lines: dict[KeyPath, int] = {}
    problems: list[InputProblem] = []
    try:
        loader = SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:  # before the values are built: merge keys copy what aliases share
                _walk(node, (), lines, problems, label, [MAX_NODES])
            data = loader.construct_document(node) if node is not None and not problems else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(
            [InputProblem(label, "(syntax)", f"not valid YAML: {problem}", "fix the YAML syntax at that line", line)]
        ) from None
    except _TooLarge as exc:
        fix = "write the values out instead of nesting aliases (&anchor / *alias) in each other"
        where = dotted(exc.key[:3]) + ("…" if len(exc.key) > 3 else "")
        raise InputError([InputProblem(label, where, exc.why, fix, exc.line)]) from None
    if problems:
        raise InputError(problems)
    return YamlDoc(path, label, data, lines, tuple(_placeholders(text, lines, label)))


class _TooLarge(Exception):
    def __init__(self, key: KeyPath, line: int, why: str) -> None:
        self.key, self.line, self.why = key, line, why


def _walk(
    node: yaml.Node,
    key: KeyPath,
    lines: dict[KeyPath, int],
    problems: list[InputProblem],
    label: str,
    budget: list[int],
) -> None:
    """Note the line of every key and refuse duplicate keys; `budget`: the nodes left to visit (MAX_NODES)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(
            key, node.start_mark.line + 1, f"holds more than {MAX_NODES} values (each use of an alias counted)"
        )
    if len(key) > MAX_DEPTH:
        raise _TooLarge(key, node.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            name = str(key_node.value)
            child = (*key, name)
            if name in seen:
                problems.append(
                    InputProblem(
                        label,
                        dotted(child),
                        f"'{name}' appears twice here (YAML keeps only the last one)",
                        "give each entry a unique name or merge the two",
                        key_node.start_mark.line + 1,
                    )
                )
            seen.add(name)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, problems, label, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*key, index)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, problems, label, budget)


def _placeholders(text: str, lines: dict[KeyPath, int], label: str) -> list[Placeholder]:
    """Every line with a CHANGE_TO_YOUR_ marker, named by the deepest key on that line."""
    by_line: dict[int, KeyPath] = {}
    for key, line in lines.items():
        if len(key) >= len(by_line.get(line, ())):
            by_line[line] = key
    found = []
    for number, line_text in enumerate(text.splitlines(), start=1):
        match = MARKER.search(line_text)
        if match and not line_text.lstrip().startswith("#"):
            key = by_line.get(number) or _nearest_key_above(by_line, number)
            found.append(Placeholder(label, number, dotted(key), match.group(1)))
    return found


def _nearest_key_above(by_line: dict[int, KeyPath], number: int) -> KeyPath:
    above = [line for line in by_line if line <= number]
    return by_line[max(above)] if above else ()
