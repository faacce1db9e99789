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

from core.connection import RUN_READS, RunReads
from tasks.files import FileFact, facts_script, parse_facts
from tasks.packages import missing, query_script
from tasks.remote import Expectation, Mode, known, mode, run, shell
from tasks.systemd import ServiceFact, parse_show_many, show_script

SECTION = "@@matrix-facts "
STEP_SECTION = "@@matrix-step-read "


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


@dataclass(frozen=True)
class Reading:
    """What one read-ahead reads: packages, files, units, users, and a component's own read-only commands."""

    packages: Sequence[str] = ()
    files: Sequence[str] = ()
    units: Sequence[str] = ()
    users: Sequence[str] = ()
    commands: Mapping[str, str] = field(default_factory=dict)  # name → command

    @property
    def script(self) -> str:
        """The one command reading all of it, in sections. The commands' exit status is not checked."""
        scripts = {
            "package": query_script(list(self.packages)) if self.packages else "",
            "file": facts_script(list(self.files)) if self.files else "",
            "unit": f"{show_script(list(self.units))} || true" if self.units else "",
            "user": users_script(self.users) if self.users else "",
        } | {f"command {name}": f"( {text} ) || true" for name, text in self.commands.items()}
        return "\n".join(f"echo '{SECTION}{kind}'\n{text}" for kind, text in scripts.items() if text)

    def parse(self, out: str) -> HostFacts:
        """The script's output as facts."""
        sections: dict[str, str] = {}
        kind = ""
        for line in out.splitlines(keepends=True):
            if line.startswith(SECTION):
                kind = line[len(SECTION) :].strip()
                sections[kind] = ""
            elif kind:
                sections[kind] += line
        absent = missing(list(self.packages), sections.get("package", ""))
        users = {}
        for line in sections.get("user", "").splitlines():
            name, _, answer = line.partition(" ")
            users[name] = answer == "yes"
        shown = parse_show_many(sections.get("unit", ""))
        return HostFacts(
            packages={name: name not in absent for name in self.packages},
            files=parse_facts(list(self.files), sections.get("file", "")),
            units={unit: shown[unit] for unit in self.units if unit in shown},
            users=users,
            commands={name: sections.get(f"command {name}", "") for name in self.commands},
        )


def together(scripts: Sequence[str]) -> str:
    """One command running each of `scripts` in a subshell of its own, each output followed by a numbered
    marker on a line of its own (a newline first: an output need not end with one)."""
    return "\n".join(f"(\n{script}\n)\nprintf '\\n{STEP_SECTION}{number}\\n'" for number, script in enumerate(scripts))


def apart(out: str, scripts: Sequence[str]) -> dict[str, str]:
    """`together(scripts)`'s output as each script's own, by script (those before a missing marker only)."""
    outputs: dict[str, str] = {}
    start = 0
    for number, script in enumerate(scripts):
        marker = f"\n{STEP_SECTION}{number}\n"
        end = out.find(marker, start)
        if end < 0:
            break
        outputs.setdefault(script, out[start:end])
        start = end + len(marker)
    return outputs


def read_for_run(task: Task, script: str) -> str | None:
    """`script`'s output from the run's one read of every step's read-ahead on this host, while it holds
    (`core.connection.RunReads`); None when the run has no such read or it no longer holds."""
    conn = shell(task)
    reads = conn.options.get(RUN_READS)
    if not isinstance(reads, RunReads) or reads.changed:
        return None
    with conn.run_read_lock:  # steps running at once on the host wait for the one read
        if conn.run_read is None:
            if conn.run_scripts is None:
                conn.run_scripts = list(dict.fromkeys(reads.scripts(task.host.name)))
            if script not in conn.run_scripts:
                return None  # a read no step declares (a drill's own): it goes alone, the run's read waits
            what = Expectation("what every step of the run reads on the host")
            out = run(task, together(conn.run_scripts), what=what, reads_only=True).stdout
            conn.run_read = apart(out, conn.run_scripts)
    return None if reads.changed else conn.run_read.get(script)


def read_facts(task: Task, reading: Reading) -> HostFacts | None:
    """Read everything of `reading` in one command (or take it from the run's read); None in plan mode.
    The facts are kept for the primitives too."""
    if mode(task) is Mode.PLAN:
        return None
    script = reading.script
    out = read_for_run(task, script)
    if out is None:
        out = run(task, script, what=Expectation("the component's state"), reads_only=True).stdout
    facts = reading.parse(out)
    kinds = {"package": facts.packages, "file": facts.files, "unit": facts.units, "user": facts.users}
    conn = shell(task)
    conn.read_ahead[conn.step] = {
        f"{kind}:{name}": fact for kind, found in kinds.items() for name, fact in found.items()
    }
    return facts


def known_facts(task: Task, reading: Reading) -> HostFacts | None:
    """The facts of `reading` (without commands) when this step's read-ahead holds all of them, else None."""
    found = {}
    kinds = {"package": reading.packages, "file": reading.files, "unit": reading.units, "user": reading.users}
    for kind, names in kinds.items():
        found[kind] = known(task, kind, list(names)) if names else {}
        if found[kind] is None:
            return None
    return HostFacts(packages=found["package"], files=found["file"], units=found["unit"], users=found["user"])


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
    facts = read_facts(task, Reading(packages, files, units, users, commands or {}))
    return dict(facts.commands) if facts else {}
