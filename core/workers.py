"""The Synapse worker processes of a deployment, named and numbered from the sizing.

Native mode runs exactly these (one `synapse-worker@<name>` unit each); HAProxy routes
to their HTTP listeners and Prometheus scrapes their metrics listeners. Port ranges
follow the playbook's numbering (roles/custom/matrix-synapse/defaults/main.yml) so a
worker type listens on the same ports in both modes. Replication listeners bind to the
loopback address: every worker lives on the Synapse host, so replication never leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.sizing import Workers

REPLICATION_PORT = 9093  # the main process's HTTP replication listener
REDIS_PORT = 6380  # Synapse's own Redis on the Synapse host (6379 is LiveKit's)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Kind:
    """One worker type: how many, what its HTTP listener serves, where its ports start."""

    name: str
    count_field: str  # the Workers field with the count
    resources: tuple[str, ...]  # Synapse listener resources on its HTTP port
    http_start: int
    metrics_start: int


# Event persisters serve only replication (other processes send them events to
# persist); federation senders serve only /health. The rest serve traffic HAProxy routes.
KINDS = (
    Kind("sync", "sync", ("client",), 28211, 29211),
    Kind("generic", "generic", ("client", "federation"), 18111, 19111),
    Kind("federation_sender", "federation_sender", ("health",), 18411, 19400),
    Kind("event_persister", "event_persister", ("replication",), 25011, 19211),
    Kind("media", "media_repository", ("media",), 18551, 19551),
)


@dataclass(frozen=True)
class Worker:
    name: str  # worker_name, the unit instance and the config file's name
    kind: str
    resources: tuple[str, ...]
    http_port: int
    metrics_port: int

    @property
    def replication(self) -> bool:
        """Stream writers take replication requests on their HTTP listener (bound to loopback)."""
        return "replication" in self.resources


def plan(workers: Workers) -> list[Worker]:
    """Every worker with its ports, in a stable order (names are kind + 1-based index)."""
    found = []
    for kind in KINDS:
        for index in range(getattr(workers, kind.count_field)):
            found.append(
                Worker(
                    name=f"{kind.name}{index + 1}",
                    kind=kind.name,
                    resources=kind.resources,
                    http_port=kind.http_start + index,
                    metrics_port=kind.metrics_start + index,
                )
            )
    return found


def playbook_counts(workers: Workers, federation: bool) -> dict[str, int]:
    """Our sizing in the playbook's specialized-workers preset (its matrix_synapse_workers_<key>).

    Sync workers as sized; the generic share as room workers (room-scoped client and
    federation requests); one client reader and, with federation, one federation reader
    for the rest. Pusher, appservice, user-directory, background and the single-writer
    streams keep the preset's one each.
    """
    return {
        "sync_workers_count": workers.sync,
        "room_workers_count": workers.generic,
        "client_reader_workers_count": 1,
        "federation_reader_workers_count": 1 if federation else 0,
        "federation_sender_workers_count": workers.federation_sender,
        "stream_writer_events_stream_workers_count": workers.event_persister,
        "media_repository_workers_count": workers.media_repository,
    }


# The playbook's single-writer streams after the event persisters (roles/custom/
# matrix-synapse/defaults/main.yml, matrix_synapse_workers_stream_writers), all one index.
PLAYBOOK_STREAMS = (
    "typing",
    "to_device",
    "account_data",
    "receipts",
    "presence",
    "push_rules",
    "device_lists",
    "quarantined_media_changes",
)


def playbook_plan(workers: Workers, federation: bool) -> list[Worker]:
    """The workers the playbook creates for our counts, with their metrics ports.

    Mirrors roles/custom/matrix-synapse/tasks/synapse/workers/init.yml at the pinned
    commit: ids "<type>-<index>", ports = the type's range start + index (one index
    across all stream writers), in the playbook's order.
    """
    counts = playbook_counts(workers, federation)
    found: list[Worker] = []

    def add(count: int, prefix: str, kind: str, http_start: int, metrics_start: int) -> None:
        for index in range(count):
            http = http_start + index if http_start else 0
            found.append(Worker(f"{prefix}-{index}", kind, (), http, metrics_start + index))

    add(counts["room_workers_count"], "room-worker", "room", 28111, 29111)
    add(counts["sync_workers_count"], "sync-worker", "sync", 28211, 29211)
    add(counts["client_reader_workers_count"], "client-reader", "client_reader", 28311, 29311)
    add(counts["federation_reader_workers_count"], "federation-reader", "federation_reader", 28411, 29411)
    streams = ["events"] * counts["stream_writer_events_stream_workers_count"] + list(PLAYBOOK_STREAMS)
    for index, stream in enumerate(streams):
        found.append(Worker(f"stream-writer-{index}-{stream}", "stream_writer", (), 20011 + index, 19211 + index))
    add(counts["federation_sender_workers_count"], "federation-sender", "federation_sender", 0, 19400)
    add(1, "pusher", "pusher", 0, 19200)
    add(1, "appservice", "appservice", 0, 19300)
    add(1, "user-dir", "user_dir", 18661, 19661)
    add(counts["media_repository_workers_count"], "media-repository", "media_repository", 18551, 19551)
    add(1, "background", "background", 0, 19700)
    return found


def of_kind(workers: list[Worker], kind: str) -> list[Worker]:
    return [w for w in workers if w.kind == kind]


def port_ranges(workers: Workers) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """(label, first, last, the groups that reach them) of each kind's HTTP and metrics ports, for the port table:
    HAProxy reaches what it routes, Prometheus the metrics; replication (on loopback) and a federation
    sender's /health stay on the host."""
    ranges = []
    for kind in KINDS:
        count = getattr(workers, kind.count_field)
        if count:
            label = kind.name.replace("_", "-")
            reached = () if {"replication", "health"} & set(kind.resources) else ("haproxy",)
            ranges.append((f"synapse-{label}", kind.http_start, kind.http_start + count - 1, reached))
            ranges.append(
                (f"synapse-{label}-metrics", kind.metrics_start, kind.metrics_start + count - 1, ("monitoring",))
            )
    return ranges


# Request paths the workers serve, verbatim from Synapse's docs/workers.md (develop,
# 2026-07, v1.157): HAProxy sends these to the worker pools and everything else to the
# main process. Left with the main process on purpose: the GET-only paths (pushrules,
# tags, account_data, presence, admin users v2; HAProxy would need a method match and
# they are light), room pagination (/messages must stay on one instance per room), SSO,
# and the stream writers' endpoints (typing, to_device, receipts, …: main writes those).
SYNC_PATHS = (
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
)
FEDERATION_PATHS = (
    r"^/_matrix/federation/v1/version$",
    r"^/_matrix/federation/v1/event/",
    r"^/_matrix/federation/v1/state/",
    r"^/_matrix/federation/v1/state_ids/",
    r"^/_matrix/federation/v1/backfill/",
    r"^/_matrix/federation/v1/get_missing_events/",
    r"^/_matrix/federation/v1/publicRooms",
    r"^/_matrix/federation/v1/query/",
    r"^/_matrix/federation/v1/make_join/",
    r"^/_matrix/federation/v1/make_leave/",
    r"^/_matrix/federation/(v1|v2)/send_join/",
    r"^/_matrix/federation/(v1|v2)/send_leave/",
    r"^/_matrix/federation/v1/make_knock/",
    r"^/_matrix/federation/v1/send_knock/",
    r"^/_matrix/federation/(v1|v2)/invite/",
    r"^/_matrix/federation/v1/event_auth/",
    r"^/_matrix/federation/v1/timestamp_to_event/",
    r"^/_matrix/federation/v1/exchange_third_party_invite/",
    r"^/_matrix/federation/v1/user/devices/",
    r"^/_matrix/key/v2/query",
    r"^/_matrix/federation/v1/hierarchy/",
    r"^/_matrix/federation/v1/send/",
)
CLIENT_PATHS = (
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/unstable/im.nheko.summary/summary/.*$",
    r"^/_matrix/client/v1/room_summary/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/account/3pid$",
    r"^/_matrix/client/(r0|v3|unstable)/account/whoami$",
    r"^/_matrix/client/(r0|v3|unstable)/account/deactivate$",
    r"^/_matrix/client/(r0|v3)/delete_devices$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/devices(/|$)",
    r"^/_matrix/client/versions$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/capabilities$",
    r"^/_matrix/client/(r0|v3|unstable)/notifications$",
    r"^/_synapse/admin/v1/rooms/[^/]+$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/query$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/claim$",
    r"^/_matrix/client/(r0|v3|unstable)/room_keys/",
    r"^/_matrix/client/(r0|v3|unstable)/keys/upload",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/device_signing/upload$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/signatures/upload$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login$",
    r"^/_matrix/client/(r0|v3|unstable)/register$",
    r"^/_matrix/client/(r0|v3|unstable)/register/available$",
    r"^/_matrix/client/v1/register/m.login.registration_token/validity$",
    r"^/_matrix/client/(r0|v3|unstable)/password_policy$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/join/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/knock/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
    r"^/_matrix/client/unstable/org.matrix.msc4140/delayed_events(/.*/restart)?$",
)
MEDIA_PATHS = (
    r"^/_matrix/media/",
    r"^/_matrix/client/v1/media/",
    r"^/_matrix/federation/v1/media/",
    r"^/_synapse/admin/v1/purge_media_cache$",
    r"^/_synapse/admin/v1/room/.*/media.*$",
    r"^/_synapse/admin/v1/user/.*/media.*$",
    r"^/_synapse/admin/v1/media/.*$",
    r"^/_synapse/admin/v1/quarantine_media/.*$",
    r"^/_synapse/admin/v1/users/.*/media$",
)
