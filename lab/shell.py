"""Local commands for building the lab, failing with the command and its error output."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class LabError(Exception):
    """The lab could not be built or torn down; the message says what failed and why."""


def sh(args: Sequence[str], *, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
    """Run a local command; return its stdout, or raise LabError with its stderr."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError:
        raise LabError(f"{args[0]} is not installed: run 'bash setup.sh' first") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(args)} did not finish within {timeout:g} s") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(args)} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout
