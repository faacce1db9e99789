"""What the components declare that spans them: the inventory's groups, the ports, the scrape jobs, the secrets.

The inventory's groups with their size rules, the ports each group's services listen on,
what Prometheus scrapes and the secrets they use are declared by the components (tasks/),
which sit above core/; the registry (tasks/registry.py) gathers them into one `Catalog` and hands it to
`load_settings`, which validates with it and keeps it in the settings. So validation,
the secrets file, the firewall, preflight, the rolling reboot and prometheus.yml read one
table without core/ importing the components.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.config import Config
from core.ports import PortUse, public_tcp

if TYPE_CHECKING:
    from core.settings import Settings
    from core.targets import Job


@dataclass(frozen=True)
class GroupRule:
    """An inventory group, declared by the component that owns it."""

    name: str
    fewest: int  # hosts high availability needs (SPEC "Topology")
    most: int | None = None  # None: no upper bound
    switch: str | None = None  # the config.yaml key that turns the group off (then it may be empty)
    odd: str = ""  # why an even count adds no fault tolerance ("" when it may be even)
    # Where its hosts come in a rolling reboot: hosts whose loss nobody notices first (0),
    # the ones that matter most last. A host takes the highest rank of its groups.
    reboot_rank: int = 0

    def enabled(self, config: Config) -> bool:
        if self.switch is None:
            return True
        section, key = self.switch.split(".")
        return bool(getattr(getattr(config, section), key))


@dataclass(frozen=True)
class Catalog:
    groups: Mapping[str, GroupRule]
    # What the services of a host in these groups listen on (SSH aside), from the settings that move them.
    ports: Callable[[Config, Sequence[str]], list[PortUse]]
    # What Prometheus scrapes, every component's jobs in the registry's order.
    scrape: Callable[[Settings], list[Job]]
    # Every secret the components use, with how to make a fresh one (the secrets file gains what it lacks).
    secrets: Mapping[str, Callable[[], str]]

    def host_ports(self, config: Config, groups: Sequence[str], ssh_port: int) -> list[PortUse]:
        """Every port a host in `groups` listens on: SSH, then its services'."""
        known = [group for group in groups if group in self.groups]
        return [public_tcp("ssh", ssh_port, ("sshd", "systemd"), "inventory port"), *self.ports(config, known)]

    def reboot_rank(self, groups: Sequence[str]) -> int:
        return max((self.groups[g].reboot_rank for g in groups if g in self.groups), default=0)
