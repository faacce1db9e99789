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
import uuid
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


def _token() -> str:
    return random.token_urlsafe(32)


def _vrrp_password() -> str:
    # VRRP PASS authentication uses only the first 8 characters.
    alphabet = string.ascii_letters + string.digits
    return "".join(random.choice(alphabet) for _ in range(8))


def _minio_access_key() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "".join(random.choice(alphabet) for _ in range(20))


def _signing_key() -> str:
    """A Synapse signing key file line: `ed25519 <key id> <unpadded base64 seed>` (signedjson's format).

    Made on the controller and kept with the other secrets, so a rebuilt or restored
    homeserver signs with the same key (other servers would reject a new one for a while).
    """
    seed = random.token_bytes(32)
    key_id = "a_" + "".join(random.choice(string.ascii_letters) for _ in range(4))
    return f"ed25519 {key_id} {base64.b64encode(seed).decode().rstrip('=')}"


def _ssh_key() -> str:
    """An Ed25519 private key in OpenSSH format (its public half is derived where it is authorised)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()


def ssh_public_key(private: str, comment: str) -> str:
    """The authorized_keys form of an OpenSSH private key made by `_ssh_key`."""
    key = load_ssh_private_key(private.encode(), None)
    return f"{key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()} {comment}"


# Every secret the platform uses, with how to make a fresh one.
GENERATORS = {
    # Not a secret: names the site on every server (tasks/site_identity.py); kept with the secrets it goes with.
    "site_id": lambda: uuid.uuid4().hex,
    "postgres_superuser_password": _token,
    "postgres_replication_password": _token,
    "postgres_rewind_password": _token,
    "synapse_db_password": _token,
    "synapse_db_scram_salt": _token,
    "pgbouncer_admin_password": _token,
    "patroni_rest_password": _token,
    "turn_shared_secret": _token,
    "minio_root_user": _minio_access_key,
    "minio_root_password": _token,
    "minio_synapse_access_key": _minio_access_key,
    "minio_synapse_secret_key": _token,
    "livekit_api_key": lambda: "API" + _minio_access_key()[:12],
    "livekit_api_secret": _token,
    "livekit_redis_password": _token,
    "synapse_registration_shared_secret": _token,
    "synapse_macaroon_secret_key": _token,
    "synapse_form_secret": _token,
    "synapse_replication_secret": _token,
    "playbook_generic_secret_key": _token,
    "synapse_redis_password": _token,
    "synapse_admin_password": _token,
    "synapse_signing_key": _signing_key,
    "keepalived_auth_pass": _vrrp_password,
    "haproxy_stats_password": _token,
    "grafana_admin_password": _token,
    "pgbackrest_cipher_pass": _token,
    # The backup host's key for pulling media and keys from the Synapse host (forced command there).
    "backup_ssh_key": _ssh_key,
}


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


def rotate(secrets: Secrets, name: str, *, write: bool) -> Secrets:
    """`secrets` with a fresh value for `name`, remembering the fingerprint of the values before.

    The servers carry that fingerprint until the deploy that follows has reached them; the
    site identity check accepts it for as long as this file says it was the previous one.
    `write`: save the file (0600); otherwise only in memory (--check, --plan).
    """
    values = dict(secrets.values)
    values[PREVIOUS] = fingerprint(secrets, identity_names(secrets)) or ""
    values[f"{RETIRED}{name}"] = values[name]  # files on the servers still hold it: diffs must hide it
    values[name] = GENERATORS[name]()
    if write:
        write_private(secrets.path, yaml.safe_dump(values, sort_keys=True))
    return Secrets(secrets.path, values, secrets.created)


def load_or_create(path: Path) -> Secrets:
    """Read the secrets file, adding any secret it lacks; refuse one others can read."""
    values: dict[str, str] = {}
    label = str(path)
    created = not path.exists()
    if not created:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
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
        loaded = yaml.safe_load(path.read_text()) or {}
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
    missing = [name for name in GENERATORS if name not in values]
    if missing:
        values.update({name: GENERATORS[name]() for name in missing})
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
