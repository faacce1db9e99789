"""Any value in any key of the settings files is refused with the key named, or accepted and carried through.

Each leaf key of the shipped config.yaml and defaults.yaml, and of one host of hosts.yaml, gets
each of a set of odd values in turn. The schema must refuse it naming that key, or accept it; an
accepted one must then pass the rest of the settings' checks (cross-file validation, sizing,
secrets) as accepted or refused, never as a crash: a typo is answered with exit code 2 and a
message, not a traceback.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import Config
from core.errors import InputError
from core.inventory import Defaults, Host
from core.schema import Invalid, Section
from core.settings import load_settings
from tasks.registry import CATALOG
from tests.conftest import REPO

ODD: list[Any] = [None, "", "x" * 300, "30d\n", -1, 0, 10**30, 1.5, True, [], {}, ["10.0.0.0/8", 5]]
# Each file, the section its entries are, and the entry whose keys are tried (() for the whole file).
FILES: list[tuple[str, type[Section], tuple[str, ...]]] = [
    ("config.yaml", Config, ()),
    ("inventory/defaults.yaml", Defaults, ()),
    ("inventory/hosts.yaml", Host, ("patroni1",)),
]


def leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


def entry(data: dict[str, Any], where: tuple[str, ...]) -> Any:
    for part in where:
        data = data[part]
    return data


def with_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    entry(changed, path[:-1])[path[-1]] = value
    return changed


@pytest.mark.parametrize(("name", "section", "where"), FILES, ids=[f[0] for f in FILES])
def test_every_odd_value_is_refused_naming_its_key_or_accepted(
    tmp_path: Path, name: str, section: type[Section], where: tuple[str, ...]
) -> None:
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(REPO / "inventory", tmp_path / "inventory", ignore=shutil.ignore_patterns("lab"))
    shipped = yaml.safe_load((REPO / name).read_text())
    accepted = refused = loaded = 0
    for path in leaves(entry(shipped, where), where):
        for odd in ODD:
            data = with_value(shipped, path, odd)
            try:
                section.parse(entry(data, where), where)
            except Invalid as invalid:
                assert any(p.loc[: len(path)] == path for p in invalid.problems), (path, odd, invalid.problems)
                refused += 1
                continue
            accepted += 1
            (tmp_path / name).write_text(yaml.safe_dump(data))
            try:
                load_settings(
                    tmp_path / "config.yaml", tmp_path / "inventory", catalog=CATALOG, allow_placeholders=True
                )
                loaded += 1
            except InputError:
                pass
            except Exception as error:  # the point: nothing but InputError may come out
                pytest.fail(f"{name}: {'.'.join(path)} = {odd!r}: {type(error).__name__}: {error}")
    (tmp_path / name).write_text((REPO / name).read_text())
    # Both answers were given, and an accepted value went all the way through the settings' load.
    assert refused and (loaded or not accepted)
