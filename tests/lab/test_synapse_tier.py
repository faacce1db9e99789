"""Synapse (native mode) in the lab, used the way clients use it: through the VIP over HTTPS."""

from __future__ import annotations

import json
import secrets
import shlex

import pytest

from core.settings import Settings
from lab.lab import Lab
from tasks import synapse
from tests.conftest import load_runbook
from tests.lab.conftest import patroni_cluster, ssh
from tests.lab.matrix_client import run_client

CONVERSATION = r"""
suffix = uuid.uuid4().hex[:8]
alice, bob = "alice" + suffix, "bob" + suffix
register(alice); register(bob)
a, b = login(alice), login(bob)
room = call("POST", "/_matrix/client/v3/createRoom", {"invite": ["@%s:lab.example" % bob]}, a)["room_id"]
text = "hello from " + alice
call("PUT", "/_matrix/client/v3/rooms/%s/send/m.room.message/%s" % (room, suffix),
     {"msgtype": "m.text", "body": text}, a)
call("POST", "/_matrix/client/v3/join/" + room, {}, b)
messages = call("GET", "/_matrix/client/v3/rooms/%s/messages?dir=b&limit=20" % room, token=b)["chunk"]
synced = call("GET", "/_matrix/client/v3/sync?timeout=0", token=b)["rooms"]["join"]
content = b"media probe " + suffix.encode()
uri = call("POST", "/_matrix/media/v3/upload?filename=probe.txt", token=a, raw=content,
           content_type="text/plain")
uri = json.loads(uri)["content_uri"]
server, media_id = uri[len("mxc://"):].split("/")
request = urllib.request.Request(base + "/_matrix/client/v1/media/download/%s/%s" % (server, media_id))
request.add_header("Authorization", "Bearer " + b)
downloaded = urllib.request.urlopen(request, timeout=30).read()
print(json.dumps({"room": room, "bodies": [m["content"].get("body") for m in messages if m["type"] == "m.room.message"],
                  "sent": text, "media_ok": downloaded == content, "synced": room in synced}))
"""


@pytest.fixture(scope="module")
def conversation(deployed: None, lab: Lab, lab_settings: Settings) -> dict:
    return run_client(lab, lab_settings, CONVERSATION)


def test_client_versions_through_the_vip(deployed: None, lab: Lab) -> None:
    program = (
        "import json, urllib.request; "
        "print(json.load(urllib.request.urlopen('https://chat.lab.example/_matrix/client/versions'))['versions'][-1])"
    )
    assert ssh(lab, "coturn2", f'python3 -c "{program}"').stdout.strip().startswith("v1.")


def test_a_message_sent_by_one_user_is_read_by_another(conversation: dict) -> None:
    assert conversation["sent"] in conversation["bodies"]


def test_media_uploaded_is_downloaded_intact(conversation: dict) -> None:
    assert conversation["media_ok"] is True


def test_sync_shows_the_joined_room(conversation: dict) -> None:
    assert conversation["synced"] is True


# Runs on monitoring1 (Prometheus's host): fetches every given URL, prints status or error.
FETCH = r"""
import json, sys, urllib.request
answers = {}
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answers[url] = [answer.status, answer.read().decode()]
    except Exception as error:
        answers[url] = [None, str(error)]
print(json.dumps(answers))
"""


def fetch(lab: Lab, host: str, urls: list[str]) -> dict[str, list]:
    out = ssh(lab, host, "python3 -c " + shlex.quote(FETCH) + " " + " ".join(shlex.quote(u) for u in urls)).stdout
    return json.loads(out)


def servlets(metrics: str) -> dict[str, float]:
    """Requests each servlet of a process received, from its Prometheus text."""
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("synapse_http_server_requests_received_total{"):
            labels, value = line.rsplit(" ", 1)
            servlet = labels.split('servlet="', 1)[1].split('"', 1)[0]
            counts[servlet] = counts.get(servlet, 0) + float(value)
    return counts


def test_every_worker_answers_health_and_metrics(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    ip = lab_settings.members("synapse")[0].private_ip
    processes = synapse.workers(lab_settings)
    assert len(processes) == 7
    metrics = [f"http://{ip}:{port}/_synapse/metrics" for port in [9100, *(w.metrics_port for w in processes)]]
    health = [f"http://{ip}:{w.http_port}/health" for w in processes if not w.replication]
    answers = fetch(lab, "monitoring1", metrics)  # Prometheus's host may scrape every process
    # Only HAProxy may reach the listeners (the firewall matrix); event persisters take replication on
    # loopback only: health asked on the Synapse host itself.
    replication = [f"http://127.0.0.1:{w.http_port}/health" for w in processes if w.replication]
    answers |= fetch(lab, "synapse1", health + replication)
    assert {url: status for url, (status, _) in answers.items()} == dict.fromkeys(answers, 200)
    assert all("synapse_http_server_requests_received_total" in answers[url][1] for url in metrics)


def test_haproxy_sends_requests_to_the_workers_that_serve_them(
    conversation: dict, lab: Lab, lab_settings: Settings
) -> None:
    ip = lab_settings.members("synapse")[0].private_ip
    by_worker = {w.name: f"http://{ip}:{w.metrics_port}/_synapse/metrics" for w in synapse.workers(lab_settings)}
    answers = fetch(lab, "monitoring1", list(by_worker.values()))
    served = {name: servlets(answers[url][1]) for name, url in by_worker.items()}
    assert served["sync1"].get("SyncRestServlet", 0) + served["sync2"].get("SyncRestServlet", 0) >= 1, served
    assert served["generic1"].get("LoginRestServlet", 0) >= 2, served["generic1"]
    assert served["generic1"].get("RoomSendEventRestServlet", 0) >= 1, served["generic1"]
    assert sum(count for servlet, count in served["media1"].items() if "Upload" in servlet) >= 1, served["media1"]


def test_a_rerun_restarts_no_synapse_process(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    units = ["synapse.service", *(synapse.worker_unit(w.name) for w in synapse.workers(lab_settings))]
    show = "systemctl show -p MainPID --value " + " ".join(units)
    before = ssh(lab, "synapse1", show).stdout.split()
    assert len(before) == len(units) and "0" not in before
    assert load_runbook("deploy").RUNBOOK.main(["--lab"]) == 0
    assert ssh(lab, "synapse1", show).stdout.split() == before


def test_the_room_is_on_a_patroni_replica(conversation: dict, lab: Lab) -> None:
    """Synapse wrote through PgBouncer to the primary; a streaming replica has the events."""
    cluster = patroni_cluster(lab)
    replica = next(m["name"] for m in cluster["members"] if m["role"] != "leader")
    query = f"SELECT count(*) FROM events WHERE room_id = '{conversation['room']}' AND type = 'm.room.message'"
    count = ssh(lab, replica, f'sudo -u postgres psql -XAtq -d synapse -c "{query}"').stdout.strip()
    assert count == "1"


DIRECTORY = r"""
suffix = uuid.uuid4().hex[:8]
owner = "carol" + suffix
register(owner)
token = login(owner)
public = call("POST", "/_matrix/client/v3/createRoom",
              {"visibility": "public", "preset": "public_chat", "room_alias_name": "public" + suffix,
               "name": "public " + suffix}, token)["room_id"]
# Published after creation: joinable by anyone (the directory lists only such rooms), not listed at first.
later = call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "later " + suffix},
             token)["room_id"]
call("PUT", "/_matrix/client/v3/directory/list/room/" + later, {"visibility": "public"}, token)
listed = call("GET", "/_matrix/client/v3/publicRooms?limit=500", token=token)["chunk"]
print(json.dumps({"public": public, "later": later, "listed": [r["room_id"] for r in listed],
                  "visibility": call("GET", "/_matrix/client/v3/directory/list/room/" + later)["visibility"]}))
"""


def test_rooms_are_published_to_the_directory(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    """synapse.room_directory: everyone (the lab's default): a public room is listed, and so is one published later."""
    answer = run_client(lab, lab_settings, DIRECTORY)
    assert answer["public"] in answer["listed"] and answer["later"] in answer["listed"]
    assert answer["visibility"] == "public"


def test_the_base_domain_says_where_the_homeserver_is(deployed: None, lab: Lab) -> None:
    """A client or server that knows only the server name finds the homeserver, with no DNS (air gap)."""
    program = (
        "import json, urllib.request\n"
        "for kind in ('client', 'server'):\n"
        "    answer = urllib.request.urlopen('https://lab.example/.well-known/matrix/' + kind, timeout=10)\n"
        "    print(json.dumps([answer.headers['Access-Control-Allow-Origin'], json.load(answer)]))\n"
    )
    out = ssh(lab, "coturn2", f"python3 -c {shlex.quote(program)}").stdout.splitlines()
    client, server = (json.loads(line) for line in out)
    assert client == ["*", {"m.homeserver": {"base_url": "https://chat.lab.example"}}]
    assert server == ["*", {"m.server": "chat.lab.example:443"}]


# Uploads through the media worker, each one's HTTP status.
UPLOADS = r"""
import urllib.error
def uploads(token, count):
    codes = []
    for i in range(count):
        try:
            call("POST", "/_matrix/media/v3/upload?filename=n.txt", token=token, raw=b"n%d" % i,
                 content_type="text/plain")
            codes.append(200)
        except urllib.error.HTTPError as error:
            codes.append(error.code)
    return codes
"""


def test_restarting_pgbouncer_on_the_pgbouncer_hosts_fails_no_request_afterwards(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    """Synapse's processes keep their connections in their host's own PgBouncer, which no pgbouncer host's restart
    closes. Connected to the pgbouncer hosts directly, each pooled connection cost one HTTP 500 at its next use
    (4 of 20 uploads after one restart: the media worker's)."""
    user = "pooled" + secrets.token_hex(4)
    token, warm = run_client(
        lab, lab_settings, UPLOADS + f"register({user!r}); t = login({user!r}); print(json.dumps([t, uploads(t, 5)]))"
    )
    assert warm == [200] * 5
    for host in lab_settings.members("pgbouncer"):
        ssh(lab, host.name, "sudo systemctl restart pgbouncer")
    assert run_client(lab, lab_settings, UPLOADS + f"print(json.dumps(uploads({token!r}, 20)))") == [200] * 20
