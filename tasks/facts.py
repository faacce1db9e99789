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


KINDS = ("packages", "files", "units", "users")  # what a Reading reads by name, besides its commands


@dataclass(frozen=True)
class Reading:
    """What one read-ahead reads: packages, files, units, users, and a component's own read-only commands."""

    packages: Sequence[str] = ()
    files: Sequence[str] = ()
    units: Sequence[str] = ()
    users: Sequence[str] = ()
    commands: Mapping[str, str] = field(default_factory=dict)  # name → command

    def sections(self) -> dict[str, str]:
        """The script's sections in their order: kind → the command reading it."""
        scripts = {
            "package": query_script(list(self.packages)) if self.packages else "",
            "file": facts_script(list(self.files)) if self.files else "",
            "unit": f"{show_script(list(self.units))} || true" if self.units else "",
            "user": users_script(self.users) if self.users else "",
        } | {f"command {name}": f"( {text} ) || true" for name, text in self.commands.items()}
        return {kind: text for kind, text in scripts.items() if text}

    @property
    def script(self) -> str:
        """The one command reading all of it, in sections, each ended by a newline of its own (an output need
        not end with one, and the next heading must start a line). The commands' exit status is not checked."""
        return "\n".join(f"echo '{SECTION}{kind}'\n{text}\necho" for kind, text in self.sections().items())

    def parse(self, out: str) -> HostFacts:
        """The script's output as facts. Only the next section's own heading starts it: a command printing
        a heading-like line of another section only prints."""
        headings = iter(self.sections())
        heading = next(headings, None)
        sections: dict[str, str] = {}
        kind = ""
        for line in out.splitlines(keepends=True):
            if heading is not None and line == f"{SECTION}{heading}\n":
                kind, heading = heading, next(headings, None)
                sections[kind] = ""
            elif kind:
                sections[kind] += line
        sections = {kind: text.removesuffix("\n") for kind, text in sections.items()}  # each section's own newline
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

    @classmethod
    def at_once(cls, readings: Sequence[Reading]) -> Reading:
        """One read of everything `readings` read: each package, file, unit and user once, and each distinct
        command once (numbered: two steps may give one name to different commands)."""
        texts = dict.fromkeys(text for reading in readings for text in reading.commands.values())

        def union(kind: str) -> list[str]:
            return list(dict.fromkeys(name for reading in readings for name in getattr(reading, kind)))

        return cls(*(union(kind) for kind in KINDS), commands={str(number): text for number, text in enumerate(texts)})

    def covers(self, other: Reading) -> bool:
        """Whether this reads everything `other` reads."""
        names = all(set(getattr(other, kind)) <= set(getattr(self, kind)) for kind in KINDS)
        return names and set(other.commands.values()) <= set(self.commands.values())

    def part(self, found: HostFacts, other: Reading) -> HostFacts:
        """`other`'s part of the facts this read `found` (it `covers` other): what other's own read finds."""
        numbers = {text: number for number, text in self.commands.items()}
        return HostFacts(
            packages={name: found.packages[name] for name in other.packages},
            files={path: found.files[path] for path in other.files},
            units={unit: found.units[unit] for unit in other.units if unit in found.units},
            users={user: found.users[user] for user in other.users if user in found.users},
            commands={name: found.commands[numbers[text]] for name, text in other.commands.items()},
        )


def read_for_run(task: Task, reading: Reading) -> HostFacts | None:
    """`reading`'s facts from the run's one read of every step's read-ahead on this host, while it holds
    (`core.connection.RunReads`); None when the run has no such read, it does not cover `reading` or it
    no longer holds."""
    conn = shell(task)
    reads = conn.options.get(RUN_READS)
    if not isinstance(reads, RunReads) or reads.changed:
        return None
    with conn.run_read_lock:  # steps running at once on the host wait for the one read
        if conn.run_read is None:
            whole = Reading.at_once(reads.readings(task.host.name))
            if not whole.covers(reading):
                return None  # a read no step declares (a drill's own): it goes alone, the run's read waits
            what = Expectation("what every step of the run reads on the host")
            conn.run_read = (whole, whole.parse(run(task, whole.script, what=what, reads_only=True).stdout))
    whole, found = conn.run_read
    return whole.part(found, reading) if whole.covers(reading) and not reads.changed else None


def read_facts(task: Task, reading: Reading) -> HostFacts | None:
    """Read everything of `reading` in one command (or take it from the run's read); None in plan mode.
    The facts are kept for the primitives too."""
    if mode(task) is Mode.PLAN:
        return None
    facts = read_for_run(task, reading)
    if facts is None:
        out = run(task, reading.script, what=Expectation("the component's state"), reads_only=True).stdout
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
