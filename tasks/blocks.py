"""A marked block inside a file the platform does not own entirely (e.g. /etc/hosts).

Lines outside the markers stay as the operator or the OS wrote them; the block between
them is replaced as a whole, so removing an entry from the inventory removes its line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from nornir.core.task import Result, Task

from tasks.files import FileSpec, Write, unified, write, write_files
from tasks.remote import Mode, mode, redactor

OWNER = "matrix-platform"


def markers(name: str) -> tuple[str, str]:
    return (f"# BEGIN {OWNER} {name} (managed: edits inside this block are overwritten)", f"# END {OWNER} {name}")


def with_block(text: str, name: str, body: str) -> str:
    """`text` with the block `name` holding `body`: replaced in place, or appended."""
    begin, end = markers(name)
    block = [begin, *body.rstrip("\n").splitlines(), end]
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if starts and ends and ends[0] > starts[0]:
        lines[starts[0] : ends[0] + 1] = block
    else:
        lines = [line for line in lines if line.strip() not in (begin, end)]
        if lines and lines[-1].strip():
            lines.append("")
        lines.extend(block)
    return "\n".join(lines) + "\n"


def read_script(path: str) -> str:
    """Owner, group and mode of `path`, then its text; "missing" when there is none."""
    quoted = shlex.quote(path)
    return f"if [ -f {quoted} ]; then stat -c '%U %G %a' {quoted}; cat {quoted}; else echo missing; fi"


@dataclass(frozen=True)
class BlockFile:
    """A file holding a block, as read on the host."""

    exists: bool
    owner: str = "root"
    group: str = "root"
    mode: int = 0o644
    text: str = ""


def parse(stdout: str) -> BlockFile:
    first, _, text = stdout.partition("\n")
    if first == "missing":
        return BlockFile(exists=False)
    owner, group, mode_text = first.split()
    return BlockFile(True, owner, group, int(mode_text, 8), text)


@dataclass(frozen=True)
class EditBlock:
    """Replace (or add) the block `name` of `path` with `body`; `current` is None when the host was not read."""

    path: str
    name: str
    body: str
    current: BlockFile | None
    new_mode: int = 0o644  # of a file that does not exist yet

    @property
    def wanted(self) -> str:
        return with_block(self.current.text if self.current else "", self.name, self.body)

    def __str__(self) -> str:
        old = (self.current.text if self.current else "").splitlines()
        new = self.wanted.splitlines()
        added, removed = len([x for x in new if x not in old]), len([x for x in old if x not in new])
        return f"edit {self.path}: block {self.name} (+{added} -{removed} lines)"


def block_actions(path: str, name: str, body: str, current: BlockFile | None, new_mode: int = 0o644) -> list[EditBlock]:
    """Nothing when the block already holds `body`."""
    action = EditBlock(path, name, body, current, new_mode)
    return [] if current is not None and action.wanted == current.text else [action]


def edit_block(task: Task, action: EditBlock) -> Result:
    """Carry out `action` in the run's mode: the block alone into the plan folder (plan), its diff (check), written
    with the file's owner and mode kept (apply)."""
    current = action.current
    if current is None:
        spec = FileSpec(f"{action.path}#{action.name}", with_block("", action.name, action.body), mode=action.new_mode)
        return write_files(task, [Write(spec)], None)
    diff = f"{action.path}: block {action.name}\n" + unified(current.text, action.wanted, action.path, redactor(task))
    if mode(task) is Mode.APPLY:
        file_mode = current.mode if current.exists else action.new_mode
        write(task, FileSpec(action.path, action.wanted, current.owner, current.group, file_mode))
    return Result(host=task.host, result=[action.path], changed=True, diff=diff)
