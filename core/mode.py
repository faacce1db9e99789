"""How a run treats hosts; every layer reads it, so it lives at the bottom."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """How a run treats hosts: apply changes, only read facts, or not connect at all."""

    APPLY = "apply"
    CHECK = "check"
    PLAN = "plan"
