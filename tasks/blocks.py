"""A marked block inside a file the platform does not own entirely (e.g. /etc/hosts).

Lines outside the markers stay as the operator or the OS wrote them; the block between
them is replaced as a whole, so removing an entry from the inventory removes its line.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from tasks.files import FileSpec, put_files, unified, write
from tasks.remote import Expectation, Mode, mode, primitive, redactor, run

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


@primitive
def ensure_block(task: Task, path: str, name: str, body: str, *, new_mode: int = 0o644) -> Result:
    """Make the block `name` in `path` hold `body`; one remote command when nothing changes."""
    if mode(task) is Mode.PLAN:
        return put_files(task, [FileSpec(f"{path}#{name}", with_block("", name, body), mode=new_mode)])
    quoted = shlex.quote(path)
    out = run(
        task,
        f"if [ -f {quoted} ]; then stat -c '%U %G %a' {quoted}; cat {quoted}; else echo missing; fi",
        what=Expectation(f"the content of {path}", f"check that {path} is a readable regular file"),
    )
    first, _, current = out.stdout.partition("\n")
    if first == "missing":
        owner, group, file_mode, current = "root", "root", new_mode, ""
    else:
        owner, group, mode_text = first.split()
        file_mode = int(mode_text, 8)
    wanted = with_block(current, name, body)
    if wanted == current:
        return Result(host=task.host, result=[], changed=False)
    diff = f"{path}: block {name}\n" + unified(current, wanted, path, redactor(task))
    if mode(task) is Mode.APPLY:
        write(task, FileSpec(path, wanted, owner, group, file_mode))
    return Result(host=task.host, result=[path], changed=True, diff=diff)
