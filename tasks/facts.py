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
from dataclasses import dataclass, field

from nornir.core.task import Task

from tasks.files import FileFact, facts_script, parse_facts
from tasks.packages import missing, query_script
from tasks.remote import Expectation, Mode, known, mode, run, shell
from tasks.systemd import ServiceFact, parse_show_many, show_script

SECTION = "@@matrix-facts "


def users_script(names: Sequence[str]) -> str:
    quoted = " ".join(shlex.quote(n) for n in names)
    return f'for u in {quoted}; do if id -u "$u" >/dev/null 2>&1; then echo "$u yes"; else echo "$u no"; fi; done'


@dataclass(frozen=True)
class HostFacts:
    """What one read-ahead found on a host: the input of every decision a component makes."""

    packages: Mapping[str, bool] = field(default_factory=dict)  # name → installed
    files: Mapping[str, FileFact] = field(default_factory=dict)
    units: Mapping[str, ServiceFact] = field(default_factory=dict)
    users: Mapping[str, bool] = field(default_factory=dict)  # name → exists
    commands: Mapping[str, str] = field(default_factory=dict)  # a component's own read-only commands → output


def read_script(
    packages: Sequence[str],
    files: Sequence[str],
    units: Sequence[str],
    users: Sequence[str],
    commands: Mapping[str, str],
) -> str:
    """The one command reading all of it, in sections."""
    scripts = {
        "package": query_script(list(packages)) if packages else "",
        "file": facts_script(list(files)) if files else "",
        "unit": f"{show_script(list(units))} || true" if units else "",
        "user": users_script(users) if users else "",
    } | {f"command {name}": f"( {text} ) || true" for name, text in commands.items()}
    return "\n".join(f"echo '{SECTION}{kind}'\n{text}" for kind, text in scripts.items() if text)


def parse_read(
    out: str, packages: Sequence[str], files: Sequence[str], units: Sequence[str], commands: Mapping[str, str]
) -> HostFacts:
    """`read_script`'s output as facts."""
    sections: dict[str, str] = {}
    kind = ""
    for line in out.splitlines(keepends=True):
        if line.startswith(SECTION):
            kind = line[len(SECTION) :].strip()
            sections[kind] = ""
        elif kind:
            sections[kind] += line
    absent = missing(list(packages), sections.get("package", ""))
    users = {}
    for line in sections.get("user", "").splitlines():
        name, _, answer = line.partition(" ")
        users[name] = answer == "yes"
    shown = parse_show_many(sections.get("unit", ""))
    return HostFacts(
        packages={name: name not in absent for name in packages},
        files=parse_facts(list(files), sections.get("file", "")),
        units={unit: shown[unit] for unit in units if unit in shown},
        users=users,
        commands={name: sections.get(f"command {name}", "") for name in commands},
    )


def read_facts(
    task: Task,
    *,
    packages: Sequence[str] = (),
    files: Sequence[str] = (),
    units: Sequence[str] = (),
    users: Sequence[str] = (),
    commands: Mapping[str, str] | None = None,
) -> HostFacts | None:
    """Read the state of `packages`, `files`, `units` and `users` in one command; None in plan mode.

    `commands` are further read-only commands of the component's own (named). Their exit
    status is not checked: print what matters. The facts are kept for the primitives too.
    """
    if mode(task) is Mode.PLAN:
        return None
    commands = commands or {}
    script = read_script(packages, files, units, users, commands)
    out = run(task, script, what=Expectation("the component's state"), reads_only=True).stdout
    facts = parse_read(out, packages, files, units, commands)
    kinds = {"package": facts.packages, "file": facts.files, "unit": facts.units, "user": facts.users}
    conn = shell(task)
    conn.read_ahead = {f"{kind}:{name}": fact for kind, found in kinds.items() for name, fact in found.items()}
    conn.read_ahead_step = conn.step
    return facts


def known_facts(
    task: Task, *, packages: Sequence[str] = (), files: Sequence[str] = (), units: Sequence[str] = ()
) -> HostFacts | None:
    """The facts of `packages`, `files` and `units` when this step's read-ahead holds all of them, else None."""
    found = {}
    for kind, names in (("package", packages), ("file", files), ("unit", units)):
        found[kind] = known(task, kind, list(names)) if names else {}
        if found[kind] is None:
            return None
    return HostFacts(packages=found["package"], files=found["file"], units=found["unit"])


def read_ahead(
    task: Task,
    *,
    packages: Sequence[str] = (),
    files: Sequence[str] = (),
    units: Sequence[str] = (),
    users: Sequence[str] = (),
    commands: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`read_facts` for a component still built from primitives: returns its own commands' outputs by name."""
    facts = read_facts(task, packages=packages, files=files, units=units, users=users, commands=commands)
    return dict(facts.commands) if facts else {}
