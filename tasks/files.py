"""Files on a host: rendered templates and plain content, written only when they differ.

One remote command reads the state of all of a task's files (owner, group, mode,
checksum); each file that differs is then written atomically (a temporary file in the
same directory, then `mv`), its content passed on stdin so secrets never show in `ps`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from nornir.core.task import Result, Task

from core.artifacts import checksum
from core.secrets import Redactor
from tasks.remote import Expectation, Mode, known, mode, primitive, redactor, run, shell

if TYPE_CHECKING:
    from jinja2 import Environment

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@functools.cache
def jinja() -> Environment:
    """The templates' environment, made on first use: importing Jinja cost every run 15 ms before
    its first remote command, which renders nothing."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


MAX_DIFF_BYTES = 256 * 1024


ContentT = TypeVar("ContentT")


@dataclass(frozen=True)
class Placed(Generic[ContentT]):
    """A file as it is wanted: where, its content (or what makes it), owner, mode, secret or not, its validation."""

    path: str
    content: ContentT
    owner: str = "root"
    group: str = "root"
    mode: int = 0o644
    secret: bool = False  # never shows its content in a diff
    check: str | None = None  # a command that must accept the staged file, `{path}` its path


@dataclass(frozen=True)
class FileSpec(Placed[str]):
    """The desired state of one file, its content rendered for the host."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True)
class FileFact:
    """What a file on the host looks like now."""

    exists: bool
    owner: str = ""
    group: str = ""
    mode: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class ArtifactSpec:
    """A file copied as it is from the controller (a binary, an archive) over SFTP.

    Never for secrets: SFTP creates the temporary upload with the server's default mode.
    """

    path: str
    source: Path
    owner: str = "root"
    group: str = "root"
    mode: int = 0o755

    @property
    def sha256(self) -> str:
        return checksum(self.source)


Spec = TypeVar("Spec", FileSpec, ArtifactSpec)


def file_changes(fact: FileFact, spec: FileSpec | ArtifactSpec) -> list[str]:
    """How `fact` differs from `spec`, in words; empty when nothing is to be done."""
    if not fact.exists:
        return ["created"]
    changes = []
    if fact.sha256 != spec.sha256:
        changes.append("content")
    if (fact.owner, fact.group) != (spec.owner, spec.group):
        changes.append(f"owner {fact.owner}:{fact.group} → {spec.owner}:{spec.group}")
    if fact.mode != spec.mode:
        changes.append(f"mode {fact.mode:04o} → {spec.mode:04o}")
    return changes


DIGESTS = "@@sha256"


def facts_script(paths: list[str]) -> str:
    """One command reading every path's type, owner, group, mode (`stat`) and checksum (`sha256sum`).

    Two processes whatever the number of files: a loop with a `stat`, a `sha256sum` and a
    `cut` per file cost a twenty-file component some 100 ms of a host's CPU for its facts.
    Symlinks are followed, as the content is. `%F` ("regular file") is translated in other locales.
    """
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"LC_ALL=C stat -L --printf '%F\\t%U\\t%G\\t%a\\t%n\\n' -- {quoted} 2>/dev/null; "
        f"echo {DIGESTS}; sha256sum -- {quoted} 2>/dev/null; true"
    )


def parse_facts(paths: list[str], stdout: str) -> dict[str, FileFact]:
    """Each of `paths` as `facts_script` found it; anything but a regular file counts as missing."""
    states, _, sums = stdout.partition(f"{DIGESTS}\n")
    digests = {}
    for line in sums.splitlines():
        escaped = line.startswith("\\")  # sha256sum's form for names with a backslash or a newline
        digest, _, name = line.removeprefix("\\").partition("  ")
        digests[_unescape(name) if escaped else name] = digest
    found = {}
    for line in states.splitlines():
        parts = line.split("\t", 4)  # the name last: it may hold tabs
        if len(parts) == 5 and parts[0] in ("regular file", "regular empty file"):
            _, owner, group, mode_text, path = parts
            found[path] = FileFact(True, owner, group, int(mode_text, 8), digests.get(path, ""))
    return {path: found.get(path, FileFact(exists=False)) for path in paths}


def _unescape(name: str) -> str:
    return name.replace("\\\\", "\0").replace("\\n", "\n").replace("\\r", "\r").replace("\0", "\\")


def file_facts(task: Task, paths: list[str]) -> dict[str, FileFact]:
    """The state of `paths`: read ahead for this step (`tasks.facts`), or read now in one command."""
    facts = known(task, "file", paths)
    if facts is not None:
        return facts
    out = run(
        task,
        facts_script(paths),
        what=Expectation("one state line per file", "check that the host has stat and sha256sum (coreutils)"),
        reads_only=True,
    )
    return parse_facts(paths, out.stdout)


def write_script(spec: FileSpec) -> str:
    """Atomic replace: stdin → temporary file beside the target → owner/mode → check → rename."""
    path = shlex.quote(spec.path)
    tmp = shlex.quote(f"{spec.path}.mha-new")
    parent = shlex.quote(str(Path(spec.path).parent))
    check = ""
    if spec.check:
        check = (
            f"if ! {spec.check.format(path=tmp)} >&2; then rm -f {tmp}; echo 'rejected: {spec.path}' >&2; exit 3; fi; "
        )
    return (
        f"set -e; mkdir -p {parent}; umask 077; cat > {tmp}; "
        f"chown {shlex.quote(spec.owner)}:{shlex.quote(spec.group)} {tmp}; chmod {spec.mode:04o} {tmp}; "
        f"{check}mv -f {tmp} {path}"
    )


def copy_actions(specs: list[ArtifactSpec], facts: Mapping[str, FileFact] | None) -> list[Copy]:
    """The files of `specs` that differ from `facts` (every one when the host was not read)."""
    return [Copy(spec, changes) for spec, changes in differing(specs, facts)]


def copy_files(task: Task, copies: list[Copy]) -> Result:
    """Carry out `copies` in the run's mode: named (plan), described (check), uploaded over SFTP (apply)."""
    if mode(task) is Mode.PLAN:
        diff = "\n".join(
            f"{c.spec.path}: would be copied from {c.spec.source}"
            + ("" if c.spec.source.exists() else " (not in the artifact cache yet)")
            for c in copies
        )
        return Result(host=task.host, result=[c.spec.path for c in copies], changed=True, diff=diff)
    diffs = []
    for copy in copies:
        spec = copy.spec
        diffs.append(f"{spec.path}: {', '.join(copy.changes)} (from {spec.source})")
        if mode(task) is Mode.APPLY:
            shell(task).upload(spec.source, spec.path, owner=spec.owner, group=spec.group, mode=spec.mode)
    changed = [c.spec.path for c in copies]
    return Result(host=task.host, result=changed, changed=bool(changed), diff="\n".join(diffs))


@primitive
def put_artifacts(task: Task, specs: list[ArtifactSpec]) -> Result:
    """Converge files copied from the controller; one fact command when nothing differs."""
    facts = None if mode(task) is Mode.PLAN else file_facts(task, [s.path for s in specs])
    return copy_files(task, copy_actions(specs, facts))


def render(task: Task, template: str, **context: object) -> str:
    """Render `templates/<template>` for the task's host with nornir-jinja2 (StrictUndefined).

    `name` and `severity_level` belong to Nornir's task.run and cannot be template variables.
    """
    clash = {"name", "severity_level"} & context.keys()
    if clash:
        raise ValueError(f"template variables {sorted(clash)} clash with Nornir's task.run arguments")
    from nornir_jinja2.plugins.tasks import template_file

    return task.run(task=template_file, template=template, jinja_env=jinja(), severity_level=10, **context)[0].result


@dataclass(frozen=True)
class Write:
    """A file to (re)write and how it differs; `changes` is empty when the host was not read (plan mode)."""

    spec: FileSpec
    changes: tuple[str, ...] = ()

    @property
    def verb(self) -> str:
        return "write"

    def __str__(self) -> str:
        spec = self.spec
        how = ", ".join(self.changes) or "not read"
        return f"{self.verb} {spec.path} {spec.owner}:{spec.group} {spec.mode:04o} ({how})"


@dataclass(frozen=True)
class Copy(Write):
    """A file to copy from the controller (a binary, an archive, a wheel) and how it differs."""

    spec: ArtifactSpec  # type: ignore[assignment]  # a file taken as it is, not rendered

    @property
    def verb(self) -> str:
        return f"copy {self.spec.source.name} to"


def differing(specs: Sequence[Spec], facts: Mapping[str, FileFact] | None) -> list[tuple[Spec, tuple[str, ...]]]:
    """Each spec that differs from `facts`, with how (every one, without words, when the host was not read)."""
    if facts is None:
        return [(spec, ()) for spec in specs]
    found = []
    for spec in specs:
        changes = file_changes(facts.get(spec.path, FileFact(exists=False)), spec)
        if changes:
            found.append((spec, tuple(changes)))
    return found


def write_actions(specs: list[FileSpec], facts: Mapping[str, FileFact] | None) -> list[Write]:
    """The files of `specs` that differ from `facts` (every one when the host was not read)."""
    return [Write(spec, changes) for spec, changes in differing(specs, facts)]


def write_files(task: Task, writes: list[Write], facts: Mapping[str, FileFact] | None) -> Result:
    """Carry out `writes` in the run's mode: into the plan folder (plan), described (check), written (apply)."""
    redact = redactor(task)
    if mode(task) is Mode.PLAN:
        return _plan(task, [w.spec for w in writes], redact)
    diffs = []
    for action in writes:
        fact = (facts or {}).get(action.spec.path, FileFact(exists=False))
        diffs.append(_diff(task, action.spec, fact, list(action.changes), redact))
        if mode(task) is Mode.APPLY:
            write(task, action.spec)
    changed = [w.spec.path for w in writes]
    return Result(host=task.host, result=changed, changed=bool(changed), diff="\n".join(diffs))


@primitive
def put_files(task: Task, specs: list[FileSpec]) -> Result:
    """Converge `specs` on the host; `result` lists the paths that changed."""
    facts = None if mode(task) is Mode.PLAN else file_facts(task, [s.path for s in specs])
    return write_files(task, write_actions(specs, facts), facts)


def write(task: Task, spec: FileSpec) -> None:
    hint = f"check that {spec.owner}:{spec.group} exist on the host and that {Path(spec.path).parent} is writable"
    if spec.check:
        hint = (
            f"'rejected' means the new file failed `{spec.check.format(path=spec.path)}` (its errors are above) "
            f"and the old file is untouched: fix the setting or template it comes from; otherwise {hint}"
        )
    run(task, write_script(spec), stdin=spec.content, what=Expectation(f"{spec.path} written", hint))


def _diff(task: Task, spec: FileSpec, fact: FileFact, changes: list[str], redact: Redactor) -> str:
    header = f"{spec.path}: {', '.join(changes)}"
    if "content" not in changes and "created" not in changes:
        return header
    if spec.secret:
        return f"{header} (secret content, not shown)"
    old = ""
    if fact.exists and len(spec.content) < MAX_DIFF_BYTES:
        old = run(
            task,
            f"head -c {MAX_DIFF_BYTES} {shlex.quote(spec.path)}",
            what=Expectation("the file's content"),
            reads_only=True,
        ).stdout
    return header + "\n" + unified(old, spec.content, spec.path, redact)


def unified(
    old: str, new: str, path: str, redact: Redactor, labels: tuple[str, str] = ("on the host", "wanted")
) -> str:
    """A unified diff from `old` to `new`, each side named by its `labels`."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"{path} ({labels[0]})",
        tofile=f"{path} ({labels[1]})",
    )
    return redact("".join(lines))


def _plan(task: Task, specs: list[FileSpec], redact: Redactor) -> Result:
    """Plan mode writes what would be installed under the plan folder; no host is contacted."""
    root = Path(task.nornir.config.user_defined["plan_dir"]) / task.host.name
    diffs = []
    for spec in specs:
        target = root / spec.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        previous = target.read_text() if target.exists() else None
        content = redact(spec.content)
        target.write_text(content)
        target.chmod(0o600)
        summary = f"{spec.path}: would be written ({spec.owner}:{spec.group} {spec.mode:04o})"
        if previous is not None and previous != content:
            summary += " — differs from the previous plan:\n" + unified(
                previous, content, spec.path, redact, ("previous plan", "this plan")
            )
        diffs.append(summary)
    return Result(host=task.host, result=[s.path for s in specs], changed=True, diff="\n".join(diffs))
