"""Deploy the whole platform in dependency order, each step gated by a health check.

    python runbooks/deploy.py --plan     # render everything into plan/<site>/, touch no host
    python runbooks/deploy.py --check    # read every host, show what would change
    python runbooks/deploy.py            # converge; a re-run that changes nothing says so

The tiers of SPEC "Deployment order" join the step list as they land.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.step import Step
from runbooks.shell import Runbook
from tasks.backup import BACKUP_REPOSITORY, FIRST_BACKUP, PGBACKREST
from tasks.backup_files import BACKUP_FILES, BACKUP_SOURCE
from tasks.certificates import CA_TRUST
from tasks.coturn import COTURN
from tasks.database import SYNAPSE_DATABASE
from tasks.etcd import ETCD
from tasks.firewall import FIREWALL
from tasks.haproxy import HAPROXY
from tasks.hosts_file import HOSTS_FILE
from tasks.keepalived import KEEPALIVED
from tasks.livekit import LIVEKIT, LIVEKIT_JWT, LIVEKIT_REDIS
from tasks.minio import MINIO, MINIO_BUCKET
from tasks.monitoring import GRAFANA, MONITORING, NODE_EXPORTER, POSTGRES_EXPORTER
from tasks.patroni import PATRONI, PATRONI_CONFIG
from tasks.pgbouncer import DATABASE_ACCESS, PGBOUNCER
from tasks.playbook import playbook, playbook_healthy, requirements, run_playbook
from tasks.preflight import duplicate_hostnames, preflight
from tasks.synapse import ADMIN_USER, SYNAPSE

RUNBOOK = Runbook(
    "deploy",
    "Deploy the Matrix homeserver platform onto the servers of the inventory.",
    [
        Step(
            "preflight",
            "SSH, sudo, OS, clock, disk, python3, free ports, unique host names",
            preflight,
            gate=lambda result, _settings: duplicate_hostnames(result),
            live=True,
        ),
        FIREWALL.step(),
        CA_TRUST.step(),
        HOSTS_FILE.step(),
        NODE_EXPORTER.step(),
        ETCD.step(),
        PATRONI.step(),
        PATRONI_CONFIG.step(),
        PGBACKREST.step(),
        BACKUP_REPOSITORY.step(),
        PGBOUNCER.step(),
        SYNAPSE_DATABASE.step(),
        POSTGRES_EXPORTER.step(),
        DATABASE_ACCESS.step(),
        MINIO.step(),
        MINIO_BUCKET.step(),
        HAPROXY.step(),
        KEEPALIVED.step(),
        COTURN.step(),
        LIVEKIT_REDIS.step(),
        LIVEKIT.step(),
        LIVEKIT_JWT.step(),
        SYNAPSE.step(),
        Step(
            "synapse-playbook",
            "Synapse, workers, Element and Ketesa via matrix-docker-ansible-deploy (playbook mode)",
            run_playbook,
            groups=("synapse",),
            check=playbook_healthy,
            applies=playbook,
            requires=requirements,
        ),
        ADMIN_USER.step(),
        BACKUP_SOURCE.step(),
        BACKUP_FILES.step(),
        FIRST_BACKUP.step(),
        MONITORING.step(),
        GRAFANA.step(),
    ],
)

if __name__ == "__main__":
    sys.exit(RUNBOOK.main())
