"""Each declared component's decisions as data: a host's facts in, the actions the engine takes out.

A fixture is `tests/components/<component>/<case>.json` (the shape of pyinfra's operation
tests): the host, the facts its read-ahead returned (`null`: not read, as in plan mode) and
the actions expected, written as `str(action)` shows them (a systemctl action is its exact
command), those of the component's parts first. File facts are given relative to what the
component renders for that host, so fixtures do not depend on generated secrets or
certificates:
"wanted" (content, owner and mode as rendered), "missing", "other content", or an object
overriding fields of "wanted" (e.g. {"mode": "0600"}); "other files" gives the state of
every declared file the fixture does not name (a wheel set). Units: "running", "stopped",
"disabled" (stopped, not enabled) or "absent". A fixture with "refused" instead of "actions"
expects the host to be refused before anything is decided, its message matching it.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import artifacts
from core.errors import HostError
from core.settings import Settings, load_settings
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.component import Component
from tasks.facts import HostFacts
from tasks.files import ArtifactSpec, FileFact, FileSpec
from tasks.registry import CATALOG, COMPONENTS
from tasks.systemd import ServiceFact, Systemctl

FIXTURES = Path(__file__).resolve().parent.parent / "components"
CASES = sorted(FIXTURES.glob("*/*.json"))
UNITS = {
    "running": ServiceFact("loaded", "active", "enabled"),
    "stopped": ServiceFact("loaded", "inactive", "enabled"),
    "disabled": ServiceFact("loaded", "inactive", "disabled"),
    "absent": ServiceFact("not-found", "inactive", ""),
}


@pytest.fixture(scope="module", autouse=True)
def artifact_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Stand-ins for the vendor files the components copy (an archive where the manifest names a member, the
    wheels of a wheel set): what is decided depends on their checksums only, and the real ones need not be here."""
    cache = tmp_path_factory.mktemp("cache")
    manifest = artifacts.manifest()
    for component in COMPONENTS.values():
        for wheels in component.wheels:
            for item in manifest[wheels.artifact].files:
                built = cache / "built" / f"{artifacts.wheel_prefix(item)}py3-none-any.whl"
                stand_in = built if item.build_wheel else cache / item.name
                stand_in.parent.mkdir(exist_ok=True)
                stand_in.write_text(f"stand-in for {item.name}\n")
        for binary in component.binaries:
            item = manifest[binary.artifact].files[0]
            content = f"stand-in for {item.name}\n".encode()
            if item.member is None:
                (cache / item.name).write_bytes(content)
                continue
            with tarfile.open(cache / item.name, "w:gz") as archive:
                member = tarfile.TarInfo(item.member)
                member.size = len(content)
                archive.addfile(member, io.BytesIO(content))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(artifacts, "CACHE", cache)
        yield


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The lab's settings with secrets and a CA of their own (the fixtures never see their values)."""
    secrets = tmp_path_factory.mktemp("site") / "secrets.yaml"
    return load_settings(LAB_CONFIG, LAB_INVENTORY, catalog=CATALOG, allow_placeholders=True, secrets_file=secrets)[0]


def file_fact(spec: FileSpec | ArtifactSpec, given: str | dict[str, str]) -> FileFact:
    wanted = FileFact(True, spec.owner, spec.group, spec.mode, spec.sha256)
    if given == "missing":
        return FileFact(exists=False)
    if given == "other content":
        return FileFact(True, spec.owner, spec.group, spec.mode, "0" * 64)
    if given == "wanted":
        return wanted
    assert isinstance(given, dict), f"unknown file fact {given!r}"
    mode = int(given.get("mode", f"{spec.mode:o}"), 8)
    return FileFact(True, given.get("owner", spec.owner), given.get("group", spec.group), mode, spec.sha256)


def host_facts(component: Component, settings: Settings, host: str, given: dict[str, Any]) -> HostFacts:
    context = component.context(settings, host, HostFacts(commands=given.get("commands", {})))
    specs: dict[str, FileSpec | ArtifactSpec] = {
        spec.path: spec
        for part in (*component.parts, component)
        for spec in (file.spec(context) for file in part.files_on(settings, context.host))
    }
    specs |= {binary.path: binary.spec() for binary in component.binaries}
    specs |= {spec.path: spec for wheels in component.wheels for spec in wheels.specs()}
    unknown = set(given.get("files", {})) - set(specs)
    assert not unknown, f"facts for files {component.name} does not declare: {sorted(unknown)}"
    return HostFacts(
        packages=given.get("packages", {}),
        files={
            path: file_fact(spec, given.get("files", {}).get(path, given.get("other files", "missing")))
            for path, spec in specs.items()
            if path in given.get("files", {}) or "other files" in given
        },
        units={unit: UNITS[state] for unit, state in given.get("units", {}).items()},
        users=given.get("users", {}),
        commands=given.get("commands", {}),
    )


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_component_decides(case: Path, settings: Settings) -> None:
    fixture = json.loads(case.read_text())
    component = COMPONENTS[case.parent.name]
    given = fixture["facts"]
    facts = None if given is None else host_facts(component, settings, fixture["host"], given)
    context = component.context(settings, fixture["host"], facts)

    def decide() -> list[Any]:
        return [action for part in component.parts_on(settings, context.host) for action in part.decide(context, facts)]

    if "refused" in fixture:  # the host is refused before anything is decided, with this in the message
        with pytest.raises(HostError, match=fixture["refused"]):
            decide()
        return
    decided = decide()
    assert [str(action) for action in decided] == fixture["actions"], fixture.get("why", "")
    # The units whose restart takes turns with the step's other hosts (a rolling restart).
    in_turns = [unit for action in decided if isinstance(action, Systemctl) for unit in action.rolling]
    assert in_turns == fixture.get("in turns", []), fixture.get("why", "")


def test_every_component_has_its_fixtures() -> None:
    """A fresh host, a host with nothing to do and at least one change, for every component."""
    for name in COMPONENTS:
        cases = {p.stem for p in FIXTURES.glob(f"{name}/*.json")}
        assert {"fresh", "noop"} <= cases and len(cases) >= 3, f"{name}: fixtures {sorted(cases)}"
    assert {p.name for p in FIXTURES.iterdir()} <= set(COMPONENTS), "fixtures for a component not declared"
