"""Paths the operator gives: made absolute without tripping on a symlink loop, and checked for writing.

`Path.resolve()` raises RuntimeError on a symlink loop (a traceback instead of the file's
name); `real` leaves a loop as it is, for the read to name. A report that cannot be written
used to fail after the whole run, with a traceback; a plan folder under a file failed every
step. Both are bad input, answered before any host is touched (`unwritable`).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import InputProblem


def real(path: Path) -> Path:
    """`path` absolute, its symlinks resolved where they lead somewhere."""
    return Path(os.path.realpath(path))


def unwritable(path: Path, flag: str, *, folder: bool) -> InputProblem | None:
    """Why the run could not write `path` (a file, or a `folder` it fills), or None when it can.

    Nothing is created: the nearest existing ancestor must be a folder the run may write in,
    and `path` itself, if it exists, of the right kind.
    """
    path = Path(os.path.abspath(path))
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        return InputProblem(flag, str(path), f"exists and is not a {kind}", f"name a {kind} to write, or a new path")
    if path.exists():
        writable = os.access(path, os.W_OK | (os.X_OK if folder else 0))
        return None if writable else InputProblem(flag, str(path), f"this user cannot write the {kind}", _FIX)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return InputProblem(flag, str(path), f"{ancestor} is a file, so nothing can be made under it", _FIX)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return InputProblem(flag, str(path), f"this user cannot create anything in {ancestor}", _FIX)
    return None


_FIX = "choose a path in a folder you can write to"
