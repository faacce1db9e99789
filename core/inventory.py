"""The schema of `inventory/` (Nornir SimpleInventory files): where each part runs.

The files keep SimpleInventory's layout (hosts.yaml, groups.yaml, defaults.yaml) so any
Nornir script can load them; we validate them ourselves first to give exact messages.
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Annotated, Any

from core.config import Address, Network, Port
from core.schema import Field, Parse, Section

HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


def _host_name(value: object) -> str:
    """A DNS name or an address; `10.0.2.300` is a mistyped address, not a DNS name."""
    if not isinstance(value, str):
        raise ValueError("expected a host name or IP address")
    if not HOST_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name or IP address")
    if all(part.isdigit() for part in value.split(".")):
        try:
            ip_address(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a valid IP address") from None
    return value


HostName = Annotated[str, Parse(_host_name)]


class FabricExtras(Section):
    key_filename: str | None = Field(None, description="private key for SSH, e.g. ~/.ssh/id_ed25519")
    known_hosts: str | None = Field(
        None, description="known_hosts file to verify host keys against, e.g. ~/.ssh/known_hosts"
    )


class ConnectionOptions(Section):
    hostname: str | None = None
    port: Port | None = None
    username: str | None = None
    platform: str | None = None
    extras: FabricExtras | None = None


class HostData(Section):
    private_ip: Address | None = Field(
        None, description="the host's address on the private network, e.g. 10.0.2.11 (default: hostname)"
    )
    memory_mb: int | None = Field(
        None,
        ge=256,
        description="RAM to size PostgreSQL for, in MiB, e.g. 16384 (default: read from the host; "
        "set it where the host sees more RAM than it may use, as containers do)",
    )


class Host(Section):
    hostname: HostName = Field(description="address or DNS name the controller reaches over SSH, e.g. 10.0.2.11")
    port: Port | None = Field(None, description="SSH port, e.g. 22")
    username: str | None = Field(None, description="SSH user with passwordless sudo, e.g. root or deploy")
    platform: str | None = None
    groups: list[str] = Field(min_length=1, description="one or more of the platform's groups (groups.yaml)")
    data: HostData = HostData()
    connection_options: dict[str, ConnectionOptions] = Field({})


class Group(Section):
    port: Port | None = None
    username: str | None = None
    platform: str | None = None
    groups: list[str] = Field([])
    data: dict[str, Any] = Field({})
    connection_options: dict[str, ConnectionOptions] = Field({})


class DefaultsData(Section):
    site: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
        description="short name of this site, used for its secrets file and reports, e.g. production",
    )
    vip: Address = Field(
        description="the HAProxy/Keepalived virtual IP that the homeserver name resolves to, e.g. 10.0.1.10"
    )
    private_networks: list[Network] = Field(
        min_length=1, description="networks the platform's servers live in, e.g. ['10.0.0.0/16']"
    )
    vrrp_router_id: int = Field(
        51,
        ge=1,
        le=255,
        description="VRRP virtual router id of the VIP, unique among VRRP routers on that network, e.g. 51",
    )


class Defaults(Section):
    port: Port = Field(22, description="SSH port, e.g. 22")
    username: str = Field(description="SSH user with passwordless sudo, e.g. root or deploy")
    platform: str | None = "linux"
    data: DefaultsData
    connection_options: dict[str, ConnectionOptions] = Field({})
