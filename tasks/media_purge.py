"""`maintenance.py purge-media`: Synapse's media retention applied now, not at its next hourly pass.

Synapse applies `synapse.retention` to media once an hour on its media worker, the first
time an hour after it starts. When a volume fills, an operator wants the space back now,
and wants to see what went: this runs the same deletions through Synapse's admin API on
the Synapse host itself (its own listeners, no HAProxy or admin allowlist in the way),
with the lifetimes of the config: other servers' media not accessed within
`remote_media` and this server's uploads not accessed within `local_media` (profile
pictures, quarantined and protected media kept, as Synapse's own pass keeps them). A
lifetime of null deletes nothing of that kind. The admin password travels on stdin; the
access token lives only inside the remote process and is logged out again.
"""

from __future__ import annotations

import json
import shlex

from nornir.core.task import AggregatedResult, Result, Task

from core.config import duration_seconds
from core.errors import HostError
from core.settings import Settings
from core.workers import of_kind
from tasks.remote import Expectation, Mode, mode, run
from tasks.synapse import HTTP_PORT, native, workers

# Runs on the Synapse host: argv = login URL, media URL, user, then the lifetime in seconds of each of KINDS
# (0: kept). Prints what Synapse deleted of each kind as JSON; on an error {"error": …, "done": what it had
# deleted by then} and exits 1.
PURGE = r"""
import json, sys, time, urllib.error, urllib.request
login, media, user, remote, local = sys.argv[1:6]
password = sys.stdin.readline().rstrip("\n")
done = {}

def fail(message):
    print(json.dumps({"error": message, "done": done}))
    raise SystemExit(1)

def call(base, method, path, token=None, body=None):
    request = urllib.request.Request(base + path, data=json.dumps(body or {}).encode(), method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        detail = error.read()[:200].decode(errors="replace")
        fail("%s %s: HTTP %s %s" % (method, path.split("?")[0], error.code, detail))
    except OSError as error:
        fail("%s %s: %s" % (method, base + path.split("?")[0], error))

token = call(login, "POST", "/_matrix/client/v3/login", body={
    "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password,
    "initial_device_display_name": "maintenance.py purge-media"})["access_token"]
try:
    now = int(time.time() * 1000)
    if int(remote):
        before = now - int(remote) * 1000
        done["remote"] = call(media, "POST", "/_synapse/admin/v1/purge_media_cache?before_ts=%d" % before,
                              token)["deleted"]
    if int(local):
        before = now - int(local) * 1000
        done["local"] = call(media, "POST", "/_synapse/admin/v1/media/delete?keep_profiles=true&before_ts=%d" % before,
                             token)["total"]
finally:
    call(login, "POST", "/_matrix/client/v3/logout", token)
print(json.dumps(done))
"""


# The kinds of media a purge deletes, as Synapse names them in its answers, and for the operator.
KINDS = {"remote": "copies of other servers' media", "local": "uploads of this server's users"}


def lifetimes(settings: Settings) -> dict[str, str | None]:
    """Each kind's lifetime from synapse.retention (None: kept for ever)."""
    retention = settings.config.synapse.retention
    return {"remote": retention.remote_media, "local": retention.local_media}


def media_url(settings: Settings, ip: str) -> str:
    """Where the admin media API answers: the media worker when there is one (the main process then has the
    media repository off), else the main process."""
    media = of_kind(workers(settings), "media")
    return f"http://{ip}:{media[0].http_port if media else HTTP_PORT}"


def purge_media(task: Task, settings: Settings) -> Result:
    """Delete the media older than the configured lifetimes now, through Synapse's admin API on its own host.

    The result maps each kind with a lifetime to how many items Synapse deleted."""
    if not native(settings):
        note = "playbook mode: Synapse applies synapse.retention itself, hourly; run its admin API to purge now"
        return Result(host=task.host, result={"note": note})
    wanted = {kind: lifetime for kind, lifetime in lifetimes(settings).items() if lifetime}
    if not wanted:
        return Result(host=task.host, result={"note": "synapse.retention keeps all media: nothing to purge"})
    if mode(task) is not Mode.APPLY:  # Synapse's admin API has no dry run: say what an apply would do
        doing = " and ".join(f"{kind} media unused for {lifetime}" for kind, lifetime in wanted.items())
        return Result(host=task.host, changed=True, diff=f"delete {doing}")
    ip = settings.hosts[task.host.name].private_ip
    seconds = [duration_seconds(wanted[kind]) if kind in wanted else 0 for kind in KINDS]
    argv = [f"http://{ip}:{HTTP_PORT}", media_url(settings, ip), settings.config.synapse.admin_user, *map(str, seconds)]
    out = run(
        task,
        f"python3 -c {shlex.quote(PURGE)} {' '.join(shlex.quote(a) for a in argv)}",
        stdin=settings.secrets["synapse_admin_password"] + "\n",
        what=Expectation("one JSON line: how many remote copies and local uploads Synapse deleted"),
        ok_codes=(0, 1),
        timeout=900,
    ).stdout.strip()
    try:
        answer = json.loads(out.splitlines()[-1])
    except (IndexError, ValueError):
        answer = {"error": f"no JSON answer from the purge script: {out[-200:]!r}", "done": {}}
    if "error" in answer:
        gone = ", ".join(f"{count} {KINDS[kind]}" for kind, count in answer["done"].items())
        raise HostError(
            f"{task.host.name}: media purge: {answer['error']} (deleted before that: {gone or 'nothing'}); check "
            "that Synapse runs (systemctl status synapse) and that synapse.admin_user's password in the secrets "
            "file is current"
        )
    return Result(host=task.host, result=answer, changed=any(answer.values()))


def purge_table(result: AggregatedResult, settings: Settings) -> str:
    """Per Synapse host: what was deleted of each kind, or why nothing ran."""
    kept = lifetimes(settings)
    lines = []
    for name, host in result.items():
        found = host[0].result
        if not isinstance(found, dict):  # plan and check mode, or the host failed (its message is shown)
            continue
        if "note" in found:
            lines.append(f"  {name}: {found['note']}")
            continue
        for kind, label in KINDS.items():
            what = "kept (no lifetime set)" if kind not in found else f"{found[kind]} deleted (unused for {kept[kind]})"
            lines.append(f"  {name}: {label}: {what}")
    return "\n".join(lines)
