"""A Matrix client for lab tests: Python run on monitoring1 (the lab's admin network) that
registers users with the shared secret (read from stdin) and talks Matrix through
https://chat.lab.example like a client. A test appends its scenario, which prints JSON."""

from __future__ import annotations

import json
import secrets
import shlex

from core.settings import Settings
from lab.lab import Lab
from tests.lab.conftest import ssh

PRELUDE = r"""
import hashlib, hmac, json, sys, urllib.request, uuid
secret, password = sys.stdin.readline().strip(), sys.stdin.readline().strip()
base = "https://chat.lab.example"

def call(method, path, body=None, token=None, raw=None, content_type="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=30) as answer:
        payload = answer.read()
        return payload if raw is not None or method == "GET" and "/download/" in path else json.loads(payload)

def register(user, admin=False):
    # A new user (a server admin when admin is true); Synapse's answer holds its user_id and an access_token.
    nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
    kind = b"admin" if admin else b"notadmin"
    mac = hmac.new(secret.encode(), b"\0".join([nonce.encode(), user.encode(), password.encode(), kind]),
                   hashlib.sha1).hexdigest()
    return call("POST", "/_synapse/admin/v1/register",
                {"nonce": nonce, "username": user, "password": password, "admin": admin, "mac": mac})

def login(user):
    return call("POST", "/_matrix/client/v3/login",
                {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                 "password": password})["access_token"]
"""


def run_client(lab: Lab, settings: Settings, scenario: str) -> dict:
    """Run PRELUDE + `scenario` on monitoring1; the JSON its last line prints."""
    password = secrets.token_urlsafe(16)
    stdin = f"{settings.secrets['synapse_registration_shared_secret']}\n{password}\n"
    out = ssh(lab, "monitoring1", "python3 -c " + shlex.quote(PRELUDE + scenario), input=stdin).stdout
    return json.loads(out.strip().splitlines()[-1])
