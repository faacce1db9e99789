"""Input problems reported to the operator before any host is touched.

Every problem names the file, the key (or host), what is wrong and how to fix it, so a
runbook can print them all at once and exit 2 without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputProblem:
    """One thing wrong with the operator's input."""

    file: str
    key: str
    message: str
    fix: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}\n    fix: {self.fix}"


class InputError(Exception):
    """Raised with every problem found, so the operator can fix them in one go."""

    def __init__(self, problems: list[InputProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class HostError(Exception):
    """A host answered wrongly or not at all; the message tells the operator what to check.

    Runbooks print these messages as they are (no traceback): they are about the
    servers, not about our code.
    """


class HostLost(HostError):
    """A host could not be reached, or stopped answering in the middle of a run.

    The runbook takes such a host out of the rest of the run (the others go on) and lists
    it at the end with the command that finishes it; `address` is the inventory address
    the connection used, so a task that failed on a peer's loss names the peer.
    """

    def __init__(self, message: str, address: str) -> None:
        super().__init__(message)
        self.address = address
