"""The platform's secrets: generated on first use into one 0600 file outside git.

Values are never printed: `Secrets` hides them from repr, and `Redactor` replaces any
value that still finds its way into output, a report or a plan file with its name.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets as random
import stat
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
)

from core.errors import InputError, InputProblem
from core.yamlsource import load_yaml


def token() -> str:
    """A password or key: 32 random bytes, URL-safe."""
    return random.token_urlsafe(32)


def vrrp_password() -> str:
    """VRRP PASS authentication uses only the first 8 characters."""
    alphabet = string.ascii_letters + string.digits
    return "".join(random.choice(alphabet) for _ in range(8))


def access_key() -> str:
    """An S3-style access key id: 20 upper-case letters and digits."""
    alphabet = string.ascii_uppercase + string.digits
    return "".join(random.choice(alphabet) for _ in range(20))


def signing_key() -> str:
    """A Synapse signing key file line: `ed25519 <key id> <unpadded base64 seed>` (signedjson's format).

    Made on the controller and kept with the other secrets, so a rebuilt or restored
    homeserver signs with the same key (other servers would reject a new one for a while).
    """
    seed = random.token_bytes(32)
    key_id = "a_" + "".join(random.choice(string.ascii_letters) for _ in range(4))
    return f"ed25519 {key_id} {base64.b64encode(seed).decode().rstrip('=')}"


def ssh_key() -> str:
    """An Ed25519 private key in OpenSSH format (its public half is derived where it is authorised)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()


def ssh_public_key(private: str, comment: str) -> str:
    """The authorized_keys form of an OpenSSH private key made by `ssh_key`."""
    key = load_ssh_private_key(private.encode(), None)
    return f"{key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()} {comment}"


# The site's own entry, beside the secrets the components declare (`Component.secrets`): not
# a secret, it names the site on every server (tasks/site_identity.py) and is kept with the
# secrets it goes with.
SITE = {"site_id": lambda: random.token_hex(16)}  # 32 hex digits, as uuid4().hex gave


PREVIOUS = "previous_secrets_fingerprint"  # written by a deliberate rotation (rotate_secret.py)
PUBLIC = frozenset({"site_id", PREVIOUS})  # entries of the file that may be shown
# Secrets whose every consumer the deploy renders again and restarts or reloads on change,
# so `python runbooks/rotate_secret.py NAME` can replace them on a running platform. Others
# cannot be swapped that simply: the signing key (other servers cache it), the backup cipher
# pass (older backups become unreadable), the macaroon key (every session ends), the
# PostgreSQL users Patroni creates only at bootstrap.
ROTATABLE = ("turn_shared_secret", "haproxy_stats_password", "synapse_db_password")


@dataclass(frozen=True)
class Secrets:
    """Named secret values; `repr` never shows them. `created`: the file did not exist before this run."""

    path: Path
    values: dict[str, str] = field(repr=False)
    created: bool = False

    def __getitem__(self, name: str) -> str:
        return self.values[name]


PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL)


class Redactor:
    """Replaces every secret value in a text with `<secret:name>`."""

    def __init__(self, secrets: Secrets | None) -> None:
        pairs = secrets.values.items() if secrets else ()
        # Longest first, so a secret that contains another is replaced whole.
        shown = [(v, f"<secret:{k}>") for k, v in pairs if v and k not in PUBLIC]
        self._pairs = sorted(shown, key=lambda p: -len(p[0]))

    def __call__(self, text: str) -> str:
        for value, name in self._pairs:
            if value in text:
                text = text.replace(value, name)
        # Private keys (the internal CA's certificates) are not in the secrets file.
        return PRIVATE_KEY.sub("<private key>", text)


def fingerprint(secrets: Secrets, names: tuple[str, ...]) -> str | None:
    """A digest of `names`' values (never shown as values); None when the file lacks one of them."""
    if any(name not in secrets.values for name in names):
        return None
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{secrets[name]}\0".encode())
    return digest.hexdigest()


RETIRED = "previous "  # prefix of a rotated secret's old value, kept so output never shows it either


def identity_names(secrets: Secrets) -> tuple[str, ...]:
    """The names a site identity's fingerprint covers: every secret in use in the file."""
    return tuple(sorted(n for n in secrets.values if n not in PUBLIC and not n.startswith(RETIRED)))


def rotate(secrets: Secrets, name: str, make: Callable[[], str], *, write: bool) -> Secrets:
    """`secrets` with a fresh value for `name` (from `make`), remembering the fingerprint of the values before.

    The servers carry that fingerprint until the deploy that follows has reached them; the
    site identity check accepts it for as long as this file says it was the previous one.
    `write`: save the file (0600); otherwise only in memory (--check, --plan).
    """
    values = dict(secrets.values)
    values[PREVIOUS] = fingerprint(secrets, identity_names(secrets)) or ""
    values[f"{RETIRED}{name}"] = values[name]  # files on the servers still hold it: diffs must hide it
    values[name] = make()
    if write:
        write_private(secrets.path, yaml.safe_dump(values, sort_keys=True))
    return Secrets(secrets.path, values, secrets.created)


def load_or_create(path: Path, makers: Mapping[str, Callable[[], str]]) -> Secrets:
    """Read the secrets file, adding any secret of `makers` it lacks; refuse one others can read, or a path
    the controller cannot use (too long a name, a folder it may not write)."""
    try:
        return _load_or_create(path, makers)
    except OSError as error:
        raise InputError(
            [
                InputProblem(
                    str(path),
                    "(file)",
                    f"cannot read or write the secrets file: {error.strerror or error}",
                    "point secrets_file in config.yaml (or --secrets) at a file the controller can read and write",
                )
            ]
        ) from None


def _load_or_create(path: Path, makers: Mapping[str, Callable[[], str]]) -> Secrets:
    values: dict[str, str] = {}
    label = str(path)
    created = not path.exists()
    if not created:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_file() and mode & 0o077:  # anything else load_yaml refuses as not a file
            raise InputError(
                [
                    InputProblem(
                        label,
                        "(file mode)",
                        f"the secrets file is readable by others (mode {mode:04o})",
                        f"chmod 600 {path}",
                    )
                ]
            )
        loaded = load_yaml(path, label).data or {}
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise InputError(
                [
                    InputProblem(
                        label,
                        "(top level)",
                        "expected a mapping of secret names to string values",
                        "restore the file from your backup, or move it away to generate new secrets",
                    )
                ]
            )
        values = dict(loaded)
    missing = [name for name in makers if name not in values]
    if missing:
        values.update({name: makers[name]() for name in missing})
        write_private(path, yaml.safe_dump(values, sort_keys=True))
    return Secrets(path, values, created)


def write_private(path: Path, text: str) -> None:
    """Write `text` atomically to a file only the owner can read, in a 0700 folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
