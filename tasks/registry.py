"""Every component declared through `tasks.component`: the tables that span components loop over it."""

from __future__ import annotations

from tasks.backup import BACKUP_REPOSITORY, PGBACKREST
from tasks.backup_files import BACKUP_FILES, BACKUP_SOURCE
from tasks.certificates import CA_TRUST
from tasks.component import Component
from tasks.coturn import COTURN
from tasks.etcd import ETCD
from tasks.firewall import FIREWALL
from tasks.haproxy import HAPROXY
from tasks.hosts_file import HOSTS_FILE
from tasks.keepalived import KEEPALIVED
from tasks.livekit import LIVEKIT, LIVEKIT_JWT, LIVEKIT_REDIS
from tasks.minio import MINIO
from tasks.monitoring import GRAFANA, MONITORING, NODE_EXPORTER, POSTGRES_EXPORTER
from tasks.patroni import PATRONI, POSTGRESQL_SERVER
from tasks.pgbouncer import PGBOUNCER
from tasks.synapse import SYNAPSE, SYNAPSE_REDIS, SYNAPSE_STAGE

DECLARED = (
    FIREWALL,
    CA_TRUST,
    HOSTS_FILE,
    NODE_EXPORTER,
    ETCD,
    PATRONI,
    POSTGRESQL_SERVER,
    PGBACKREST,
    BACKUP_REPOSITORY,
    PGBOUNCER,
    MINIO,
    POSTGRES_EXPORTER,
    HAPROXY,
    KEEPALIVED,
    COTURN,
    LIVEKIT_REDIS,
    LIVEKIT,
    LIVEKIT_JWT,
    SYNAPSE_REDIS,
    SYNAPSE,
    SYNAPSE_STAGE,
    BACKUP_SOURCE,
    BACKUP_FILES,
    MONITORING,
    GRAFANA,
)
COMPONENTS: dict[str, Component] = {component.name: component for component in DECLARED}
