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


def load_yaml(path: Path, label: str | None = None) -> YamlDoc:
    """Parse `path`; any syntax error or duplicate key becomes an InputError."""
    label = label or str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(
            [InputProblem(label, "(file)", "file not found", f"create {label} or pass its path")]
        ) from None
    except OSError as exc:
        raise InputError(
            [InputProblem(label, "(file)", f"cannot read: {exc.strerror}", "check the path and its permissions")]
        ) from None
    try:
        loader = SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(
            [InputProblem(label, "(syntax)", f"not valid YAML: {problem}", "fix the YAML syntax at that line", line)]
        ) from None
    lines: dict[KeyPath, int] = {}
    problems: list[InputProblem] = []
    if node is not None:
        _walk(node, (), lines, problems, label)
    if problems:
        raise InputError(problems)
    return YamlDoc(path, label, data, lines, tuple(_placeholders(text, lines, label)))


def _walk(node: yaml.Node, key: KeyPath, lines: dict[KeyPath, int], problems: list[InputProblem], label: str) -> None:
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
            _walk(value_node, child, lines, problems, label)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*key, index)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, problems, label)


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
