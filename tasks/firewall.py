"""Each server's firewall: nftables rules generated from the port table (core/ports.py).

Public ports (HTTPS, federation, TURN, LiveKit media) are open to everyone; every other
port of the host's groups only to the private networks; the rest is dropped. SSH is
accepted before anything else is decided, and new rules are applied with a timed
rollback that only a fresh SSH login from the controller cancels, so a wrong rule set
undoes itself instead of locking the operator out.

The rules live in their own table (`inet matrix_platform`), replaced atomically, so
tables of other software (Docker on the Synapse host) are left alone. A unit loads the
table at boot; `systemctl stop matrix-firewall` removes it.
"""

from __future__ import annotations

import hashlib
import shlex
from ipaddress import IPv4Network

from nornir.core.task import Result, Task

from core.connection import CONNECTION
from core.errors import HostError
from core.ports import PortUse, host_ports
from core.settings import Settings
from tasks.facts import read_ahead
from tasks.files import FileSpec, put_files, render
from tasks.packages import packages
from tasks.remote import Expectation, Mode, mode, run
from tasks.systemd import UNIT_DIR, service, unit_file

TABLE = "inet matrix_platform"
RULES = "/etc/matrix-platform/firewall.nft"
UNIT = "matrix-firewall.service"
ROLLBACK_UNIT = "matrix-firewall-rollback"
ROLLBACK_SECONDS = 60
PREVIOUS = "/run/matrix-platform/firewall.previous"


def port_set(uses: list[PortUse], proto: str) -> str:
    """`{ 80, 443, 49152-49172 }` for nft, or '' when there is none."""
    spans = sorted({(u.start, u.end) for u in uses if u.proto == proto})
    if not spans:
        return ""
    return "{ " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) + " }"


def ruleset(settings: Settings, host_name: str) -> dict[str, object]:
    """Template data of one host's rules."""
    host = settings.hosts[host_name]
    uses = [u for u in host_ports(settings.config, list(host.groups), host.port) if u.service != "ssh"]
    public = [u for u in uses if u.public]
    private = [u for u in uses if not u.public]
    networks = settings.defaults.data.private_networks
    vrrp_peers = [h.private_ip for h in settings.members("haproxy") if h.name != host_name]
    return {
        "ssh_port": host.port,
        "public_tcp": port_set(public, "tcp"),
        "public_udp": port_set(public, "udp"),
        "private_tcp": port_set(private, "tcp"),
        "private_udp": port_set(private, "udp"),
        "private_v4": ", ".join(str(n) for n in networks if isinstance(n, IPv4Network)),
        "private_v6": ", ".join(str(n) for n in networks if not isinstance(n, IPv4Network)),
        "vrrp_peers": ", ".join(vrrp_peers) if "haproxy" in host.groups else "",
    }


def live_digest_script() -> str:
    return f"nft list table {TABLE} 2>/dev/null | sed -n 's/^[[:space:]]*comment \"\\([0-9a-f]*\\)\".*/\\1/p'; true"


def apply_script(rules: str, rollback_seconds: int) -> str:
    """Save the live table, arm a rollback to it, then load `rules`.

    The saved table is listed numerically (`ICMPv6` as 58): a host without
    /etc/protocols cannot read protocol names back. Should the old table not load, the
    rollback removes the table rather than leave the host unreachable.
    """
    rollback = shlex.quote(ROLLBACK_UNIT)
    return (
        "set -e; mkdir -p /run/matrix-platform; "
        f"{{ echo 'table {TABLE}'; echo 'delete table {TABLE}'; "
        f"nft --numeric list table {TABLE} 2>/dev/null || true; }} > {PREVIOUS}; "
        f"systemctl stop {rollback}.timer 2>/dev/null || true; systemctl reset-failed {rollback}.service "
        "2>/dev/null || true; "
        # AccuracySec: a timer may otherwise fire up to a minute late.
        f"systemd-run --quiet --unit={rollback} --on-active={rollback_seconds} --timer-property=AccuracySec=1s "
        "/bin/sh -c "
        f"'nft -f {PREVIOUS} || nft delete table {TABLE}'; "
        f"nft -f {shlex.quote(rules)}"
    )


def firewall(task: Task, settings: Settings) -> Result:
    """Converge the host's nftables table; a changed table must survive a fresh SSH login."""
    ahead = read_ahead(
        task,
        packages=["nftables"],
        files=[f"{UNIT_DIR}/{UNIT}", RULES],
        units=[UNIT],
        commands={"live": live_digest_script()},
    )
    task.run(task=packages, names=["nftables"], severity_level=10)
    body = render(task, "firewall/rules.nft.j2", host_name=task.host.name, **ruleset(settings, task.host.name))
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    text = body.replace("@DIGEST@", digest)
    unit = render(task, "firewall/matrix-firewall.service.j2", rules=RULES, table=TABLE)
    unit_changed = task.run(task=unit_file, unit=UNIT, content=unit, severity_level=10)[0].changed
    spec = FileSpec(RULES, text, mode=0o600, check="nft -c -f {path}")
    written = task.run(task=put_files, specs=[spec], severity_level=10)[0]
    diffs = [written.diff] if written.diff else []
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, changed=True, diff="\n".join(diffs))
    live = ahead["live"].strip()  # loading the table is the only thing that changes it
    if live != digest:
        diffs.append(f"table {TABLE}: {'rules ' + live if live else 'not loaded'} → rules {digest}")
        if mode(task) is Mode.APPLY:
            _apply_with_rollback(task)
    task.run(task=service, unit=UNIT, daemon_reload=unit_changed, severity_level=10)
    return Result(host=task.host, changed=bool(diffs) or unit_changed, diff="\n".join(diffs))


def _apply_with_rollback(task: Task) -> None:
    run(
        task,
        apply_script(RULES, ROLLBACK_SECONDS),
        what=Expectation("the new rules loaded with a rollback armed", f"run `nft -c -f {RULES}` on the host"),
    )
    # A fresh login proves the rules let the controller in; the old session would
    # survive as an established connection either way.
    task.host.close_connection(CONNECTION)
    try:
        run(task, f"systemctl stop {ROLLBACK_UNIT}.timer", what=Expectation("the rollback disarmed"))
    except Exception as exc:
        raise HostError(
            f"{task.host.name}: no new SSH login after loading the firewall rules ({exc}); "
            f"the previous rules come back within {ROLLBACK_SECONDS}s — check the SSH port in the inventory"
        ) from None
