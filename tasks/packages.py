"""Debian packages, installed only when missing.

Installs run non-interactively, without recommends (they pull units that fail on small
servers and containers), and under `timeout`: an unreachable mirror or proxy must fail
the step, not hang the run. With `autostart=False` a temporary policy-rc.d keeps
Debian from starting the package's default instance (e.g. a `15/main` PostgreSQL
cluster, a stock etcd) that the platform will configure and start itself.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from nornir.core.task import Result, Task

from tasks.remote import Expectation, Mode, known, mode, primitive, run

APT_TIMEOUT = 900
# An index refresh normally takes seconds; one was seen hanging for many minutes on a
# connection its proxy had closed. Give each attempt a short deadline and try again.
UPDATE_TIMEOUT = 120
UPDATE_ATTEMPTS = 3
# Seconds to wait before another attempt, drawn per host: every server refreshes at once,
# and a caching proxy that failed them together (apt-cacher-ng racing on one index file)
# must not see them all come back in the same instant.
RETRY_PAUSE = (2, 10)


def query_script(names: list[str]) -> str:
    quoted = " ".join(shlex.quote(n) for n in names)
    return f"dpkg-query -W -f='${{Package}}\\t${{db:Status-Abbrev}}\\n' {quoted} 2>/dev/null; true"


def venv_version_script(venv: str, distribution: str) -> str:
    """Prints the version of `distribution` (its dist-info name, e.g. matrix_synapse) installed in `venv`, or nothing.

    Read from the dist-info directory pip completes last, not by running the program:
    importing Synapse cost 0.6 s of a host's CPU and `patroni --version` 0.5 s, on every
    run. A venv whose interpreter is gone (Python upgraded under it) counts as empty.
    """
    pattern = f"{venv}/lib/python3*/site-packages/{distribution}-*.dist-info"
    return (
        f'[ -x {venv}/bin/python ] && for d in {pattern}; do [ -f "$d/RECORD" ] && '
        f'v="${{d##*/{distribution}-}}" && echo "${{v%.dist-info}}"; done; true'
    )


def missing(names: list[str], query_output: str) -> list[str]:
    """Packages of `names` that dpkg does not report as installed ('ii')."""
    installed = {line.split("\t")[0] for line in query_output.splitlines() if "\tii" in line}
    return [name for name in names if name not in installed]


def install_script(names: list[str], *, autostart: bool) -> str:
    quoted = " ".join(shlex.quote(n) for n in names)
    # Lock::Timeout: another install on the host (a step of the deploy running at the same
    # time, unattended-upgrades) makes this one wait for dpkg's lock, not fail at once.
    apt = (
        f"timeout {APT_TIMEOUT} apt-get -q -y -o DPkg::Lock::Timeout={APT_TIMEOUT} "
        f"-o Dpkg::Options::=--force-confold install --no-install-recommends {quoted}"
    )
    # --error-on=any: without it an index that failed to download is only a warning, exit
    # 0, and the install then fails on a package it cannot locate.
    low, high = RETRY_PAUSE
    update = (
        f"for attempt in $(seq {UPDATE_ATTEMPTS}); do "
        f"timeout {UPDATE_TIMEOUT} apt-get -q -o DPkg::Lock::Timeout={UPDATE_TIMEOUT} update --error-on=any && break; "
        f'[ "$attempt" = {UPDATE_ATTEMPTS} ] && exit 100; echo "apt-get update attempt $attempt failed" >&2; '
        f"sleep $(shuf -i {low}-{high} -n 1); done"
    )
    script = f"set -e; export DEBIAN_FRONTEND=noninteractive; {update}; {apt}"
    if autostart:
        return script
    # Only remove the policy file we created; an operator's own policy-rc.d stays.
    return (
        "if [ -e /usr/sbin/policy-rc.d ]; then own=0; else own=1; "
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; "
        f"( {script} ); rc=$?; [ $own = 1 ] && rm -f /usr/sbin/policy-rc.d; exit $rc"
    )


@dataclass(frozen=True)
class Install:
    """Debian packages to install: the missing ones, or every one when the host was not read (plan mode)."""

    names: tuple[str, ...]
    autostart: bool = True

    def __str__(self) -> str:
        return f"apt-get install {' '.join(self.names)}{'' if self.autostart else ' (no autostart)'}"


def install_actions(names: list[str], installed: Mapping[str, bool] | None, *, autostart: bool) -> list[Install]:
    """What takes the host to having every one of `names`; `installed` is None when the host was not read."""
    absent = list(names) if installed is None else [name for name in names if not installed.get(name)]
    return [Install(tuple(absent), autostart)] if absent else []


def install(task: Task, action: Install) -> Result:
    """Carry out `action` in the run's mode: describe it (plan, check) or install (apply)."""
    names = list(action.names)
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result=names, changed=True, diff=f"packages present: {' '.join(names)}")
    if mode(task) is Mode.APPLY:
        run(
            task,
            install_script(names, autostart=action.autostart),
            timeout=UPDATE_ATTEMPTS * UPDATE_TIMEOUT + APT_TIMEOUT + 60,
            what=Expectation(
                f"packages installed: {' '.join(names)}",
                "check the host's apt sources and that its package mirror or proxy answers "
                "(apt-get update on the host shows which source fails)",
            ),
        )
    return Result(host=task.host, result=names, changed=True, diff=f"install: {' '.join(names)}")


@primitive
def packages(task: Task, names: list[str], autostart: bool = True) -> Result:
    """Ensure the Debian packages `names` are installed."""
    installed = None if mode(task) is Mode.PLAN else known(task, "package", names)
    if installed is None and mode(task) is not Mode.PLAN:
        out = run(task, query_script(names), what=Expectation("dpkg status lines"), reads_only=True).stdout
        absent = missing(names, out)
        installed = {name: name not in absent for name in names}
    actions = install_actions(names, installed, autostart=autostart)
    return install(task, actions[0]) if actions else Result(host=task.host, result=[], changed=False)
