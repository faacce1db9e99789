"""Pinned Python programs in venvs of their own, installed offline from the wheels the deploy copied.

Each program (Patroni, Synapse, the state compressor) is declared as a `Venv`: a venv made
with the system's site packages (psycopg2 and PyYAML come from Debian) and a pip install that
never looks at an index: a wheel missing from the copied set fails the step, it is not fetched.
"""

from __future__ import annotations

import shlex

from core.settings import Settings
from tasks.declaration import Command, Stage, Venv
from tasks.packages import venv_version_script


def version_read(venv: Venv, settings: Settings) -> str:
    """Prints the version the pinned version's venv holds (nothing when it has none)."""
    return venv_version_script(venv.at(settings), venv.distribution)


def home_read(venv: Venv) -> str:
    """Prints `home` when any version of the program was installed."""
    return f"[ -e {venv.home} ] && echo {venv.home}; true"


def install_name(venv: Venv, settings: Settings) -> str:
    """How listings, fixtures and notes name the install."""
    return f"pip install {venv.requirement(settings)} into {venv.at(settings)} (from {venv.wheels.into})"


def install(venv: Venv, settings: Settings, found: str | None) -> Command:
    """The command installing the pinned version into its venv; `found`: the version the venv held (None: not read,
    as in plan mode)."""
    target, version, wheels = venv.at(settings), venv.version(settings), venv.wheels.into
    name = venv.project.partition("[")[0]
    script = (
        f"set -e; {venv.prepare}[ -x {target}/bin/pip ] || python3 -m venv --system-site-packages {target}; "
        f"{target}/bin/pip install --quiet --no-index --find-links {wheels} {shlex.quote(venv.requirement(settings))}"
    )
    change = f"{name} {version} in {target}" if found is None else f"{name} {found or 'none'} → {version} in {target}"
    return Command(
        script,
        change,
        f"{name} {version} installed in {target}",
        f"pip's message above names the missing wheel; check {wheels} and the python3-* packages on the host",
        timeout=venv.timeout,
        stage=Stage.BEFORE_FILES,
        name=install_name(venv, settings),
    )


def venv_commands(venv: Venv, settings: Settings, found: str | None, written: frozenset[str]) -> list[Command]:
    """Install unless the venv holds the pinned version and no wheel of it changed."""
    changed_wheels = any(path.startswith(f"{venv.wheels.into}/") for path in written)
    if found is not None and found.strip() == venv.version(settings) and not changed_wheels:
        return []
    return [install(venv, settings, None if found is None else found.strip())]
