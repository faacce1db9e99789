"""Synapse's state compressor (native mode): state_groups_state kept from growing without bound.

Synapse stores room state as chains of deltas with a full snapshot every hundred steps;
busy rooms leave millions of rows in state_groups_state, the table that grows fastest
after events. synapse-auto-compressor (matrix-org's, pinned in the artifact cache like
Synapse's wheels, in a venv of its own) rewrites those chains into fewer rows while
Synapse runs, a chunk of state groups at a time, and remembers in the database where it
stopped. A timer runs it (`synapse.state_compression`); the run script takes a
PostgreSQL advisory lock first, so two runs never overlap wherever they start, and writes
each run's outcome for Prometheus (rows saved, chunks, state groups not compressed yet; the
StateCompressorNotRunning alert). Playbook mode has the playbook's own compressor role.
"""

from __future__ import annotations

from core import artifacts
from core.settings import Settings
from tasks.component import Component
from tasks.declaration import Context, File, Service, Venv, Wheels, template
from tasks.monitoring import TEXTFILE_DIR
from tasks.pooler import maintenance_database
from tasks.synapse import CONFIG, USER, native
from tasks.systemd import UNIT_DIR

ARTIFACT = "synapse-auto-compressor"
HOME = "/opt/synapse-state-compressor"
VENV, WHEELS = f"{HOME}/venv", f"{HOME}/wheels"
SCRIPT = "/usr/local/sbin/synapse-state-compressor"
UNIT, TIMER = "synapse-state-compressor.service", "synapse-state-compressor.timer"
STATE_DIRECTORY = "synapse-state-compressor"  # the unit's, under /var/lib: the run's metrics, written as synapse
STATE = f"/var/lib/{STATE_DIRECTORY}"
METRICS = "synapse-state-compressor.prom"
WRITTEN = f"{STATE}/{METRICS}"  # by the run, as synapse; the unit publishes it as root
PUBLISHED = f"{TEXTFILE_DIR}/{METRICS}"
LOCK_KEY = 0x53434D50  # "SCMP": the advisory lock of a run
REFUSED = 75  # EX_TEMPFAIL: another run holds the lock
LEVELS = "100,50,25"  # the compressor's suggested level sizes


def compressing(settings: Settings) -> bool:
    """used in native mode only; the playbook runs its own synapse-auto-compressor role"""
    return native(settings)


def script(context: Context) -> dict[str, object]:
    config = context.settings.config
    compression = config.synapse.state_compression
    return {
        "venv": VENV,
        "homeserver": CONFIG,
        "metrics": WRITTEN,
        "maintenance_database": maintenance_database(config),
        "lock_key": LOCK_KEY,
        "refused": REFUSED,
        "chunk_size": compression.chunk_size,
        "chunks": compression.chunks_per_run,
        "levels": LEVELS,
        "unit": UNIT,
        "timer": TIMER,
    }


def unit(_context: Context) -> dict[str, object]:
    return {"script": SCRIPT, "user": USER, "state": STATE_DIRECTORY, "metrics": WRITTEN, "textfile": PUBLISHED}


def timer(context: Context) -> dict[str, object]:
    return {
        "description": "Synapse state compression (matrix-platform)",
        "schedule": context.settings.config.synapse.state_compression.schedule,
        "unit": UNIT,
    }


def services(settings: Settings) -> tuple[Service, ...]:
    """The timer, stopped and disabled when synapse.state_compression is off (a run by hand still works)."""
    return (Service(TIMER, restart_on=(), running=settings.config.synapse.state_compression.enabled),)


STATE_COMPRESSOR = Component(
    "state-compressor",
    groups=("synapse",),
    summary="synapse-auto-compressor in its own venv, on a timer; one run at a time (advisory lock), metrics",
    after=("synapse",),  # the state tables exist once Synapse created its schema
    packages=("python3-venv", "python3-psycopg2", "python3-yaml"),
    venvs=(
        Venv(
            Wheels(ARTIFACT, WHEELS),
            "synapse_auto_compressor",
            "synapse-auto-compressor",
            lambda _settings: artifacts.manifest()[ARTIFACT].version,
            VENV,
        ),
    ),
    files=(
        File(SCRIPT, template("synapse/state-compressor.py.j2", script), mode=0o755),
        File(f"{UNIT_DIR}/{UNIT}", template("synapse/state-compressor.service.j2", unit)),
        File(f"{UNIT_DIR}/{TIMER}", template("backup/backup.timer.j2", timer)),
    ),
    services=services,
    applies=compressing,
)
