"""Pinned Python programs in venvs of their own, installed offline from the wheels the deploy copied.

Each program (Synapse, the state compressor) gets a venv made with the system's site
packages (psycopg2 and PyYAML come from Debian) and a pip install that never looks at an
index: a wheel missing from the copied set fails the step, it is not fetched.
"""

from __future__ import annotations

import shlex

from tasks.declaration import Command, Stage


def offline_install(
    venv: str, wheels: str, requirement: str, subject: str, *, fresh: bool, prepare: str = "", timeout: int = 300
) -> Command:
    """The command installing `requirement` into `venv` from `wheels` (`subject` names it in the run's report;
    `fresh`: nothing was read from the host, as in plan mode; `prepare`: shell run first, e.g. its folders)."""
    script = (
        f"set -e; {prepare}[ -x {venv}/bin/pip ] || python3 -m venv --system-site-packages {venv}; "
        f"{venv}/bin/pip install --quiet --no-index --find-links {wheels} {shlex.quote(requirement)}"
    )
    return Command(
        script,
        f"{subject} in {venv}" if fresh else f"{subject} installed in {venv}",
        f"{subject} installed in {venv}",
        f"pip's message above names the missing wheel; check {wheels} and python3-venv on the host",
        timeout=timeout,
        stage=Stage.BEFORE_FILES,
        name=f"pip install {requirement} into {venv} (from {wheels})",
    )
