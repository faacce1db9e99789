"""Certificates on the servers: the site CA in every trust store.

Every server trusts the internal CA (core/pki.py), so services and tools on one server
verify the TLS of another (the VIP, Coturn, MinIO) without extra options.
"""

from __future__ import annotations

from nornir.core.task import Result, Task

from core.settings import Settings
from tasks.files import FileSpec, put_files
from tasks.packages import packages
from tasks.remote import Expectation, Mode, mode, run


def trust_path(settings: Settings) -> str:
    return f"/usr/local/share/ca-certificates/matrix-platform-{settings.site}.crt"


def ca_trust(task: Task, settings: Settings) -> Result:
    """Install the site CA certificate and rebuild the trust store when it changed."""
    task.run(task=packages, names=["ca-certificates"], severity_level=10)
    spec = FileSpec(trust_path(settings), settings.ca.ca_pem())
    result = task.run(task=put_files, specs=[spec], severity_level=10)[0]
    if result.changed and mode(task) is Mode.APPLY:
        run(task, "update-ca-certificates --fresh >/dev/null", what=Expectation("the trust store rebuilt"))
    return Result(host=task.host, changed=result.changed, diff=result.diff)
