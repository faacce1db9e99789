"""SCRAM-SHA-256 password verifiers in PostgreSQL's format (RFC 5802 / RFC 7677).

PgBouncer can pass a client's SCRAM login through to PostgreSQL only if both hold the
*same* verifier (same salt and iterations). So the verifier is computed here once, set
on the role with `ALTER ROLE … PASSWORD '<verifier>'` and written to PgBouncer's
auth_file: neither server ever stores the plain password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

ITERATIONS = 4096


def verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def salt_for(secret_salt: str) -> bytes:
    """The stored salt secret (url-safe text) as 16 bytes."""
    return hashlib.sha256(secret_salt.encode()).digest()[:16]
