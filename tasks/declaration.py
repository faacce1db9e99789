"""The words a component is declared in (tasks/component.py): its files, units, commands and waits.

Each is plain data (a file's content is a function of the `Context`); the engine decides
and carries them out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from nornir.core.task import Result, Task

from core import artifacts
from core.settings import HostInfo, Settings
from tasks.blocks import EditBlock
from tasks.facts import HostFacts
from tasks.files import ArtifactSpec, Copy, FileSpec, Placed, Write, jinja
from tasks.packages import Install
from tasks.systemd import (
    AddUser,
    Systemctl,
    UnitsWanted,
)


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
    return lambda context: jinja().get_template(name).render(**variables(context))


@dataclass(frozen=True)
class File(Placed[Content]):
    """A file the component owns entirely; its path may name the site ("{site}") or the homeserver ("{fqdn}")."""

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
class Venv:
    """A pinned Python program in a venv of its own, installed offline from its wheel set (tasks/venvs.py).

    The engine copies the wheels, reads which version the venv holds and installs when that
    is not the pinned one or a wheel changed. The package step installs it on a host that has
    no venv of the program yet (`home` missing), so a first deploy pays for it early, beside
    the Debian packages; a new version stays with the component's step, whose restarts and
    notes follow from it.
    """

    wheels: Wheels
    distribution: str  # its dist-info name, whose version the engine reads (e.g. matrix_synapse)
    project: str  # what pip installs, pinned to `version` (e.g. matrix-synapse[redis])
    version: Callable[[Settings], str]  # the pinned version
    path: str  # the venv; "{version}" in it gives each version a venv of its own
    prepare: str = ""  # shell run before the install, as root (folders the program needs)
    timeout: int = 300

    def requirement(self, settings: Settings) -> str:
        return f"{self.project}=={self.version(settings)}"

    def of(self, version: str) -> str:
        """The venv of one version."""
        return self.path.format(version=version)

    def at(self, settings: Settings) -> str:
        """The venv of the pinned version."""
        return self.of(self.version(settings))

    @property
    def home(self) -> str:
        """What exists once any version was installed: the venv, or the folder of the versions' venvs."""
        return self.path.partition("/{version}")[0]

    @property
    def read(self) -> str:
        """The name of its version read in the read-ahead."""
        return f"{self.distribution} version"


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
    # A restart goes through the component's hosts one at a time (tasks.systemd.Turns): the
    # members of a cluster or a pool, which must not all be down at once.
    rolling: bool = False


class Stage(IntEnum):
    """When a behaviour's command runs among the component's actions."""

    BEFORE_FILES = 0  # e.g. the account the files belong to
    BEFORE_UNITS = 1  # e.g. rules a unit's start would load unguarded
    AFTER_UNITS = 2


@dataclass(frozen=True)
class Handler:
    """A command run once on apply after any of the files `after` changed (e.g. rebuilding a trust store);
    `stage`: before the units change (what a start would need), or after (telling a running one to re-read)."""

    command: str
    after: tuple[str, ...]
    expect: str
    stage: Stage = Stage.BEFORE_UNITS


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
