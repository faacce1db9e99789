"""Host keys: each connection trusts exactly its own host's known_hosts entries, read fresh when the file changes."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from core.connection import _verify_host_keys
from core.errors import HostError


def line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


@pytest.fixture(scope="module")
def keys() -> list[paramiko.PKey]:
    return [paramiko.RSAKey.generate(1024) for _ in range(3)]


def trusted(known_hosts: Path, hostname: str, port: int = 22) -> dict[str, dict[str, paramiko.PKey]]:
    client = paramiko.SSHClient()
    _verify_host_keys(client, str(known_hosts), hostname, port)
    assert isinstance(client._policy, paramiko.RejectPolicy)
    return {name: dict(entries) for name, entries in client.get_host_keys().items()}


def test_only_the_hosts_own_entries_are_trusted(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(line("198.18.1.11", keys[0]) + line("198.18.1.12", keys[1]) + line("[198.18.1.11]:2222", keys[2]))
    assert trusted(known, "198.18.1.11") == {"198.18.1.11": {"ssh-rsa": keys[0]}}
    assert trusted(known, "198.18.1.11", 2222) == {"[198.18.1.11]:2222": {"ssh-rsa": keys[2]}}
    assert trusted(known, "198.18.1.13") == {}  # unknown: RejectPolicy refuses it at connect


def test_hashed_names_are_matched(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(line(paramiko.HostKeys.hash_host("198.18.1.11"), keys[0]) + line("198.18.1.12", keys[1]))
    assert trusted(known, "198.18.1.11") == {"198.18.1.11": {"ssh-rsa": keys[0]}}


def test_a_rewritten_file_is_read_again(tmp_path: Path, keys: list[paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(line("198.18.1.11", keys[0]))
    assert trusted(known, "198.18.1.11") == {"198.18.1.11": {"ssh-rsa": keys[0]}}
    known.write_text(line("198.18.1.11", keys[1]))  # the server was reinstalled and its new key checked
    assert trusted(known, "198.18.1.11") == {"198.18.1.11": {"ssh-rsa": keys[1]}}


def test_missing_known_hosts_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"known_hosts file .*/nowhere does not exist.*ssh-keyscan"):
        trusted(tmp_path / "nowhere", "198.18.1.11")
