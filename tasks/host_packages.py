"""One package transaction per host: every Debian package its components need, in one apt run.

Each component still installs what it misses itself (a step run on its own with --step
needs that), but done component by component a first deploy paid an `apt-get update`
and a dpkg run per component per host, one step after another: node-exporter alone
took 42.8 s across 16 hosts. This step, early in the deploy, reads which of the host's
packages are missing in one command and installs them all in one apt run; the
components then find them present. Nothing is started by the install (policy-rc.d): the
components configure and start their units themselves, as with their own installs. The
files a component writes before its packages, because they steer the install (no stock
PostgreSQL cluster), are written first here too.

The pinned Python programs (Patroni, Synapse, the state compressor: `Venv`s) a host has
none of yet are installed here too, after the packages their venvs take from Debian: a
first deploy pays for Synapse's venv beside the database tier's installs, not after
PgBouncer's step. A venv the host has, of any version, stays with its component's step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nornir.core.task import Result, Task

from core.settings import HostInfo, Settings
from core.step import Step
from tasks.component import Component
from tasks.declaration import Action, Command, Venv
from tasks.executor import execute
from tasks.facts import HostFacts, Reading, read_facts
from tasks.files import FileSpec, copy_actions, write_actions
from tasks.packages import install_actions
from tasks.remote import Mode, mode
from tasks.systemd import user_actions
from tasks.venvs import home_read, install

NAME = "packages"
Used = Callable[[Component, Settings], bool]


@dataclass(frozen=True)
class Wanted:
    """What the package step wants on a host, and the read-ahead that tells what it has."""

    packages: list[str]
    files: list[FileSpec]
    venvs: list[tuple[Venv, tuple[str, ...]]]
    reading: Reading


def on_host(components: Sequence[Component], used: Used, settings: Settings, host: HostInfo) -> list[Component]:
    """The `components` the deploy converges on `host`.

    A component counts when the settings use it (`used`), its step's artifacts are here (a
    step skipped for want of MinIO's binary installs nothing) and it has something on the
    host (not `absent`).
    """
    found: list[Component] = []
    for component in components:
        in_groups = component.groups is None or set(component.groups) & set(host.groups)
        if not in_groups or not used(component, settings) or (component.absent and component.absent(settings, host)):
            continue
        if component.step().missing():
            continue
        found.append(component)
    return found


def host_packages(components: Sequence[Component], settings: Settings, host: HostInfo) -> list[str]:
    """Every package of `components` (those on `host`) and their parts, in their order, each once."""
    return list(dict.fromkeys(name for component in components for name in component.reading(settings, host).packages))


def first_files(components: Sequence[Component], settings: Settings, host: HostInfo) -> list[FileSpec]:
    """The files of `components` written before their packages are installed."""
    return [
        file.spec(part.context(settings, host.name, None))
        for component in components
        for part in component.parts_on(settings, host)
        for file in part.files_on(settings, host)
        if file.first
    ]


def host_venvs(
    components: Sequence[Component], settings: Settings, host: HostInfo
) -> list[tuple[Venv, tuple[str, ...]]]:
    """The venvs of `components` (those on `host`) and their parts, each with the accounts of its component
    (Synapse's install makes folders its account owns)."""
    return [
        (venv, part.users)
        for component in components
        for part in component.parts_on(settings, host)
        for venv in part.venvs
    ]


def first_venv_actions(
    venvs: Sequence[tuple[Venv, tuple[str, ...]]], settings: Settings, facts: HostFacts | None
) -> list[Action]:
    """The accounts, wheels and installs of the venvs whose program the host has none of yet (`home` missing).

    Nothing where the host was not read (plan mode): the component's step shows its install there.
    A venv already there, even of another version, is left to the component's step: a new version
    restarts what runs the old one, which that step decides.
    """
    if facts is None:
        return []
    first = [(venv, users) for venv, users in venvs if not facts.commands[home_key(venv)].strip()]
    accounts = user_actions(list(dict.fromkeys(user for _, users in first for user in users)), facts.users)
    copies = copy_actions([spec for venv, _ in first for spec in venv.wheels.specs()], None)
    return [*accounts, *copies, *(install(venv, settings, "") for venv, _ in first)]


def home_key(venv: Venv) -> str:
    return f"{venv.home} present"


def package_step(components: Sequence[Component], used: Used, order: Callable[[str, Settings], Any]) -> Step:
    """The deploy step installing, on each host, every package of the `components` it runs, and the venvs of
    programs it has none of yet: in `order` (a host's sort key), `packages.installs_at_once` of them at a time."""

    def wanted(settings: Settings, host_name: str) -> Wanted:
        """The host's packages, the files written before them, its venvs, and the read-ahead of all three."""
        host = settings.hosts[host_name]
        present = on_host(components, used, settings, host)
        names, files = host_packages(present, settings, host), first_files(present, settings, host)
        venvs = host_venvs(present, settings, host)
        reading = Reading(
            packages=names,
            files=[spec.path for spec in files],
            users=list(dict.fromkeys(user for _, users in venvs for user in users)),
            commands={home_key(venv): home_read(venv) for venv, _ in venvs},
        )
        return Wanted(names, files, venvs, reading)

    def install_all(task: Task, settings: Settings) -> Result:
        wants = wanted(settings, task.host.name)
        facts = read_facts(task, wants.reading)
        installs = install_actions(wants.packages, facts and facts.packages, autostart=False)
        venvs = first_venv_actions(wants.venvs, settings, facts)
        results = execute(task, [*write_actions(wants.files, facts and facts.files), *installs, *venvs], facts)
        task.results.extend(results)
        missing = sum(len(action.names) for action in installs)
        done = "installed" if mode(task) is Mode.APPLY else "to install"
        said = (
            f"{missing} of {len(wants.packages)} packages {done}"
            if missing
            else f"{len(wants.packages)} packages present"
        )
        said += "".join(f"; {action.change}" for action in venvs if isinstance(action, Command))
        return Result(host=task.host, result=said, changed=any(result.changed for result in results))

    summary = "every Debian package the host's components need, installed in one apt run"
    return Step(
        NAME,
        summary,
        install_all,
        reading=lambda settings, host: wanted(settings, host).reading,
        order=order,
        at_once=lambda settings: settings.config.packages.installs_at_once,
        per_host=True,
    )
