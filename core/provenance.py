"""What a report says it came from: the tool's commit and a digest of the settings it ran with.

Read from the files, not by running git: a report is written at the end of every run that
asks for one, and the controller may have no git (an offline bundle). A copy without its
.git folder reports its commit as unknown.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.settings import INVENTORY_FILES

REPO = Path(__file__).resolve().parent.parent


def commit(repo: Path = REPO) -> str:
    """The commit the tool's checkout is at, or "unknown"."""
    git = repo / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # a detached HEAD names its commit
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except OSError:
        pass
    return "unknown"


def settings_digest(config: Path, inventory: Path) -> str:
    """sha256 over the config file and the inventory's files as they were read (secrets are not among them)."""
    digest = hashlib.sha256()
    for path in (config, *(inventory / name for name in INVENTORY_FILES)):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()
