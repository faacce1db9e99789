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

from nornir.core.task import Result, Task

from core.catalog import GroupRule
from core.config import Config
from core.errors import InputProblem
from core.ports import PortUse
from core.settings import HostInfo, Settings
from core.step import Step
from core.targets import Job
from tasks.blocks import block_actions, parse, read_script
from tasks.declaration import (
    Action,
    Behaviour,
    Binary,
    Block,
    Command,
    Context,
    File,
    Handler,
    HealthCheck,
    Procedure,
    Ready,
    Service,
    Stage,
    Url,
    Venv,
    Verify,
    Wheels,
)
from tasks.executor import execute
from tasks.facts import HostFacts, Reading, known_facts, read_facts
from tasks.files import Copy, Write, copy_actions, write_actions
from tasks.packages import Install, install_actions
from tasks.remote import Expectation, Mode, host_key, mode, run
from tasks.systemd import (
    UNIT_DIR,
    ServiceFact,
    Systemctl,
    UnitsWanted,
    Wanted,
    parse_show_many,
    show_script,
    unit_actions,
    user_actions,
)
from tasks.venvs import venv_commands, version_read
from tasks.waits import wait_for_http, wait_for_port


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
    # Pinned Python programs in venvs of their own; their wheel sets the step requires before any host is touched.
    venvs: tuple[Venv, ...] = ()
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
    steady_check: HealthCheck | None = None  # a cheaper one for a run that changed nothing it stands on (core.step)
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
    unread: str = ""  # what it says of a host in plan mode, where the reads it decides from were not read
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
    # The steps whose work it uses (a database before its users, the VIP before what answers on it).
    # The registry adds the rest: the firewall before anything that listens, scraped components before monitoring.
    after: tuple[str, ...] = ()
    # What a host's later steps need of it is its work on that host alone (core.step's `per_host`):
    # they start there once it is done there, not once it is done on every server.
    per_host: bool = False

    def step(self) -> Step:
        """The deploy step of this component."""
        return Step(
            self.name,
            self.summary,
            self.converge,
            groups=self.groups,
            check=self.check,
            steady_check=self.steady_check,
            requires=self.requires,
            needs=(*(binary.artifact for binary in self.binaries), *self.needs),
            artifacts=tuple(wheels.artifact for wheels in self.wheels),
            applies=self.applies,
            after=self.after,
            reading=self.step_reading,
            per_host=self.per_host,
        )

    @property
    def wheels(self) -> tuple[Wheels, ...]:
        return tuple(venv.wheels for venv in self.venvs)

    def step_reading(self, settings: Settings, host_name: str) -> Reading | None:
        """What `converge` reads first on the host (None where the component is absent)."""
        host = settings.hosts[host_name]
        if self.absent and self.absent(settings, host):
            return None
        return self.reading(settings, host)

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
            Command(h.command, "", h.expect, stage=h.stage) for h in self.handlers if written & set(h.after)
        ]
        installs_venvs = [
            command
            for venv in self.venvs
            for command in venv_commands(
                venv, context.settings, facts and facts.commands[venv.read], frozenset(written)
            )
        ]
        own = [
            *installs_venvs,
            *handled,
            *(self.behaviour(context, facts, frozenset(written)) if self.behaviour else []),
        ]
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
            wanted = Wanted(service.running, service.running, restart and service.running, reload, service.rolling)
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
        if context.reads is None and self.unread:
            return results, (self.unread, "")
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
            commands |= {venv.read: version_read(venv, settings) for venv in component.venvs}
        unique = dict.fromkeys
        return Reading(*(list(unique(names)) for names in (packages, files, units, users)), commands=commands)


def host_facts(task: Task, component: Component, settings: Settings, host: HostInfo) -> HostFacts | None:
    """The host's facts for `component`: those a step's read-ahead already holds, else one read now."""
    reading = component.reading(settings, host)
    found = None if reading.commands else known_facts(task, reading)
    return found if found is not None else read_facts(task, reading)
