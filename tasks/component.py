"""A component declared once, and the engine that converges it on its hosts.

A component states what its hosts should have — packages, files, units, the ports that
must answer afterwards, the health check of its step — as data. The engine derives the
rest from that one declaration: the single read-ahead command (so the facts read and
the things converged cannot drift apart), the decisions (`decide`: facts in, actions
out, pure, tested with data fixtures in tests/components/), and their execution by the
primitives' executors in every mode: plan (into the plan folder, no host contacted),
check (described) and apply. No component branches on the mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import groupby
from typing import cast

from nornir.core.task import Result, Task

from core import artifacts
from core.catalog import GroupRule
from core.config import Config
from core.connection import CONNECTION
from core.errors import HostError, InputProblem
from core.ports import PortUse
from core.settings import HostInfo, Settings
from core.step import Step
from core.targets import Job
from tasks.blocks import EditBlock, block_actions, edit_block, parse, read_script
from tasks.facts import HostFacts, Reading, known_facts, read_facts
from tasks.files import JINJA, ArtifactSpec, Copy, FileSpec, Write, copy_actions, copy_files, write_actions, write_files
from tasks.packages import Install, install, install_actions
from tasks.remote import Expectation, Mode, host_key, mode, run
from tasks.systemd import (
    UNIT_DIR,
    AddUser,
    ServiceFact,
    Systemctl,
    UnitsWanted,
    Wanted,
    add_user,
    converge_units,
    parse_show_many,
    show_script,
    unit_actions,
    user_actions,
)
from tasks.waits import wait_for_http, wait_for_port


@dataclass(frozen=True)
class Context:
    """What a file's content may depend on: the settings, the host, and the outputs of the component's reads."""

    settings: Settings
    host: HostInfo
    reads: Mapping[str, str] | None  # None when the host was not read (plan mode)
    # The SSH host keys the controller verified, by host name, of the groups the component
    # names in `host_keys_of` (the backup host's known_hosts); None in plan mode.
    host_keys: Mapping[str, str] | None = None


Content = Callable[[Context], str]


def template(name: str, variables: Callable[[Context], Mapping[str, object]]) -> Content:
    """Content rendered from `templates/<name>` with the variables computed for the host."""
    return lambda context: JINJA.get_template(name).render(**variables(context))


@dataclass(frozen=True)
class File:
    """A file the component owns entirely: its content, owner, mode, whether it is secret, its validation."""

    path: str  # may name the site ("{site}") or the homeserver ("{fqdn}")
    content: Content
    owner: str = "root"
    group: str = "root"
    mode: int = 0o644
    secret: bool = False
    check: str | None = None  # a command that must accept the staged file, `{path}` its path
    when: Callable[[Settings, HostInfo], bool] | None = None  # only on the hosts this accepts
    first: bool = False  # written before the packages are installed: it steers their install

    def wanted_on(self, settings: Settings, host: HostInfo) -> bool:
        return self.when is None or self.when(settings, host)

    def where(self, settings: Settings) -> str:
        return self.path.format(site=settings.site, fqdn=settings.config.homeserver_fqdn)

    def spec(self, context: Context) -> FileSpec:
        path = self.where(context.settings)
        return FileSpec(path, self.content(context), self.owner, self.group, self.mode, self.secret, self.check)


@dataclass(frozen=True)
class Binary:
    """A vendor file from the artifact cache (the first file of manifest entry `artifact`): a binary put where the
    manifest says, or a file staged at `to` (which may name the file: "{name}")."""

    artifact: str
    mode: int = 0o755
    to: str = ""

    def spec(self) -> ArtifactSpec:
        item = artifacts.manifest()[self.artifact].files[0]
        return ArtifactSpec(self.path, artifacts.binary(item), mode=self.mode)

    @property
    def path(self) -> str:
        item = artifacts.manifest()[self.artifact].files[0]
        target = self.to.format(name=item.name) if self.to else item.target
        assert target, f"artifacts/manifest.yaml: {self.artifact} names no target"
        return target


@dataclass(frozen=True)
class Wheels:
    """Every file of manifest entry `artifact` (a pinned wheel set), copied into the folder `into`."""

    artifact: str
    into: str

    def specs(self) -> list[ArtifactSpec]:
        files = artifacts.deliverables(artifacts.manifest()[self.artifact])
        return [ArtifactSpec(f"{self.into}/{path.name}", path, mode=0o644) for path in files]


@dataclass(frozen=True)
class Block:
    """A marked block the component owns inside a file it does not (e.g. its lines in /etc/hosts)."""

    path: str
    name: str
    body: Content
    new_mode: int = 0o644  # of the file, when the block creates it

    @property
    def read(self) -> str:
        """The name of its read in the read-ahead."""
        return f"block {self.path}"


@dataclass(frozen=True)
class Service:
    """A unit of the component and the state it is kept in.

    A change to the files of `restart_on` (None: any of the component's files) restarts it,
    or reloads it where `reload` suffices; a change to the files of `reload_on` alone
    reloads it. Units of a lower `wave` change first (a server before its exporter); the
    units of one wave are peers systemd handles together.
    """

    unit: str
    reload: bool = False
    restart_on: tuple[str, ...] | None = None
    reload_on: tuple[str, ...] = ()  # files whose change a reload applies (the rest of restart_on restart it)
    running: bool = True  # False: kept stopped and disabled (a package's stock instance)
    wave: int = 0


@dataclass(frozen=True)
class Handler:
    """A command run once on apply after any of the files `after` changed (e.g. rebuilding a trust store)."""

    command: str
    after: tuple[str, ...]
    expect: str


class Stage(IntEnum):
    """When a behaviour's command runs among the component's actions."""

    BEFORE_FILES = 0  # e.g. the account the files belong to
    BEFORE_UNITS = 1  # e.g. rules a unit's start would load unguarded
    AFTER_UNITS = 2


@dataclass(frozen=True)
class Command:
    """A command of a component's own behaviour, decided from facts (e.g. creating a stanza that is missing).

    Run on apply; check mode reports it as pending. With a `marker`, the command decides
    on the host (the facts it depends on were stale) and did the change only when it
    printed the marker.
    """

    script: str
    change: str  # what it does, as the run reports it; "" for a step that changes nothing (a wait)
    expect: str
    on_failure: str = "read the error output above; fix the cause on the host and re-run"
    timeout: int | None = None
    marker: str = ""
    stage: Stage = Stage.AFTER_UNITS
    # A command that must then succeed over a fresh SSH login (proof the change let the
    # controller in), and what the failure means ({error}: the connection's error).
    confirm: str = ""
    unconfirmed: str = ""
    name: str = ""  # how fixtures and listings name a long script
    pending: str = ""  # what check mode says, where that is not `change` (a change decided on the host)
    stdin: str | None = field(default=None, repr=False)  # what the script reads: secrets never go in the script

    def __str__(self) -> str:
        return (self.name or self.script) + (f"; then, over a new SSH login: {self.confirm}" if self.confirm else "")


@dataclass(frozen=True)
class Procedure:
    """Work that must watch the platform while it goes (a rolling restart waits for each member before the next):
    decided from facts like any action, carried out by the executor on apply; plan and check mode report
    `pending`. `run` returns the changes it made."""

    name: str  # how fixtures and listings name it
    pending: str
    run: Callable[[Task], list[str]] = field(compare=False, repr=False)
    stage: Stage = Stage.AFTER_UNITS

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Port:
    """A TCP port that must accept connections once the component converged.

    On loopback or the host's private address; `always` waits on every run, otherwise only
    after a unit was started or restarted.
    """

    number: int | Callable[[Settings], int]
    private: bool = False
    always: bool = True
    timeout: float = 30

    def port(self, settings: Settings) -> int:
        return self.number if isinstance(self.number, int) else self.number(settings)


HealthCheck = Callable[[Task, Settings], Result]


@dataclass(frozen=True)
class Verify:
    """A read-only check of the host after the component converged (e.g. every name resolves)."""

    check: HealthCheck


@dataclass(frozen=True)
class Url:
    """A URL that must answer 200, fetched from the host, once the component converged."""

    url: Callable[[Context], str]
    timeout: float = 30


Ready = Port | Url | Verify
Action = Install | AddUser | Copy | Write | EditBlock | Systemctl | UnitsWanted | Command | Procedure
# A component's behaviour of its own: from the context, the facts (None: not read) and the
# files about to change (as declared), the further commands (or procedures) it needs, each at its stage.
Behaviour = Callable[[Context, HostFacts | None, frozenset[str]], Sequence[Command | Procedure]]


@dataclass(frozen=True)
class Component:
    """One deployable unit of the platform, declared once."""

    name: str
    groups: tuple[str, ...] | None  # None: every host
    summary: str  # what the deploy step shows
    packages: tuple[str | Callable[[Settings], str], ...] = ()  # a name, or one made from the settings
    users: tuple[str, ...] = ()  # system accounts its services run as
    binaries: tuple[Binary, ...] = ()  # also what its step needs from the artifact cache
    needs: tuple[str, ...] = ()  # further artifacts without which its step is skipped (another component's)
    wheels: tuple[Wheels, ...] = ()  # pinned wheel sets (the step requires them before any host is touched)
    # Whether installing the packages may start their units (Debian's default); without it a
    # policy-rc.d keeps a stock instance (a 15/main cluster, a single-member etcd) from starting.
    autostart: bool = False
    files: tuple[File, ...] | Callable[[Settings], tuple[File, ...]] = ()  # or made from the settings
    blocks: tuple[Block, ...] = ()
    services: tuple[Service, ...] | Callable[[Settings], tuple[Service, ...]] = ()  # or made from the settings
    handlers: tuple[Handler, ...] = ()
    # Read-only commands (or commands made from the settings) whose output the files or the behaviour need.
    reads: Mapping[str, str | Callable[[Settings, HostInfo], str]] = field(default_factory=dict)
    ready: tuple[Ready, ...] = ()
    check: HealthCheck | None = None  # the step's health check, once every host converged
    # What the controller must have for the step (an imported certificate set), checked before any host.
    requires: Callable[[Settings], list[InputProblem]] | None = None
    # Why a host of the groups has nothing of this component ("" when it has), e.g. a
    # feature switched off or a single instance on the group's first host.
    absent: Callable[[Settings, HostInfo], str] | None = None
    behaviour: Behaviour | None = None
    host_keys_of: tuple[str, ...] = ()  # groups whose SSH host keys (as the controller verified them) files need
    # What the step says of a host after the actions (its message, and a notice such as a
    # restart left pending), from the context and the actions taken.
    notes: Callable[[Context, Sequence[Action]], tuple[str, str]] | None = None
    # Units to restart whatever changed of their files, from the facts (a process on an old venv).
    restarts: Callable[[Context, HostFacts | None, frozenset[str]], frozenset[str]] | None = None
    applies: Callable[[Settings], bool] | None = None  # whether the settings use it at all (its docstring: why not)
    # Components converged first, in the same step and from the same read-ahead (PgBouncer's
    # local HAProxy route to the primary).
    parts: tuple[Component, ...] = ()
    # The inventory groups this component owns: their size rules and reboot rank (tasks/registry.py).
    inventory: tuple[GroupRule, ...] = ()
    # What it listens on, on every host of its groups (or made from the settings that move the ports).
    ports: tuple[PortUse, ...] | Callable[[Config], list[PortUse]] = ()
    # What Prometheus scrapes of it (core/targets.py), from the inventory and what the deploy runs.
    scrape: Callable[[Settings], list[Job]] | None = None
    # The secrets it owns, with how to make a fresh one (core/secrets.py); others may read them.
    secrets: Mapping[str, Callable[[], str]] = field(default_factory=dict)

    def step(self) -> Step:
        """The deploy step of this component."""
        return Step(
            self.name,
            self.summary,
            self.converge,
            groups=self.groups,
            check=self.check,
            requires=self.requires,
            needs=(*(binary.artifact for binary in self.binaries), *self.needs),
            artifacts=tuple(wheels.artifact for wheels in self.wheels),
            applies=self.applies,
        )

    def ports_of(self, config: Config) -> list[PortUse]:
        return list(self.ports) if isinstance(self.ports, tuple) else self.ports(config)

    def package_names(self, settings: Settings) -> list[str]:
        return [name if isinstance(name, str) else name(settings) for name in self.packages]

    def files_on(self, settings: Settings, host: HostInfo) -> list[File]:
        declared = self.files if isinstance(self.files, tuple) else self.files(settings)
        return [file for file in declared if file.wanted_on(settings, host)]

    def services_of(self, settings: Settings) -> tuple[Service, ...]:
        return self.services if isinstance(self.services, tuple) else self.services(settings)

    def parts_on(self, settings: Settings, host: HostInfo) -> list[Component]:
        """The parts that have something on `host`, then the component itself."""
        present = [part for part in self.parts if not part.absent or not part.absent(settings, host)]
        return [*present, self]

    def paths(self, settings: Settings, host: HostInfo) -> list[str]:
        """Where the component's files go on `host` (what the read-ahead reads)."""
        return [file.where(settings) for file in self.files_on(settings, host)]

    def units(self, settings: Settings) -> list[str]:
        return [service.unit for service in self.services_of(settings)]

    def context(
        self, settings: Settings, host_name: str, facts: HostFacts | None, host_keys: Mapping[str, str] | None = None
    ) -> Context:
        return Context(settings, settings.hosts[host_name], None if facts is None else facts.commands, host_keys)

    def decide(self, context: Context, facts: HostFacts | None) -> list[Action]:
        """The actions that take a host with `facts` (None: not read) to this component's wanted state."""
        before, units, after = self.decide_around_units(context, facts)
        return [*before, *units, *after]

    def decide_around_units(
        self, context: Context, facts: HostFacts | None
    ) -> tuple[list[Action], list[Systemctl | UnitsWanted], list[Action]]:
        """`decide`'s actions in three: those before the units, the units', those after."""
        names = self.package_names(context.settings)
        installs = install_actions(names, facts and facts.packages, autostart=self.autostart)
        accounts = user_actions(self.users, facts and facts.users)
        copied = [binary.spec() for binary in self.binaries] + [spec for w in self.wheels for spec in w.specs()]
        copies = copy_actions(copied, facts and facts.files)
        files = self.files_on(context.settings, context.host)
        writes = write_actions([file.spec(context) for file in files], facts and facts.files)
        early = {file.where(context.settings) for file in files if file.first}
        written = self.written(context, [*copies, *writes])
        edits = [
            edit
            for block in self.blocks
            for edit in block_actions(
                block.path, block.name, block.body(context), facts and parse(facts.commands[block.read]), block.new_mode
            )
        ]
        handled: list[Command | Procedure] = [
            Command(h.command, "", h.expect, stage=Stage.BEFORE_UNITS) for h in self.handlers if written & set(h.after)
        ]
        own = handled + list(self.behaviour(context, facts, frozenset(written)) if self.behaviour else [])
        staged = {stage: [c for c in own if c.stage is stage] for stage in Stage}
        before: list[Action] = [
            *(w for w in writes if w.spec.path in early),
            *installs,
            *accounts,
            *copies,
            *staged[Stage.BEFORE_FILES],
            *(w for w in writes if w.spec.path not in early),
            *edits,
            *staged[Stage.BEFORE_UNITS],
        ]
        restarts = self.restarts(context, facts, frozenset(written)) if self.restarts else frozenset()
        units = self.unit_actions(context, facts and facts.units, [*copies, *writes], written, restarts)
        return before, units, list(staged[Stage.AFTER_UNITS])

    def written(self, context: Context, actions: Sequence[Action]) -> set[str]:
        """The files `actions` change, as declared (a path may name the site), binaries by their target."""
        changed = {a.spec.path for a in actions if isinstance(a, Write)}
        ours = {
            file.path
            for file in self.files_on(context.settings, context.host)
            if file.where(context.settings) in changed
        }
        return ours | {a.spec.path for a in actions if isinstance(a, Copy)}

    def unit_actions(
        self,
        context: Context,
        units: Mapping[str, ServiceFact] | None,
        changes: Sequence[Write],
        written: set[str],
        restarts: frozenset[str] = frozenset(),
    ) -> list[Systemctl | UnitsWanted]:
        """The units' actions, from their state (None: not read): restarts from the files each unit depends on and
        for the units `restarts` names, a daemon-reload after a unit file."""
        services = self.services_of(context.settings)
        if not services:
            return []
        waves: dict[int, dict[str, Wanted]] = {}
        for service in sorted(services, key=lambda s: s.wave):
            depends = written & set(service.restart_on) if service.restart_on is not None else written
            restart = bool(depends) or service.unit in restarts
            reload = service.reload or (not (depends - set(service.reload_on)) and service.unit not in restarts)
            wanted = Wanted(service.running, service.running, restart and service.running, reload)
            waves.setdefault(service.wave, {})[service.unit] = wanted
        daemon_reload = any(change.spec.path.startswith(f"{UNIT_DIR}/") for change in changes)
        return unit_actions(tuple(waves.values()), None if units is None else dict(units), daemon_reload=daemon_reload)

    def converge(self, task: Task, settings: Settings) -> Result:
        """The engine: read the host once, decide, carry the actions out in the run's mode, wait for the ports."""
        host = settings.hosts[task.host.name]
        reason = self.absent(settings, host) if self.absent else ""
        if reason:
            return Result(host=task.host, result=reason)
        facts = host_facts(task, self, settings, host)
        said = [part.apply(task, settings, host, facts) for part in self.parts_on(settings, host)]
        message, notice = said[-1][1]
        return Result(
            host=task.host, result=message, diff=notice, changed=any(r.changed for results, _ in said for r in results)
        )

    def apply(
        self, task: Task, settings: Settings, host: HostInfo, facts: HostFacts | None
    ) -> tuple[list[Result], tuple[str, str]]:
        """Decide from `facts`, carry the actions out, then wait for what must answer; the results join the task's.
        Returns them, with what the step says of the host (`notes`)."""
        keys = None
        if facts is not None:
            keys = {h.name: host_key(task, h.name) for g in self.host_keys_of for h in settings.members(g)}
        context = self.context(settings, host.name, facts, keys)
        before, units, after = self.decide_around_units(context, facts)
        results = execute(task, before, facts)
        names = self.units(settings)
        if names and mode(task) is Mode.APPLY and any(isinstance(a, Install) for a in before):
            # The install may have enabled (Debian does, policy-rc.d or not) or, with `autostart`,
            # started the packages' units: decide them again from their state now.
            what = Expectation(f"the state of {', '.join(names)}", "check that the host runs systemd")
            state = parse_show_many(run(task, show_script(names), what=what, reads_only=True).stdout)
            changes = [a for a in before if isinstance(a, Write)]
            written = self.written(context, changes)
            restarts = self.restarts(context, facts, frozenset(written)) if self.restarts else frozenset()
            units = self.unit_actions(context, state, changes, written, restarts)
        results += execute(task, [*units, *after], facts)
        actions = [*before, *units, *after]
        task.results.extend(results)
        started = any(isinstance(action, Systemctl) and action.verbs for action in actions)
        for item in self.ready if mode(task) is Mode.APPLY else ():  # plan and check mode start nothing
            if isinstance(item, Verify):
                task.run(task=item.check, settings=settings, severity_level=10)
            elif isinstance(item, Url):
                task.run(task=wait_for_http, url=item.url(context), timeout=item.timeout, severity_level=10)
            elif item.always or started:
                address = host.private_ip if item.private else "127.0.0.1"
                port = item.port(settings)
                task.run(task=wait_for_port, port=port, address=address, timeout=item.timeout, severity_level=10)
        return results, self.notes(context, actions) if self.notes else ("", "")

    def reading(self, settings: Settings, host: HostInfo) -> Reading:
        """What the read-ahead reads for this component and its parts."""
        packages: list[str] = []
        files: list[str] = []
        units: list[str] = []
        users: list[str] = []
        commands: dict[str, str] = {}
        for component in self.parts_on(settings, host):
            packages += component.package_names(settings)
            users += component.users
            files += [binary.path for binary in component.binaries]
            files += [spec.path for wheels in component.wheels for spec in wheels.specs()]
            files += component.paths(settings, host)
            units += component.units(settings)
            commands |= {
                name: read if isinstance(read, str) else read(settings, host) for name, read in component.reads.items()
            }
            commands |= {block.read: read_script(block.path) for block in component.blocks}
        unique = dict.fromkeys
        return Reading(*(list(unique(names)) for names in (packages, files, units, users)), commands=commands)


def host_facts(task: Task, component: Component, settings: Settings, host: HostInfo) -> HostFacts | None:
    """The host's facts for `component`: those a step's read-ahead already holds, else one read now."""
    reading = component.reading(settings, host)
    found = None if reading.commands else known_facts(task, reading)
    return found if found is not None else read_facts(task, reading)


def execute(task: Task, actions: list[Action], facts: HostFacts | None) -> list[Result]:
    """Carry out `actions` in order, in the run's mode; consecutive copies, or writes, go together as one result."""
    results = []
    for kind, run_of in groupby(actions, key=type):
        batch = list(run_of)
        if kind is Copy:
            results.append(copy_files(task, cast(list[Copy], batch)))
        elif kind is Write:
            results.append(write_files(task, cast(list[Write], batch), facts and facts.files))
        else:
            results += [one(task, action) for action in batch]
    return results


def one(task: Task, action: Action) -> Result:
    """Carry out one action that is not a copy or a write."""
    if isinstance(action, Install):
        return install(task, action)
    if isinstance(action, AddUser):
        return add_user(task, action)
    if isinstance(action, EditBlock):
        return edit_block(task, action)
    if isinstance(action, Command):
        return command(task, action)
    if isinstance(action, Procedure):
        if mode(task) is not Mode.APPLY:
            return Result(host=task.host, changed=bool(action.pending), diff=action.pending)
        done = action.run(task)
        return Result(host=task.host, changed=bool(done), diff="\n".join(done))
    assert isinstance(action, Systemctl | UnitsWanted), action
    return converge_units(task, action)


def command(task: Task, action: Command) -> Result:
    """Carry out a behaviour's command in the run's mode: pending (plan, check) or run (apply)."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, changed=bool(action.change), diff=action.pending or action.change)
    what = Expectation(action.expect, action.on_failure)
    out = run(task, action.script, stdin=action.stdin, timeout=action.timeout, what=what)
    done = bool(action.change) and (action.marker in out.stdout if action.marker else True)
    if action.confirm:
        task.host.close_connection(CONNECTION)  # the old session would survive as an established connection
        try:
            run(task, action.confirm, what=Expectation(action.confirm))
        except Exception as exc:
            raise HostError(f"{task.host.name}: {action.unconfirmed.format(error=exc)}") from None
    return Result(host=task.host, changed=done, diff=action.change if done else "")
