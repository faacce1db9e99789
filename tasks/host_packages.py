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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nornir.core.task import Result, Task

from core.settings import HostInfo, Settings
from core.step import Step
from tasks.component import Component
from tasks.executor import execute
from tasks.facts import Reading, read_facts
from tasks.files import FileSpec, write_actions
from tasks.packages import install_actions
from tasks.remote import Mode, mode

NAME = "packages"
Used = Callable[[Component, Settings], bool]


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


def package_step(components: Sequence[Component], used: Used, order: Callable[[str, Settings], Any]) -> Step:
    """The deploy step installing, on each host, every package of the `components` it runs: in `order`
    (a host's sort key), `packages.installs_at_once` of them at a time."""

    def wanted(settings: Settings, host_name: str) -> tuple[list[str], list[FileSpec], Reading]:
        """The host's packages, the files written before them, and the read-ahead of both."""
        host = settings.hosts[host_name]
        present = on_host(components, used, settings, host)
        names, files = host_packages(present, settings, host), first_files(present, settings, host)
        return names, files, Reading(packages=names, files=[spec.path for spec in files])

    def install_all(task: Task, settings: Settings) -> Result:
        names, files, reading = wanted(settings, task.host.name)
        facts = read_facts(task, reading)
        installs = install_actions(names, facts and facts.packages, autostart=False)
        results = execute(task, [*write_actions(files, facts and facts.files), *installs], facts)
        task.results.extend(results)
        missing = sum(len(action.names) for action in installs)
        done = "installed" if mode(task) is Mode.APPLY else "to install"
        said = f"{missing} of {len(names)} packages {done}" if missing else f"{len(names)} packages present"
        return Result(host=task.host, result=said, changed=any(result.changed for result in results))

    summary = "every Debian package the host's components need, installed in one apt run"
    return Step(
        NAME,
        summary,
        install_all,
        reading=lambda settings, host: wanted(settings, host)[2],
        order=order,
        at_once=lambda settings: settings.config.packages.installs_at_once,
        per_host=True,
    )
