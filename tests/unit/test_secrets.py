"""Secrets: generated once into a 0600 file, stable across runs, never shown."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import InputError
from core.secrets import PUBLIC, SITE, Redactor, load_or_create
from tasks.registry import CATALOG
from tests.conftest import Site

MAKERS = {**SITE, **CATALOG.secrets}  # the site id and every secret a component declares


def test_generated_once_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / ".secrets" / "site.yaml"
    first = load_or_create(path, MAKERS)
    assert set(first.values) == set(MAKERS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create(path, MAKERS).values == first.values
    assert len(first["keepalived_auth_pass"]) == 8
    assert first["postgres_superuser_password"] not in repr(first)


def test_missing_secrets_are_added_and_existing_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("turn_shared_secret: keep-me\n")
    path.chmod(0o600)
    loaded = load_or_create(path, MAKERS)
    assert loaded["turn_shared_secret"] == "keep-me"
    assert set(loaded.values) == set(MAKERS)


def test_readable_secrets_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("turn_shared_secret: x\n")
    path.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_or_create(path, MAKERS)


@pytest.mark.parametrize(
    ("name", "message"), [("x" * 300, "cannot read or write the secrets file"), ("folder", "not a regular file")]
)
def test_a_secrets_path_the_controller_cannot_use_is_refused_naming_it(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=message) as refused:
        load_or_create(tmp_path / name, MAKERS)
    assert refused.value.problems[0].file == str(tmp_path / name)


def test_redactor_replaces_every_value_longest_first(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("a: abc\nb: abcdef\n")
    path.chmod(0o600)
    redact = Redactor(load_or_create(path, MAKERS))
    assert redact("x abcdef y abc") == "x <secret:b> y <secret:a>"


def test_no_secret_in_plan_output_or_files(deploy: Callable[..., tuple[int, str]], site: Site) -> None:
    code, out = deploy(*site.args("--plan", "--verbose", "--report", str(site.root / "report.json")))
    assert code == 0
    secrets = load_or_create(site.root / ".secrets" / "production.yaml", MAKERS).values
    values = [value for name, value in secrets.items() if name not in PUBLIC]
    written = [
        p.read_text()
        for p in (site.root.parent / site.root.name).rglob("*")
        if p.is_file() and ".secrets" not in p.parts
    ]
    for value in values:
        assert value not in out
        assert all(value not in text for text in written)
