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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nornir.core.task import Result, Task

from core.settings import HostInfo, Settings
from core.step import Step
from tasks.facts import HostFacts, read_facts
from tasks.files import JINJA, FileSpec, Write, write_actions, write_files
from tasks.packages import Install, install, install_actions
from tasks.systemd import UNIT_DIR, ServiceFact, Systemctl, UnitsWanted, Wanted, converge_units, unit_actions
from tasks.waits import wait_for_port

Action = Install | Write | Systemctl | UnitsWanted


@dataclass(frozen=True)
class Context:
    """What a file's content may depend on: the settings, the host, and the outputs of the component's reads."""

    settings: Settings
    host: HostInfo
    reads: Mapping[str, str] | None  # None when the host was not read (plan mode)


Content = Callable[[Context], str]


def template(name: str, variables: Callable[[Context], Mapping[str, object]]) -> Content:
    """Content rendered from `templates/<name>` with the variables computed for the host."""
    return lambda context: JINJA.get_template(name).render(**variables(context))


@dataclass(frozen=True)
class File:
    """A file the component owns entirely: its content, owner, mode, whether it is secret, its validation."""

    path: str
    content: Content
    owner: str = "root"
    group: str = "root"
    mode: int = 0o644
    secret: bool = False
    check: str | None = None  # a command that must accept the staged file, `{path}` its path

    def spec(self, context: Context) -> FileSpec:
        return FileSpec(self.path, self.content(context), self.owner, self.group, self.mode, self.secret, self.check)


@dataclass(frozen=True)
class Service:
    """A unit the component keeps running and enabled; a change to its files restarts it, or reloads it."""

    unit: str
    reload: bool = False


@dataclass(frozen=True)
class Port:
    """A TCP port that must accept connections once the component converged (on loopback, or the private address)."""

    number: int
    private: bool = False
    timeout: float = 30


HealthCheck = Callable[[Task, Settings], Result]


@dataclass(frozen=True)
class Component:
    """One deployable unit of the platform, declared once."""

    name: str
    groups: tuple[str, ...] | None  # None: every host
    summary: str  # what the deploy step shows
    packages: tuple[str, ...] = ()
    # Whether installing the packages may start their units (Debian's default); without it a
    # policy-rc.d keeps a stock instance (a 15/main cluster, a single-member etcd) from starting.
    autostart: bool = False
    files: tuple[File, ...] = ()
    services: tuple[Service, ...] = ()
    reads: Mapping[str, str] = field(default_factory=dict)  # read-only commands whose output files depend on
    ready: tuple[Port, ...] = ()
    check: HealthCheck | None = None  # the step's health check, once every host converged

    def step(self) -> Step:
        """The deploy step of this component."""
        return Step(self.name, self.summary, self.converge, groups=self.groups, check=self.check)

    def context(self, settings: Settings, host_name: str, facts: HostFacts | None) -> Context:
        return Context(settings, settings.hosts[host_name], None if facts is None else facts.commands)

    def decide(self, context: Context, facts: HostFacts | None) -> list[Action]:
        """The actions that take a host with `facts` (None: not read) to this component's wanted state."""
        installs = install_actions(list(self.packages), facts and facts.packages, autostart=self.autostart)
        writes = write_actions([file.spec(context) for file in self.files], facts and facts.files)
        actions: list[Action] = [*installs, *writes]
        if not self.services:
            return actions
        units = None if facts is None else dict(facts.units)
        restart = bool(writes)
        if units is not None and self.autostart and installs:
            # Installing may have started the units with the package's defaults: the state read
            # is stale, so restart them (which also starts one that is stopped) to read our files.
            units = {service.unit: ServiceFact("loaded", "active", "") for service in self.services}
            restart = True
        wanted = {service.unit: Wanted(restart=restart, reload=service.reload) for service in self.services}
        daemon_reload = any(w.spec.path.startswith(f"{UNIT_DIR}/") for w in writes)
        return actions + unit_actions((wanted,), units, daemon_reload=daemon_reload)

    def converge(self, task: Task, settings: Settings) -> Result:
        """The engine: read the host once, decide, carry the actions out in the run's mode, wait for the ports."""
        facts = read_facts(
            task,
            packages=self.packages,
            files=[file.path for file in self.files],
            units=[service.unit for service in self.services],
            commands=self.reads,
        )
        context = self.context(settings, task.host.name, facts)
        results = execute(task, self.decide(context, facts), facts)
        task.results.extend(results)
        for port in self.ready:
            address = context.host.private_ip if port.private else "127.0.0.1"
            task.run(task=wait_for_port, port=port.number, address=address, timeout=port.timeout, severity_level=10)
        return Result(host=task.host, changed=any(r.changed for r in results))


def execute(task: Task, actions: list[Action], facts: HostFacts | None) -> list[Result]:
    """Carry out `actions` in order, in the run's mode; the files are written together, as one result."""
    results = []
    writes = [action for action in actions if isinstance(action, Write)]
    for action in actions:
        if isinstance(action, Install):
            results.append(install(task, action))
        elif isinstance(action, Write):
            if action is writes[0]:
                results.append(write_files(task, writes, facts and facts.files))
        else:
            results.append(converge_units(task, action))
    return results
