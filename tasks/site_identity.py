"""Which site a server belongs to: its site id and the fingerprints of the secrets and CA it was deployed with.

Why: the secrets file is looked up beside the config file, so `--config other/dir/x.yaml`
used to generate fresh secrets and a new site CA, and the next run would have pushed a new
Synapse signing key, new database passwords and new certificates onto a running platform.
Now every server carries the identity of the site from the first run that touched it
(`/etc/matrix-platform/site.json`: the site id, a fingerprint of the secret values and one
of the CA certificate; never a secret), and every run reads it first: one whose secrets or
CA differ from what the servers carry refuses, exit 2, before it changes anything.

The secrets fingerprint covers the names the server's identity lists, so a secret that a
newer version adds does not count as a different site; the identity is rewritten to cover
it once the run has checked the others.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from nornir.core.task import Result, Task

from core.secrets import PREVIOUS, fingerprint, identity_names
from core.settings import Settings
from tasks.files import FileSpec, put_files
from tasks.remote import Expectation, run

IDENTITY_PATH = "/etc/matrix-platform/site.json"


@dataclass(frozen=True)
class Identity:
    """What a server says it belongs to."""

    site: str
    site_id: str
    secrets: str  # sha256 over the values of `names`, in that order
    names: tuple[str, ...]
    ca: str  # sha256 of the site CA certificate (PEM)

    def text(self) -> str:
        """One line of JSON: what `--verbose` shows of a server's answer."""
        return json.dumps(asdict(self)) + "\n"


def ours(settings: Settings) -> Identity:
    """This run's identity: every secret of the file, and the CA (made now if the site has none yet)."""
    names = identity_names(settings.secrets)
    secrets = fingerprint(settings.secrets, names)
    assert secrets is not None
    ca = hashlib.sha256(settings.ca.ca_pem().encode()).hexdigest()
    return Identity(settings.site, settings.secrets["site_id"], secrets, names, ca)


def parse(text: str) -> Identity | None:
    """A server's identity file; None when it has none (or one that is not ours to read: treated as foreign)."""
    if not text.strip():
        return None
    try:
        data = json.loads(text)
        return Identity(data["site"], data["site_id"], data["secrets"], tuple(data["names"]), data["ca"])
    except (ValueError, KeyError, TypeError):
        return Identity("", "", "", (), "")  # an identity we cannot read: not taken for ours


def mismatch(theirs: Identity, settings: Settings, mine: Identity) -> str:
    """Why a server's identity does not fit this run's secrets and CA; empty when it does."""
    if not theirs.site_id:
        return f"its {IDENTITY_PATH} is not a site identity this version can read; check what wrote it"
    if theirs.site_id != mine.site_id:
        fingerprint_ = theirs.secrets[:12]
        return f"it belongs to site id {theirs.site_id[:8]}… (secrets fingerprint {fingerprint_}…), not to this file's"
    rotated = theirs.secrets == settings.secrets.values.get(PREVIOUS)  # rotate_secret.py: this run updates it
    if fingerprint(settings.secrets, theirs.names) != theirs.secrets and not rotated:
        changed = [n for n in theirs.names if n not in settings.secrets.values]
        return f"its secrets fingerprint is {theirs.secrets[:12]}…: " + (
            f"this file lacks {', '.join(changed)}" if changed else "a secret in this file has another value"
        )
    if theirs.ca != mine.ca:
        return f"it trusts the site CA {theirs.ca[:12]}…, this run's CA is {mine.ca[:12]}…"
    return ""


def read_identity(task: Task, settings: Settings) -> Result:
    """Read the server's site identity (one command; nothing is changed here); the file's text in `identity`."""
    out = run(
        task,
        f"cat {IDENTITY_PATH} 2>/dev/null; true",
        what=Expectation("the server's site identity, or nothing on a new server"),
        reads_only=True,
    )
    theirs = parse(out.stdout)
    said = (
        f"site {theirs.site} (id {theirs.site_id[:8]}…), secrets {theirs.secrets[:12]}…, CA {theirs.ca[:12]}…"
        if theirs and theirs.site_id
        else "no site identity yet (a new server)"
        if theirs is None
        else f"an identity file this version cannot read ({IDENTITY_PATH})"
    )
    return Result(host=task.host, result=said, identity=out.stdout)


def problems(answers: dict[str, str], settings: Settings, mine: Identity) -> dict[str, str]:
    """Each server whose identity (`answers`: what `read_identity` read) is not this run's, with why."""
    found = {}
    for name, text in sorted(answers.items()):
        theirs = parse(text)
        why = mismatch(theirs, settings, mine) if theirs else ""
        if why:
            found[name] = why
    return found


def stale(answers: dict[str, str], mine: Identity) -> list[str]:
    """The servers whose identity must be written: new ones, and those that do not list every secret yet."""
    return [name for name, text in answers.items() if parse(text) != mine]


def write_identity(task: Task, identity: Identity) -> Result:
    """Write the site identity a server will be checked against from now on."""
    return put_files(task, [FileSpec(IDENTITY_PATH, identity.text(), mode=0o644)])
