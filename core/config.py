"""The schema of `config.yaml`: what to deploy (inventory/ says where).

Each field's description doubles as the "fix" line of a validation error, so it says
what the value is and gives an example.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Literal

from core.schema import Field, Parse, Section

Port = Annotated[int, Field(ge=1, le=65535)]
DNS_NAME = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"


def _network(value: object) -> IPv4Network | IPv6Network:
    """A CIDR such as 10.0.0.0/8; host bits set is an error, not silently masked."""
    text = str(value)
    try:
        return ip_network(text)
    except ValueError:
        try:
            suggestion = ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"'{text}' is not a network in CIDR form") from None
        raise ValueError(f"'{text}' has host bits set; did you mean {suggestion}?") from None


def _address(value: object) -> IPv4Address | IPv6Address:
    try:
        return ip_address(str(value))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None


Network = Annotated[IPv4Network | IPv6Network, Parse(_network)]
Address = Annotated[IPv4Address | IPv6Address, Parse(_address)]


class Versions(Section):
    postgresql: int = Field(15, ge=13, le=17, description="PostgreSQL major version, e.g. 15")
    patroni: str = Field(
        "4.1.5",
        pattern=r"^\d+\.\d+\.\d+$",
        description="pinned Patroni release from the artifact cache, >= 3.0.3 (e.g. 4.1.5); "
        "Debian's 3.0.2 loses acknowledged writes after a partition",
    )
    playbook: str = Field(
        description="matrix-docker-ansible-deploy git commit or tag to run, e.g. c0681e4",
        min_length=4,
    )


class WorkerCounts(Section):
    """Explicit worker counts; a null count is derived from the scale (see core/sizing.py)."""

    sync: int | None = Field(None, ge=0, le=32, description="sync workers, e.g. 8 (null: from scale)")
    generic: int | None = Field(None, ge=0, le=32, description="generic/client workers, e.g. 4 (null: from scale)")
    federation_sender: int | None = Field(
        None, ge=0, le=16, description="federation senders, e.g. 4 (null: from scale)"
    )
    event_persister: int | None = Field(None, ge=0, le=8, description="event persisters, e.g. 2 (null: from scale)")
    media_repository: int = Field(
        1, ge=0, le=1, description="1 for a dedicated media worker (uploads, downloads, thumbnails), 0 for none"
    )


# Synapse's own duration syntax (its config's parse_duration): a count and s, m (minutes), h, d, w or y.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
Lifetime = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,5}[smhdwy]$")]


def duration_seconds(duration: str) -> int:
    """Seconds in a Synapse duration such as 90d or 12h (validated by `Lifetime`)."""
    return int(duration[:-1]) * DURATION_UNITS[duration[-1]]


class Retention(Section):
    """How long Synapse keeps media and messages: a duration such as 90d, 12h or 1y; null keeps for ever."""

    remote_media: Lifetime | None = Field(
        "90d",
        description="copies of other servers' media not accessed for this long are deleted (fetched again when "
        "someone asks), e.g. 90d; null keeps them",
    )
    local_media: Lifetime | None = Field(
        None,
        description="this server's uploads not accessed for this long are DELETED for good (profile pictures are "
        "kept), e.g. 365d; null keeps them",
    )
    messages: Lifetime | None = Field(
        None,
        description="message retention: events older than this are purged from every room (a room may choose a "
        "shorter policy, never a longer one), e.g. 365d; null keeps messages",
    )
    forgotten_rooms: Lifetime | None = Field(
        None,
        description="a room every local member has forgotten is purged from the database this long after, "
        "e.g. 28d; null keeps it",
    )


class StateCompression(Section):
    """synapse-auto-compressor on the Synapse host: rewrites state_groups_state into fewer rows, a chunk at a time."""

    enabled: bool = Field(True, description="true to run the state compressor on a timer (native mode), false not to")
    schedule: str = Field(
        "*-*-* 04:30:00", description="systemd OnCalendar of a compressor run, e.g. '*-*-* 04:30:00' (daily)"
    )
    chunk_size: int = Field(
        500, ge=50, le=100000, description="state groups the compressor loads per chunk (memory), e.g. 500"
    )
    chunks_per_run: int = Field(
        100, ge=1, le=100000, description="chunks one run compresses before it stops (its length), e.g. 100"
    )


class Synapse(Section):
    mode: Literal["playbook", "native"] = Field(
        "playbook", description="'playbook' (matrix-docker-ansible-deploy, containers) or 'native' (venv + systemd)"
    )
    federation: bool = Field(True, description="true to federate with other homeservers, false for an isolated server")
    metrics_port: Port = Field(
        9100, description="port of Synapse main-process metrics, e.g. 9100 (the playbook's default)"
    )
    admin_path: str = Field(
        "/synapse-admin",
        description="URL path of the admin UI (Ketesa): '/' or a path that does not end in '/', e.g. /synapse-admin",
    )
    admin_allowlist: list[Network] = Field(
        min_length=1, description="networks allowed to reach the admin UI, e.g. ['10.0.0.0/8', '203.0.113.7/32']"
    )
    admin_user: str = Field(
        "admin",
        pattern=r"^[a-z0-9._=/-]+$",
        description="localpart of the first admin user, created once (password in the secrets file), e.g. admin",
    )
    room_directory: Literal["everyone", "admin", "nobody"] = Field(
        "everyone",
        description="who may publish rooms to the server's room directory: everyone (any local user), admin "
        "(synapse.admin_user only) or nobody; Synapse's own default, no rule, refuses everyone",
    )
    workers: WorkerCounts = WorkerCounts()
    retention: Retention = Retention()
    state_compression: StateCompression = StateCompression()
    database_cp_min: int = Field(5, ge=1, le=50, description="minimum DB connections per Synapse process, e.g. 5")
    database_cp_max: int = Field(10, ge=1, le=100, description="maximum DB connections per Synapse process, e.g. 10")


class Playbook(Section):
    """Where and how matrix-docker-ansible-deploy runs (synapse.mode: playbook)."""

    directory: str = Field(
        "../matrix-docker-ansible-deploy",
        description="checkout of matrix-docker-ansible-deploy at versions.playbook with its roles fetched "
        "('just roles') during the internet phase; relative to config.yaml, e.g. ../matrix-docker-ansible-deploy",
    )
    ansible_playbook: str = Field(
        "ansible-playbook", description="the ansible-playbook command on the controller, e.g. ansible-playbook"
    )
    registry_prefix: str = Field(
        "",
        pattern=r"^$|^[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._-]+)*/$",
        description="air gap: local container registry holding every image, ending in '/', "
        "e.g. registry.internal:5000/ (empty: the images' own registries, internet phase only)",
    )
    synapse_image: str = Field(
        "",
        description="air gap with MinIO: a prebuilt Synapse image that already has synapse-s3-storage-provider, "
        "e.g. registry.internal:5000/synapse-s3:v1.157.1 (empty: the playbook builds it on the host with pip, "
        "which needs the internet)",
    )


class Database(Section):
    name: str = Field("synapse", pattern=r"^[a-z_][a-z0-9_]*$", description="database name, e.g. synapse")
    user: str = Field(
        "synapse", pattern=r"^[a-z_][a-z0-9_]*$", description="database role Synapse logs in as, e.g. synapse"
    )
    synchronous_mode: bool = Field(
        True,
        description="true: Patroni synchronous replication, no committed write lost on failover "
        "(the design requires it)",
    )
    reserved_connections: int = Field(
        20, ge=0, le=200, description="connections kept for admin, backup and exporters, e.g. 20"
    )


class PgBouncer(Section):
    port: Port = Field(6432, description="PgBouncer listen port, e.g. 6432")
    pool_mode: Literal["transaction"] = Field(
        "transaction", description="must be 'transaction' (the design's requirement for Synapse)"
    )
    default_pool_size: int = Field(50, ge=1, le=1000, description="server connections per database/user pair, e.g. 50")
    reserve_pool_size: int = Field(10, ge=0, le=1000, description="extra server connections under load, e.g. 10")
    max_client_conn: int = Field(1000, ge=10, le=20000, description="client connections PgBouncer accepts, e.g. 1000")


class Turn(Section):
    relay_min_port: Port = Field(49152, description="first UDP/TCP relay port of coturn, e.g. 49152")
    relay_max_port: Port = Field(49172, description="last relay port of coturn, e.g. 49172")


class LiveKit(Section):
    enabled: bool = Field(True, description="true to deploy the LiveKit SFU mesh for group calls")
    rtc_min_port: Port = Field(50100, description="first UDP port of LiveKit media, e.g. 50100")
    rtc_max_port: Port = Field(50200, description="last UDP port of LiveKit media, e.g. 50200")


class MinIO(Section):
    enabled: bool = Field(True, description="true to store Synapse media in the MinIO erasure set")
    drives_per_node: int = Field(4, ge=1, le=16, description="data drives per MinIO node, e.g. 4")
    bucket: str = Field(
        "synapse-media",
        pattern=r"^[a-z0-9][a-z0-9.-]{2,62}$",
        description="bucket for Synapse media, e.g. synapse-media",
    )


class Monitoring(Section):
    node_exporter_port: Port = Field(
        9101, description="node-exporter port on every server, e.g. 9101 (9100 is Synapse's metrics port)"
    )
    scrape_interval_seconds: int = Field(
        30, ge=1, le=300, description="how often Prometheus scrapes every target and evaluates the rules, e.g. 30"
    )
    retention_days: int = Field(30, ge=1, le=3650, description="days of metrics Prometheus keeps, e.g. 30")
    alert_webhook: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="URL Alertmanager posts alerts to (your chat or paging bridge), e.g. http://10.0.6.5:8065/hooks/x; "
        "null: alerts show in Alertmanager only",
    )


class Firewall(Section):
    turn_relay_ports: str = Field(
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="relay port range your perimeter firewall opens for TURN, e.g. 49152-49172",
    )


class Backup(Section):
    stanza: str = Field("matrix", pattern=r"^[a-z][a-z0-9_-]*$", description="pgBackRest stanza name, e.g. matrix")
    retention_full: int = Field(2, ge=1, le=52, description="full database backups kept (with their WAL), e.g. 2")
    full_schedule: str = Field(
        "Sun *-*-* 01:30:00", description="systemd OnCalendar of the weekly full backup, e.g. 'Sun *-*-* 01:30:00'"
    )
    diff_schedule: str = Field(
        "Mon..Sat *-*-* 01:30:00",
        description="systemd OnCalendar of the daily differential backup, e.g. 'Mon..Sat *-*-* 01:30:00'",
    )
    files_schedule: str = Field(
        "*-*-* 03:00:00",
        description="systemd OnCalendar of the media pull and key archive, e.g. '*-*-* 03:00:00' (daily)",
    )
    media_bwlimit_kbps: int = Field(
        50000,
        ge=100,
        description="rsync --bwlimit of the media pull in KiB/s, so it never saturates a link, e.g. 50000",
    )
    media_snapshots: int = Field(14, ge=1, le=365, description="dated media snapshots kept (hard-linked), e.g. 14")
    key_archives: int = Field(30, ge=1, le=365, description="distinct key/config archives kept, e.g. 30")
    max_age_hours: float = Field(
        26,
        gt=0,
        description="backup_setup.py check and the BackupTooOld alert fire when the newest database backup, "
        "media snapshot or key archive is older, in hours, e.g. 26",
    )


class Certificates(Section):
    source: Literal["internal", "import"] = Field(
        "internal",
        description="'internal': the site CA issues every certificate; 'import': HAProxy serves the certificate "
        "in import_dir (obtained by ACME while the servers had internet), the rest stays internal",
    )
    import_dir: str | None = Field(
        None,
        description="with source 'import': folder holding fullchain.pem and privkey.pem for the homeserver name, "
        "e.g. /etc/letsencrypt/live/chat.example.org (relative to config.yaml)",
    )
    min_days_left: int = Field(
        14,
        ge=1,
        le=365,
        description="certificates.py check fails when a served certificate has fewer days left, e.g. 14",
    )
    lifetime_days: int = Field(
        365, ge=1, le=825, description="validity of server certificates the internal CA issues, in days, e.g. 365"
    )
    renew_before_days: int = Field(
        30, ge=0, le=365, description="issue a new certificate this many days before the old one expires, e.g. 30"
    )


class Preflight(Section):
    min_free_disk_gb: float = Field(5, ge=0, description="free space required on / of every server, in GB, e.g. 5")
    max_clock_skew_seconds: float = Field(2, gt=0, description="allowed clock difference to the controller, e.g. 2")


class Packages(Section):
    installs_at_once: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="servers installing their packages at the same time in a deploy, those the longest chain of "
        "steps waits for first; lower it where the servers share a package mirror's bandwidth or one machine's CPU, "
        "e.g. 4 (null: all at once)",
    )


class Ssh(Section):
    connect_timeout: int = Field(10, ge=1, le=300, description="seconds to wait for an SSH connection, e.g. 10")
    command_timeout: int = Field(
        900,
        ge=10,
        le=7200,
        description="seconds a command that changes a server may run, unless it sets its own, e.g. 900",
    )
    lost_after: int = Field(
        12,
        ge=5,
        le=120,
        description="seconds a server's network may leave the controller unanswered before the server is declared "
        "lost and drops out of the run (the other servers go on), e.g. 12",
    )


class Config(Section):
    domain: str = Field(
        pattern=DNS_NAME,
        max_length=253,
        description="the Matrix server name (user IDs end in :<domain>), e.g. example.org",
    )
    homeserver_fqdn: str = Field(
        pattern=DNS_NAME,
        max_length=253,
        description="host name clients and federation use, resolving to the HAProxy VIP, e.g. chat.example.org",
    )
    internal_domain: str = Field(
        "internal",
        pattern=r"^[a-z0-9.-]+$",
        description="suffix of service names in /etc/hosts, e.g. internal (patroni1.internal)",
    )
    scale: Literal["small", "medium", "large"] = Field(
        description="reference scale: small (1k concurrent users), medium (5k) or large (10k)"
    )
    ccu: int | None = Field(
        None, ge=10, le=200_000, description="concurrent users if not the scale's figure, e.g. 7000 (null: from scale)"
    )
    secrets_file: str | None = Field(
        None,
        max_length=4096,
        description="the site's secrets file, relative to this file's folder, e.g. .secrets/production.yaml "
        "(null: .secrets/<site>.yaml beside this file)",
    )
    versions: Versions
    synapse: Synapse
    playbook: Playbook = Playbook()
    database: Database = Database()
    pgbouncer: PgBouncer = PgBouncer()
    turn: Turn = Turn()
    livekit: LiveKit = LiveKit()
    minio: MinIO = MinIO()
    monitoring: Monitoring = Monitoring()
    firewall: Firewall
    backup: Backup = Backup()
    certificates: Certificates = Certificates()
    preflight: Preflight = Preflight()
    packages: Packages = Packages()
    ssh: Ssh = Ssh()
