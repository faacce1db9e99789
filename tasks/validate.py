"""The post-deployment checklist (runbooks/validate.py): what a user and an operator would try.

The client checks run on the controller as a user would: through the VIP, as the admin
user (password from the secrets file), logging in, sending and reading back a message,
uploading and downloading a file, then asking Synapse for TURN credentials and
allocating a relay with them on every TURN URI it hands out, over UDP and TCP. Checks
that need a vantage point inside the site (the admin allowlist) run on inventory hosts.
Each check returns its verdict with the evidence; none stops the others.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
import uuid
from dataclasses import asdict, dataclass
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import quote, urlsplit

from nornir.core.task import AggregatedResult, Result, Task

from core.errors import HostError
from core.matrix import MatrixClient, MatrixError
from core.settings import HostInfo, Settings
from core.turn import TurnClient, TurnError
from tasks.drills import anchor
from tasks.livekit import HTTP_PORT as LIVEKIT_HTTP_PORT
from tasks.remote import Expectation, run

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MEDIA_BYTES = 64 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    evidence: str


def client(settings: Settings, port: int = 443, timeout: float = 30.0) -> MatrixClient:
    fqdn = settings.config.homeserver_fqdn
    return MatrixClient(settings.vip, fqdn, settings.ca.cert_path, port=port, timeout=timeout)


def timed(started: float) -> str:
    return f"{time.monotonic() - started:.2f} s"


def message_round_trip(matrix: MatrixClient) -> Check:
    """A new private room, one message sent and read back with /messages; the room is left and forgotten."""
    started = time.monotonic()
    room = matrix.call("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "name": "validate.py"})
    room_path = f"/_matrix/client/v3/rooms/{quote(room['room_id'])}"
    try:
        body = f"validate.py {uuid.uuid4()}"
        sent = matrix.call(
            "PUT", f"{room_path}/send/m.room.message/{uuid.uuid4().hex}", {"msgtype": "m.text", "body": body}
        )
        chunk = matrix.call("GET", f"{room_path}/messages?dir=b&limit=10")["chunk"]
        found = any(e.get("event_id") == sent["event_id"] and e.get("content", {}).get("body") == body for e in chunk)
    finally:
        matrix.call("POST", f"{room_path}/leave", {})
        matrix.call("POST", f"{room_path}/forget", {})
    if not found:
        return Check("send/receive", FAIL, f"{sent['event_id']} was sent but /messages did not return it")
    return Check("send/receive", PASS, f"{sent['event_id']} sent to a new room and read back in {timed(started)}")


def media_round_trip(matrix: MatrixClient) -> Check:
    started = time.monotonic()
    data = os.urandom(MEDIA_BYTES)
    mxc = matrix.upload(data, "validate.bin")
    back = matrix.download(mxc)
    digest = hashlib.sha256(data).hexdigest()[:16]
    if back != data:
        return Check("media", FAIL, f"{mxc}: uploaded {len(data)} bytes, downloaded {len(back)} that differ")
    return Check(
        "media", PASS, f"{mxc}: {len(data)} bytes up and down, identical (sha256 {digest}…) in {timed(started)}"
    )


def turn_allocations(matrix: MatrixClient, ca: Path) -> list[Check]:
    """Synapse's TURN credentials, used on each URI it hands out, per transport (TLS verified against `ca`)."""
    answer = matrix.call("GET", "/_matrix/client/v3/voip/turnServer")
    uris = answer.get("uris", [])
    if not uris:
        return [Check("turn", FAIL, "Synapse hands out no TURN URIs (turn_uris in homeserver.yaml)")]
    credential = (answer["username"], answer["password"])
    checks = []
    for name, scheme, transport in (("udp", "turn:", "udp"), ("tcp", "turn:", "tcp"), ("tls", "turns:", "tcp")):
        chosen = [u for u in uris if u.startswith(scheme) and f"transport={transport}" in u]
        if not chosen:
            checks.append(Check(f"turn {name}", FAIL, f"no {scheme} URI with transport={transport} among {uris}"))
            continue
        relays, failures = [], []
        for uri in chosen:
            target = urlsplit(uri.replace(scheme, "turn://", 1))
            tls = ssl.create_default_context(cafile=ca) if scheme == "turns:" else None
            client = TurnClient(target.hostname or "", target.port or 3478, transport, tls=tls)
            try:
                relays.append(f"{target.hostname} → relay {client.allocate(lambda: credential)}")
            except TurnError as exc:
                failures.append(f"{uri}: {exc}")
        verdict = FAIL if failures else PASS
        checks.append(Check(f"turn {name}", verdict, "; ".join(failures or relays)))
    return checks


def client_checks(task: Task, settings: Settings) -> Result:
    """Login, a message, a file and TURN relays, through the VIP as the admin user."""
    if not anchor(task, settings):
        return Result(host=task.host, result=[])
    matrix = client(settings)
    started = time.monotonic()
    user = settings.config.synapse.admin_user
    try:
        user_id = matrix.login(user, settings.secrets["synapse_admin_password"])
    except MatrixError as exc:
        skipped = [Check(name, SKIP, "no session: the login failed") for name in ("send/receive", "media", "turn")]
        return Result(host=task.host, result=[asdict(c) for c in [Check("login", FAIL, str(exc)), *skipped]])
    checks = [Check("login", PASS, f"{user_id} logged in through the VIP {settings.vip} in {timed(started)}")]
    try:
        for name, check in (("send/receive", message_round_trip), ("media", media_round_trip)):
            try:
                checks.append(check(matrix))
            except MatrixError as exc:
                checks.append(Check(name, FAIL, str(exc)))
        try:
            checks += turn_allocations(matrix, settings.ca.cert_path)
        except MatrixError as exc:
            checks.append(Check("turn", FAIL, str(exc)))
    finally:
        try:
            matrix.logout()  # removes the session's device again
        except MatrixError as exc:
            checks.append(Check("logout", FAIL, str(exc)))
    return Result(host=task.host, result=[asdict(c) for c in checks])


FETCH_STATUS = (
    "python3 - {url} <<'EOF'\n"
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
    "except urllib.error.HTTPError as error:\n"
    "    print(error.code)\n"
    "except OSError as error:\n"
    "    print('no answer:', error)\n"
    "EOF"
)


def allowed(settings: Settings, host: HostInfo) -> bool:
    return any(ip_address(host.private_ip) in network for network in settings.config.synapse.admin_allowlist)


def admin_allowlist(task: Task, settings: Settings) -> Result:
    """The admin UI and API through the VIP from a host inside synapse.admin_allowlist and one outside (403)."""
    if not anchor(task, settings):
        return Result(host=task.host, result=[])
    base = f"https://{settings.config.homeserver_fqdn}"
    paths = {"/_synapse/admin/v1/server_version": "200"}
    checks = []
    if settings.config.synapse.mode == "playbook":
        paths[f"{settings.config.synapse.admin_path.rstrip('/')}/"] = "200"
    else:  # the UI's path would answer 404 from Synapse: that is no admin UI, and no PASS
        checks.append(Check("admin UI", SKIP, "not deployed in this mode (synapse.mode: native runs no Ketesa)"))
    hosts = list(settings.hosts.values())
    for inside, label in ((True, "admin, allowed address"), (False, "admin, other address")):
        source = next((h for h in hosts if allowed(settings, h) == inside), None)
        if source is None:
            where = "inside" if inside else "outside"
            checks.append(Check(label, SKIP, f"no inventory host {where} synapse.admin_allowlist to ask from"))
            continue
        seen, good = [], True
        for path, answer in paths.items():
            wanted = answer if inside else "403"
            what = Expectation(f"the status of {base}{path}")
            status = run(task, FETCH_STATUS.format(url=base + path), host=source.name, what=what).stdout.strip()
            good &= status == wanted
            seen.append(f"{path} {status} (expected {wanted})")
        evidence = f"from {source.name} ({source.private_ip}): {', '.join(seen)}"
        checks.append(Check(label, PASS if good else FAIL, evidence))
    return Result(host=task.host, result=[asdict(c) for c in checks])


def federation(task: Task, settings: Settings) -> Result:
    """Federation on: the federation API answers on 8448 through the VIP. Off: 8448 is closed."""
    if not anchor(task, settings):
        return Result(host=task.host, result=[])
    on = settings.config.synapse.federation
    # Off, the firewall drops 8448: silence is the expected answer, and a few seconds show it.
    matrix = client(settings, port=8448, timeout=30 if on else 5)
    try:
        status, body = matrix.request("GET", "/_matrix/federation/v1/version")
        answer = f"HTTP {status} {body[:80].decode(errors='replace')}"
    except MatrixError as exc:
        status, answer = 0, str(exc)
    if on:
        check = Check("federation", PASS if status == 200 else FAIL, f"8448 /_matrix/federation/v1/version: {answer}")
    else:
        verdict = FAIL if status else PASS
        check = Check(
            "federation", verdict, f"federation off (synapse.federation): 8448 {answer if status else 'closed'}"
        )
    return Result(host=task.host, result=[asdict(check)])


def group_call(task: Task, settings: Settings) -> Result:
    """LiveKit answers on every SFU host (the JWT service beside it is checked by its own deploy gate)."""
    if not anchor(task, settings):
        return Result(host=task.host, result=[])
    checks = []
    for host in settings.members("livekit"):
        url = f"http://{host.private_ip}:{LIVEKIT_HTTP_PORT}/"
        status = run(task, FETCH_STATUS.format(url=url), host=host.name, what=Expectation(f"the status of {url}"))
        answer = status.stdout.strip()
        checks.append(Check(f"livekit {host.name}", PASS if answer == "200" else FAIL, f"{url}: {answer}"))
    return Result(host=task.host, result=[asdict(c) for c in checks])


def checks_of(result: AggregatedResult) -> list[Check]:
    return [Check(**c) for multi in result.values() if not multi.failed for c in multi[0].result or []]


def failed_checks(result: AggregatedResult, settings: Settings) -> list[str]:
    return [f"{c.name}: {c.evidence}" for c in checks_of(result) if c.verdict == FAIL]


def checks_report(result: AggregatedResult, settings: Settings) -> str:
    return "\n".join(f"  {c.verdict}  {c.name}: {c.evidence}" for c in checks_of(result))


def clock(task: Task, settings: Settings) -> Result:
    """The host's clock against the controller's (midpoint of the command), and its NTP state."""
    before = time.time()
    out = run(
        task,
        "date +%s.%N; timedatectl show -p NTPSynchronized --value 2>/dev/null || echo unknown",
        what=Expectation("the host's time and NTP state"),
    )
    skew = float(out.stdout.split()[0]) - (before + time.time()) / 2
    synced = (out.stdout.split()[1:] or ["unknown"])[0]
    limit = settings.config.preflight.max_clock_skew_seconds
    if abs(skew) > limit:
        raise HostError(
            f"{task.host.name}: clock {skew:+.2f} s off the controller's (allowed {limit:g} s), NTP synchronised: "
            f"{synced}; fix time sync on the host (chrony or systemd-timesyncd) against the site's time server"
        )
    return Result(host=task.host, result={"skew": skew, "ntp": synced})


def clocks_report(result: AggregatedResult, settings: Settings) -> str:
    """One line for all hosts: the largest difference and how many say NTP is synchronised."""
    facts = {name: multi[0].result for name, multi in result.items() if isinstance(multi[0].result, dict)}
    if not facts:
        return ""
    worst = max(facts, key=lambda name: abs(facts[name]["skew"]))
    synced = sorted(name for name, fact in facts.items() if fact["ntp"] == "yes")
    return (
        f"  largest clock difference {abs(facts[worst]['skew']):.2f} s ({worst}), allowed "
        f"{settings.config.preflight.max_clock_skew_seconds:g} s; NTP synchronised on {len(synced)} of {len(facts)}"
    )
