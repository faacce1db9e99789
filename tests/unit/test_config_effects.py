"""Every key of config.yaml has an effect: changing it changes what the deploy renders or decides.

Each key's value is changed (within the schema) in the lab's and the shipped config, and
everything the components derive from the settings is compared: every host's files,
packages, units, ports and reads, the scrape jobs, the playbook's variables. A key that
changes none of them is dead, unless it is listed in ELSEWHERE with where it acts
(a timeout, a threshold of a check, a path on the controller).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest

from core.config import Config
from core.errors import InputError
from core.schema import Invalid, Section
from core.settings import Settings, load_settings
from core.sizing import for_config
from lab import LAB_CONFIG, LAB_INVENTORY
from tasks.playbook import inventory_text, playbook_vars
from tasks.registry import CATALOG, DECLARED
from tests.conftest import REPO

# Keys that act elsewhere than on what is rendered (when a runbook runs, in validation): where each does.
ELSEWHERE = {
    "secrets_file": "where the controller keeps the secrets",
    "playbook.directory": "the controller's playbook checkout the synapse-playbook step runs",
    "playbook.ansible_playbook": "the command the synapse-playbook step runs on the controller",
    "versions.playbook": "the commit the playbook checkout must be at (checked before any host)",
    "certificates.min_days_left": "the certificates check's threshold",
    "certificates.renew_before_days": "when the certificates runbook renews",
    "certificates.lifetime_days": "the lifetime of certificates the site CA issues",
    "certificates.import_dir": "where imported certificates are read on the controller",
    "preflight.min_free_disk_gb": "preflight's disk check",
    "preflight.max_clock_skew_seconds": "preflight's clock check",
    "ssh.connect_timeout": "the controller's SSH connections",
    "ssh.command_timeout": "the controller's SSH connections",
    "ssh.lost_after": "when the controller gives a host up",
    "packages.installs_at_once": "how many servers the deploy's package step runs at once",
    "backup.max_age_hours": "backup_setup.py check's gate",
    # A fact about the site's perimeter, not the platform: validation refuses a relay range it does not forward.
    "firewall.turn_relay_ports": "validation against turn.relay_min_port/relay_max_port",
}


# Certificates and keys the site CA issues differ with the second they are made: compared as placeholders.
PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.DOTALL)


def leaves(model: type[Section], prefix: str = "") -> Iterator[str]:
    """The dotted names of every leaf key of the schema."""
    for name, field in model.keys().items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, Section):
            yield from leaves(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def candidates(value: Any, annotation: Any) -> list[Any]:
    """Other values to try for a key; those the schema accepts are used."""
    options = [a for a in typing.get_args(annotation) if not isinstance(a, type)]
    if typing.get_origin(annotation) is typing.Literal:
        return [o for o in options if o != value]
    if isinstance(value, bool):
        return [not value]
    if annotation is float:  # a default may be written as a whole number
        return [value + 1.5]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2 + 50]  # the last one past a rounding step (max_connections)
    if isinstance(value, str):
        head, _, last = value.rpartition(".")
        bumped = [f"{head}.{int(last) + 1}"] if last.isdigit() else []  # a version: 4.1.5 → 4.1.6
        if re.fullmatch(r"\d+[a-z]", value):  # a duration: 90d → 91d
            bumped.append(f"{int(value[:-1]) + 1}{value[-1]}")
        texts = [value + "x", value + "x/", value.replace(".", "x.", 1), *bumped, "0 4 * * *", "http://198.18.9.9:9/h"]
        return [text for text in texts if text != value]
    if isinstance(value, list):
        return [value[:-1], [*value, "198.18.250.0/24"]] if value else []
    if value is None:
        return [2, 20_000, "30d", "/tmp/elsewhere", "http://198.18.9.9:9/hook"]
    return []


def variants(config: Config, key: str) -> list[Config]:
    """`config` with `key` set to each other value the schema accepts."""
    data = config.dump()
    *path, last = key.split(".")
    section: Any = data
    model: Any = Config
    for part in path:
        section = section[part]
        model = model.keys()[part].annotation
    found = []
    for value in candidates(section[last], model.keys()[last].annotation):
        section[last] = value
        try:
            found.append(Config.parse(data))
        except Invalid:
            continue
    return found


def derived(settings: Settings) -> dict[str, object]:
    """Everything the components derive from the settings, by host and component."""
    found: dict[str, object] = {}
    for host in settings.hosts.values():
        found[f"{host.name} ports"] = settings.catalog.host_ports(settings.config, host.groups, host.port)
        for component in DECLARED:
            if component.groups is not None and not set(component.groups) & set(host.groups):
                continue
            context = component.context(settings, host.name, None)
            where = f"{host.name} {component.name}"
            found[f"{where} reads"] = component.reading(settings, host).script
            found[f"{where} packages"] = component.package_names(settings)
            found[f"{where} units"] = [(s.unit, s.running) for s in component.services_of(settings)]
            found[f"{where} absent"] = component.absent(settings, host) if component.absent else ""
            for file in component.files_on(settings, host):
                found[f"{where} {file.where(settings)}"] = PEM.sub("<pem>", file.spec(context).content)
    found["scrape"] = settings.catalog.scrape(settings)
    found["playbook"] = (playbook_vars(settings), inventory_text(settings))
    return found


def with_config(settings: Settings, config: Config) -> Settings:
    pgbouncers = len(settings.members("pgbouncer"))
    return dataclasses.replace(settings, config=config, sizing=for_config(config, pgbouncers))


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Settings]:
    """The lab's settings and the shipped example's (native and playbook mode), with secrets of their own."""
    root = tmp_path_factory.mktemp("site")
    return [
        load_settings(config, inventory, catalog=CATALOG, allow_placeholders=True, secrets_file=root / name)[0]
        for config, inventory, name in (
            (LAB_CONFIG, LAB_INVENTORY, "lab.yaml"),
            (REPO / "config.yaml", REPO / "inventory", "production.yaml"),
        )
    ]


def test_every_config_key_changes_what_the_deploy_renders_or_acts_elsewhere(sites: list[Settings]) -> None:
    baselines = [derived(settings) for settings in sites]
    dead, untried = [], []
    for key in leaves(Config):
        if key in ELSEWHERE:
            continue
        effect = tried = False
        for settings, baseline in zip(sites, baselines, strict=True):
            for other in variants(settings.config, key):
                tried = True
                try:
                    effect = derived(with_config(settings, other)) != baseline
                except InputError:  # the deploy refuses the other value until more is set: an effect too
                    effect = True
                if effect:
                    break
            if effect:
                break
        if not tried:
            untried.append(key)
        elif not effect:
            dead.append(key)
    assert dead == [], f"config keys that change nothing the deploy renders (wire them up or remove them): {dead}"
    assert untried == ["pgbouncer.pool_mode"], untried  # one allowed value (transaction pooling is what Synapse needs)


def test_the_keys_acting_elsewhere_exist() -> None:
    assert set(ELSEWHERE) <= set(leaves(Config))


def test_the_comparison_sees_a_key_that_changes_nothing_and_one_that_does(lab_settings: Settings) -> None:
    [ignored] = variants(lab_settings.config, "preflight.min_free_disk_gb")
    assert derived(with_config(lab_settings, ignored)) == derived(lab_settings)
    moved = variants(lab_settings.config, "pgbouncer.port")
    assert moved and all(derived(with_config(lab_settings, other)) != derived(lab_settings) for other in moved)


def test_every_key_acting_elsewhere_is_read_by_the_code() -> None:
    sources = [
        path.read_text()
        for folder in ("core", "tasks", "runbooks")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "config.py"
    ]
    unread = [key for key in ELSEWHERE if not any(f".{key.rsplit('.', 1)[-1]}" in text for text in sources)]
    assert unread == []
