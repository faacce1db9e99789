"""Folders depend one way: core/ at the bottom, tasks/ and lab/ on it, runbooks/ (the shell) on top."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("core", "tasks", "lab", "runbooks")
# What each folder may import from the project, itself included.
ALLOWED = {
    "core": {"core"},
    "tasks": {"core", "tasks"},
    "lab": {"core", "lab"},
    "runbooks": {"core", "tasks", "lab", "runbooks"},
}


def imported_folders(path: Path) -> set[str]:
    """The project folders a module imports at any level (a function-level import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(FOLDERS)


def test_no_folder_imports_upwards() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {sorted(imported_folders(path) - ALLOWED[folder])}"
        for folder in FOLDERS
        for path in sorted((REPO / folder).rglob("*.py"))
        if imported_folders(path) - ALLOWED[folder]
    ]
    assert not wrong, "\n".join(wrong)
