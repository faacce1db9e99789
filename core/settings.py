"""One validated, typed settings object from `config.yaml` + `inventory/`.

Data flows one way: files → this object (with the sizing derived once) → Nornir host
data → tasks and templates. Every problem found is collected and raised together as an
InputError, before anything connects to a host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from core import validate
from core.catalog import Catalog
from core.config import Config
from core.errors import InputError, InputProblem
from core.inventory import Defaults, Group, Host
from core.paths import real
from core.pki import InternalCA, ServerCertificate
from core.schema import Invalid, Section
from core.secrets import SITE, Secrets, load_or_create
from core.sizing import Sizing, for_config
from core.yamlsource import KeyPath, Placeholder, YamlDoc, load_yaml

INVENTORY_FILES = ("hosts.yaml", "groups.yaml", "defaults.yaml")


@dataclass(frozen=True)
class HostInfo:
    """A server of the inventory, as the tasks see it."""

    name: str
    address: str
    private_ip: str
    groups: tuple[str, ...]
    port: int
    username: str
    memory_mb: int | None = None


@dataclass(frozen=True)
class Settings:
    config_path: Path
    inventory_dir: Path
    config: Config
    defaults: Defaults
    hosts: dict[str, HostInfo]
    sizing: Sizing
    placeholders: tuple[Placeholder, ...]
    secrets: Secrets
    catalog: Catalog  # what the components declare (tasks/registry.py): groups, ports, scrape jobs

    @property
    def site(self) -> str:
        return self.defaults.data.site

    @property
    def vip(self) -> str:
        return str(self.defaults.data.vip)

    def members(self, group: str) -> list[HostInfo]:
        return [host for host in self.hosts.values() if group in host.groups]

    @property
    def ca(self) -> InternalCA:
        """The site's internal CA, beside the secrets file (created on first use)."""
        return InternalCA(self.secrets.path.parent / f"{self.site}-ca", self.site)

    def certificate(self, name: str, names: list[str], client: bool = False) -> ServerCertificate:
        """The site CA's certificate `name` for `names`, with the lifetime and renewal the config sets;
        `client`: also good for client authentication (mutual TLS)."""
        certificates = self.config.certificates
        return self.ca.server(name, names, certificates.lifetime_days, certificates.renew_before_days, client)

    def service_name(self, host: HostInfo) -> str:
        """The private DNS name of a server, e.g. patroni1.internal."""
        return f"{host.name}.{self.config.internal_domain}"


@dataclass(frozen=True)
class Parsed:
    """The four files after schema validation, with the documents for line numbers."""

    config: Config
    hosts: dict[str, Host]
    groups: dict[str, Group]
    defaults: Defaults
    docs: dict[str, YamlDoc]

    def host_problem(self, host: str, key: KeyPath, message: str, fix: str) -> InputProblem:
        return self.docs["hosts.yaml"].problem((host, *key), message, fix)


def load_settings(
    config_path: Path,
    inventory_dir: Path,
    *,
    catalog: Catalog,
    allow_placeholders: bool,
    secrets_file: Path | None = None,
) -> tuple[Settings, list[str]]:
    """Validate everything against the components' `catalog`, then load or create the secrets; returns
    (settings, warnings).

    The secrets file: `secrets_file` (--secrets), else the config's `secrets_file`, else
    `.secrets/<site>.yaml` beside the config file.
    """
    parsed = _parse(config_path, inventory_dir)
    problems = validate.check(parsed, catalog)
    placeholders = tuple(p for doc in parsed.docs.values() for p in doc.placeholders)
    warnings = []
    if allow_placeholders:
        warnings = [
            f"{doc.label}: {len(doc.placeholders)} example value(s) not replaced yet (CHANGE_TO_YOUR_ "
            f"markers on lines {', '.join(str(p.line) for p in doc.placeholders)}); a real deploy refuses them"
            for doc in parsed.docs.values()
            if doc.placeholders
        ]
    else:
        for p in placeholders:
            problems.append(
                InputProblem(
                    p.file,
                    p.key,
                    f"still has its example value ({p.marker})",
                    f"set your own value, then delete the '# {p.marker}' comment",
                    p.line,
                )
            )
    if problems:
        raise InputError(problems)
    hosts = {name: _host_info(name, host, parsed) for name, host in parsed.hosts.items()}
    config = parsed.config
    settings = Settings(
        config_path=config_path,
        inventory_dir=inventory_dir,
        config=config,
        defaults=parsed.defaults,
        hosts=hosts,
        sizing=for_config(config, sum(1 for h in hosts.values() if "pgbouncer" in h.groups)),
        placeholders=placeholders,
        secrets=load_or_create(
            secrets_file or config_path.parent / (config.secrets_file or f".secrets/{parsed.defaults.data.site}.yaml"),
            {**SITE, **catalog.secrets},
        ),
        catalog=catalog,
    )
    return settings, warnings


def _host_info(name: str, host: Host, parsed: Parsed) -> HostInfo:
    group_entries = [parsed.groups[g] for g in host.groups]
    return HostInfo(
        name=name,
        address=host.hostname,
        private_ip=str(host.data.private_ip or ip_address(host.hostname)),
        groups=tuple(host.groups),
        port=host.port or next((g.port for g in group_entries if g.port), None) or parsed.defaults.port,
        username=host.username
        or next((g.username for g in group_entries if g.username), None)
        or parsed.defaults.username,
        memory_mb=host.data.memory_mb,
    )


def _parse(config_path: Path, inventory_dir: Path) -> Parsed:
    problems: list[InputProblem] = []
    docs: dict[str, YamlDoc] = {}
    for name, path in [("config.yaml", config_path), *((f, inventory_dir / f) for f in INVENTORY_FILES)]:
        try:
            docs[name] = load_yaml(path, _label(path))
        except InputError as exc:
            problems.extend(exc.problems)
    if problems:
        raise InputError(problems)
    config = _model(Config, docs["config.yaml"], (), problems)
    defaults = _model(Defaults, docs["defaults.yaml"], (), problems)
    hosts = _mapping(Host, docs["hosts.yaml"], problems)
    groups = _mapping(Group, docs["groups.yaml"], problems)
    if problems:
        raise InputError(problems)
    assert config and defaults  # problems would have been raised otherwise
    return Parsed(config, hosts, groups, defaults, docs)


def _label(path: Path) -> str:
    """The path as the operator would type it: relative to the working directory when inside it."""
    try:
        return str(real(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# A host's or group's name in the inventory: also a folder of the plan, so nothing a path could misread.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _mapping(model: type[Section], doc: YamlDoc, problems: list[InputProblem]) -> dict[str, Any]:
    """A file whose top level maps names (hosts, groups) to entries of `model`."""
    data = doc.data or {}
    if not isinstance(data, dict):
        problems.append(doc.problem((), "expected a mapping of names to entries", "see the shipped example file"))
        return {}
    out = {}
    for name, entry in data.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(
                doc.problem(
                    (str(name),),
                    f"{name!r} is not a name: it names folders and files on the controller (plans, reports)",
                    "use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 "
                    "characters, and quote a name YAML would read as a number ('12345')",
                )
            )
            continue
        parsed = _model(model, doc, (name,), problems, entry)
        if parsed is not None:
            out[str(name)] = parsed
    return out


def _model(model: type[Section], doc: YamlDoc, prefix: KeyPath, problems: list[InputProblem], data: Any = None) -> Any:
    try:
        return model.parse(doc.data if data is None and not prefix else data, prefix)
    except Invalid as exc:
        problems.extend(doc.problem(p.loc, p.message, p.fix) for p in exc.problems)
        return None
