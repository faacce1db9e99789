"""The site identity servers carry, as data: what a server says in, the verdict out."""

from __future__ import annotations

import dataclasses
import shutil
import stat
from pathlib import Path

import yaml

from core.secrets import Redactor, Secrets, fingerprint, load_or_create, rotate, token
from core.settings import Settings
from tasks.site_identity import IDENTITY_PATH, mismatch, ours, parse, problems, stale


def with_secrets(settings: Settings, tmp_path: Path, **changes: str | None) -> Settings:
    """The lab's settings with secret values changed (None: removed), the same CA beside them."""
    values = {k: v for k, v in (settings.secrets.values | changes).items() if v is not None}
    folder = tmp_path / "other"
    if not (folder / f"{settings.site}-ca").exists():
        shutil.copytree(settings.ca.folder, folder / f"{settings.site}-ca")
    path = folder / "secrets.yaml"
    path.write_text(yaml.safe_dump(values))
    path.chmod(0o600)
    return dataclasses.replace(settings, secrets=Secrets(path, values))


def test_the_servers_own_identity_fits(lab_settings: Settings) -> None:
    mine = ours(lab_settings)
    assert parse(mine.text()) == mine
    assert problems({"patroni1": mine.text(), "coturn1": mine.text()}, lab_settings, mine) == {}
    assert stale({"patroni1": mine.text()}, mine) == []
    assert "site_id" not in mine.names and all(name in lab_settings.secrets.values for name in mine.names)


def test_a_new_server_has_none_and_gets_one(lab_settings: Settings) -> None:
    mine = ours(lab_settings)
    assert parse("") is None
    assert problems({"coturn1": ""}, lab_settings, mine) == {}
    assert stale({"coturn1": "", "patroni1": mine.text()}, mine) == ["coturn1"]


def test_another_sites_secrets_are_refused(lab_settings: Settings, tmp_path: Path) -> None:
    theirs = ours(lab_settings)
    other = with_secrets(lab_settings, tmp_path, site_id="0" * 32, synapse_signing_key="ed25519 a_x AAAA")
    found = problems({"patroni1": theirs.text()}, other, ours(other))
    assert found["patroni1"].startswith(f"it belongs to site id {theirs.site_id[:8]}…")


def test_one_secret_with_another_value_is_refused(lab_settings: Settings, tmp_path: Path) -> None:
    theirs = ours(lab_settings)
    other = with_secrets(lab_settings, tmp_path, synapse_db_password="something else")
    assert mismatch(theirs, other, ours(other)).endswith("a secret in this file has another value")
    short = with_secrets(lab_settings, tmp_path, turn_shared_secret=None)
    assert mismatch(theirs, short, ours(short)).endswith("this file lacks turn_shared_secret")


def test_another_ca_is_refused(lab_settings: Settings) -> None:
    mine = ours(lab_settings)
    theirs = dataclasses.replace(mine, ca="f" * 64)
    why = mismatch(theirs, lab_settings, mine)
    assert why == f"it trusts the site CA {'f' * 12}…, this run's CA is {mine.ca[:12]}…"


def test_a_secret_added_by_a_newer_version_is_no_other_site(lab_settings: Settings) -> None:
    """A server deployed before a secret existed: its identity fits, and is rewritten to cover the new one."""
    mine = ours(lab_settings)
    names = mine.names[1:]
    older = dataclasses.replace(mine, names=names, secrets=fingerprint(lab_settings.secrets, names) or "")
    assert mismatch(older, lab_settings, mine) == ""
    assert stale({"patroni1": older.text()}, mine) == ["patroni1"]


def test_an_unreadable_identity_counts_as_foreign(lab_settings: Settings) -> None:
    mine = ours(lab_settings)
    found = problems({"patroni1": "{not json"}, lab_settings, mine)
    why = f"its {IDENTITY_PATH} is not a site identity this version can read; check what wrote it"
    assert found == {"patroni1": why}


def test_a_rotation_is_accepted_where_the_servers_still_carry_the_previous_fingerprint(
    lab_settings: Settings, tmp_path: Path
) -> None:
    before = with_secrets(lab_settings, tmp_path)
    theirs = ours(before)
    rotated = dataclasses.replace(before, secrets=rotate(before.secrets, "turn_shared_secret", token, write=True))
    mine = ours(rotated)
    assert rotated.secrets["turn_shared_secret"] != before.secrets["turn_shared_secret"]
    assert rotated.secrets["previous turn_shared_secret"] == before.secrets["turn_shared_secret"]
    assert mine.names == theirs.names and mine.secrets != theirs.secrets  # the old value is not in use
    assert mismatch(theirs, rotated, mine) == "" and stale({"coturn1": theirs.text()}, mine) == ["coturn1"]
    # Written for good (0600), and the old value stays hidden in any output.
    assert load_or_create(before.secrets.path, {}).values == rotated.secrets.values
    assert stat.S_IMODE(before.secrets.path.stat().st_mode) == 0o600
    old = before.secrets["turn_shared_secret"]
    assert (
        Redactor(rotated.secrets)(f"static-auth-secret={old}")
        == "static-auth-secret=<secret:previous turn_shared_secret>"
    )
    # Only the fingerprint right before the rotation counts: an older one is another file.
    again = dataclasses.replace(rotated, secrets=rotate(rotated.secrets, "haproxy_stats_password", token, write=False))
    assert mismatch(theirs, again, ours(again)).endswith("a secret in this file has another value")
