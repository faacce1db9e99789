"""A small Matrix client on the controller, talking to the homeserver through the VIP.

It connects to the VIP's address and speaks TLS for the homeserver's name (verified
against the site CA), so it needs no DNS entry on the controller: what a user's client
sees, minus name resolution. Used by validate.py. Tokens stay in this process.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote


class MatrixError(Exception):
    """The homeserver answered with an error status, or not at all."""


class VipConnection(http.client.HTTPSConnection):
    """HTTPS to `server_name` at the address `vip`."""

    def __init__(self, vip: str, server_name: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(server_name, port, context=context, timeout=timeout)
        self.vip = vip

    def connect(self) -> None:
        raw = socket.create_connection((self.vip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass
class MatrixClient:
    vip: str
    server_name: str
    ca_file: Path
    port: int = 443
    timeout: float = 30.0
    token: str | None = field(default=None, repr=False)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        connection = VipConnection(self.vip, self.server_name, self.port, context, self.timeout)
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        except OSError as exc:
            raise MatrixError(f"{method} {path.split('?')[0]}: {exc}") from exc
        finally:
            connection.close()

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """A JSON API call; an error status raises with Matrix's errcode (never the request body)."""
        status, payload = self.request(method, path, None if body is None else json.dumps(body).encode())
        try:
            data = json.loads(payload or b"{}")
        except ValueError:
            data = {}
        if status != 200:
            raise MatrixError(f"{method} {path.split('?')[0]}: HTTP {status} {data.get('errcode', '')}".strip())
        return data

    def login(self, user: str, password: str) -> str:
        """Password login; the session's token is kept for the next calls. Returns the user ID."""
        answer = self.call(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
                "initial_device_display_name": "matrix-platform validate",
            },
        )
        self.token = answer["access_token"]
        return answer["user_id"]

    def logout(self) -> None:
        if self.token:
            self.call("POST", "/_matrix/client/v3/logout", {})
            self.token = None

    def upload(self, data: bytes, name: str) -> str:
        status, payload = self.request(
            "POST", f"/_matrix/media/v3/upload?filename={quote(name)}", data, "application/octet-stream"
        )
        if status != 200:
            raise MatrixError(f"media upload: HTTP {status}")
        return json.loads(payload)["content_uri"]

    def download(self, mxc: str) -> bytes:
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        status, payload = self.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")
        if status != 200:
            raise MatrixError(f"media download: HTTP {status}")
        return payload
