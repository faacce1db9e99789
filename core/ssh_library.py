"""paramiko, imported without Invoke: `from core.ssh_library import paramiko`.

paramiko imports Invoke (and with it unittest.mock and asyncio) only to run ssh_config's
`Match exec`; the connection plugin reads no ssh_config. Left out while paramiko loads,
it no longer costs every run 55 ms before its first remote command; paramiko then
records that Invoke is missing and would say so only if asked to run a `Match exec`.
"""

from __future__ import annotations

import sys

_absent = object()
_before = sys.modules.get("invoke", _absent)
if _before is _absent:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` fails at once
try:
    import paramiko
finally:
    if _before is _absent:
        del sys.modules["invoke"]

__all__ = ["paramiko"]
