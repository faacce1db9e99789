"""Read ahead: one remote command reads a component's packages, files, units and users.

`packages`, `put_files`, `put_artifacts`, `services` and `service_user` each read the
state they need, so a component built from them costs a command per primitive even when
nothing is to be done. A component's task calls `read_ahead` first with what it is about
to converge; the primitives then take their facts from it and run nothing more when
nothing differs. The facts hold for the step that read them, until the next command not
marked `reads_only` (which may have changed them); a name missing from the read-ahead only
means its primitive reads it itself.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from nornir.core.task import Task

from tasks.files import facts_script, parse_facts
from tasks.packages import missing, query_script
from tasks.remote import Expectation, Mode, mode, run, shell
from tasks.systemd import parse_show_many, show_script

SECTION = "@@matrix-facts "


def users_script(names: Sequence[str]) -> str:
    quoted = " ".join(shlex.quote(n) for n in names)
    return f'for u in {quoted}; do if id -u "$u" >/dev/null 2>&1; then echo "$u yes"; else echo "$u no"; fi; done'


def read_ahead(
    task: Task,
    *,
    packages: Sequence[str] = (),
    files: Sequence[str] = (),
    units: Sequence[str] = (),
    users: Sequence[str] = (),
    commands: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Read the state of `packages`, `files`, `units` and `users` in one command, for the primitives.

    `commands` are further read-only commands of the component's own (named); their
    outputs are returned by name. Their exit status is not checked: print what matters.
    """
    if mode(task) is Mode.PLAN:
        return {}
    scripts = {
        "package": query_script(list(packages)) if packages else "",
        "file": facts_script(list(files)) if files else "",
        "unit": f"{show_script(list(units))} || true" if units else "",
        "user": users_script(users) if users else "",
    } | {f"command {name}": f"( {text} ) || true" for name, text in (commands or {}).items()}
    script = "\n".join(f"echo '{SECTION}{kind}'\n{text}" for kind, text in scripts.items() if text)
    out = run(task, script, what=Expectation("the component's state"), reads_only=True).stdout
    sections: dict[str, str] = {}
    kind = ""
    for line in out.splitlines(keepends=True):
        if line.startswith(SECTION):
            kind = line[len(SECTION) :].strip()
            sections[kind] = ""
        elif kind:
            sections[kind] += line
    absent = missing(list(packages), sections.get("package", ""))
    facts: dict[str, object] = {f"package:{name}": name not in absent for name in packages}
    facts |= {f"file:{path}": fact for path, fact in parse_facts(list(files), sections.get("file", "")).items()}
    facts |= {f"unit:{unit}": fact for unit, fact in parse_show_many(sections.get("unit", "")).items()}
    for line in sections.get("user", "").splitlines():
        name, _, answer = line.partition(" ")
        facts[f"user:{name}"] = answer == "yes"
    conn = shell(task)
    conn.read_ahead = dict(facts)
    conn.read_ahead_step = conn.step
    return {name: sections.get(f"command {name}", "") for name in commands or {}}
