"""Media and RTC tiers in the lab: Coturn relays for REST credentials, LiveKit's Redis wants its password."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator

import pytest

from core import artifacts
from core.settings import Settings
from core.turn import TurnClient, TurnError
from core.turn_service import rest_credential
from lab.lab import Lab
from tests.lab.conftest import OTHER_CA, ssh, tls_handshake

PEER = "198.18.1.51"  # livekit1: the one private peer coturn may relay to
PEER_PORT = 50150  # inside LiveKit's media range, open in livekit1's firewall


ECHO = """import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("{address}", {port}))
while True:
    data, sender = sock.recvfrom(65535)
    sock.sendto(data, sender)
"""


@pytest.fixture(scope="module")
def echo_peer(deployed: None, lab: Lab) -> Iterator[None]:
    """A UDP echo server where LiveKit's media would arrive (the turnutils_peer role)."""
    ssh(lab, "livekit1", "cat > /tmp/udp-echo.py", input=ECHO.format(address=PEER, port=PEER_PORT))
    ssh(lab, "livekit1", "sudo systemd-run --unit=udp-echo python3 /tmp/udp-echo.py")
    yield
    ssh(lab, "livekit1", "sudo systemctl stop udp-echo", check=False)


def relay(lab: Lab, client: str, server: str, user: str, password: str, *flags: str, peer: str = PEER) -> str:
    """Send 5 messages through a TURN allocation on `server` to the echo peer; the client's report."""
    command = (
        f"timeout 30 turnutils_uclient {' '.join(flags)} -u {shlex.quote(user)} -w {shlex.quote(password)} "
        f"-e {peer} -r {PEER_PORT} -n 5 -m 1 -c {server} 2>&1"
    )
    return ssh(lab, client, command, check=False).stdout


# turnutils_uclient's options per transport: TLS goes through the host's HAProxy, DTLS to Coturn itself.
TRANSPORTS = {"udp": [], "tcp": ["-t"], "tls": ["-t", "-S", "-p", "5349"], "dtls": ["-S", "-p", "5349"]}


@pytest.mark.parametrize("server", ["198.18.1.41", "198.18.1.42"])
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_turn_relays_for_a_rest_credential(
    echo_peer: None, lab: Lab, lab_settings: Settings, server: str, transport: str
) -> None:
    user, password = rest_credential(lab_settings.secrets["turn_shared_secret"], "labtest")
    client = "coturn2" if server.endswith(".41") else "coturn1"
    report = relay(lab, client, server, user, password, *TRANSPORTS[transport])
    assert "tot_send_msgs=5, tot_recv_msgs=5" in report and "Total lost packets 0 (0.000000%)" in report, report


def test_turn_refuses_a_wrong_credential(echo_peer: None, lab: Lab, lab_settings: Settings) -> None:
    user, _ = rest_credential(lab_settings.secrets["turn_shared_secret"], "labtest")
    _, forged = rest_credential("not-the-secret", "labtest")
    report = relay(lab, "coturn2", "198.18.1.41", user, forged)
    assert "Cannot complete Allocation" in report and "tot_recv_msgs=5" not in report, report


def test_turn_does_not_relay_into_the_private_network(echo_peer: None, lab: Lab, lab_settings: Settings) -> None:
    user, password = rest_credential(lab_settings.secrets["turn_shared_secret"], "labtest")
    report = relay(lab, "coturn2", "198.18.1.41", user, password, peer="198.18.1.61")  # synapse1
    assert "error 403 (Forbidden IP)" in report and "tot_recv_msgs=5" not in report, report


@pytest.mark.parametrize("server", ["198.18.1.41", "198.18.1.42"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_drills_turn_client_allocates_and_is_refused_a_forged_credential(
    deployed: None, lab_settings: Settings, server: str, transport: str
) -> None:
    """The failover drills' TURN probe (core/turn.py) against the real Coturn, from the controller."""
    client = TurnClient(server, transport=transport)
    relay = client.allocate(lambda: rest_credential(lab_settings.secrets["turn_shared_secret"], "drill"))
    address, port = relay.rsplit(":", 1)
    turn = lab_settings.config.turn
    assert address == server and turn.relay_min_port <= int(port) <= turn.relay_max_port, relay
    with pytest.raises(TurnError, match="Allocate refused: 401"):
        client.allocate(lambda: rest_credential("not-the-secret", "drill"))


OLD_TLS = """import socket, ssl, time
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
context.set_ciphers("DEFAULT@SECLEVEL=0")
context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
started = time.monotonic()
try:
    with context.wrap_socket(socket.create_connection(("198.18.1.42", 5349), timeout=20)):
        print("accepted", end=" ")
except (OSError, ssl.SSLError) as error:
    print(getattr(error, "reason", None) or type(error).__name__, end=" ")
print(f"{time.monotonic() - started:.2f}")
"""


def test_turns_offers_tls_1_3_and_answers_an_older_hello_with_an_alert(deployed: None, lab: Lab) -> None:
    version, _, _ = tls_handshake(lab, "synapse1", "198.18.1.42", 5349, "coturn2.internal")
    assert version == "TLSv1.3"  # with a certificate the other hosts trust
    reason, seconds = ssh(lab, "synapse1", "python3 -c " + shlex.quote(OLD_TLS)).stdout.split()
    print(f"TLS 1.1 hello to coturn2:5349: {reason} after {seconds}s")
    assert reason == "TLSV1_ALERT_PROTOCOL_VERSION" and float(seconds) < 2  # the server's alert, at once


REDIS_CLIENT = """import socket, ssl, sys
password = sys.stdin.readline().rstrip("\\n")
def ask(commands, tls=True, certificate=None):
    try:
        conn = socket.create_connection(("198.18.1.51", 6379), timeout=5)
        if tls:
            context = ssl.create_default_context()  # the site CA is in the trust store
            if certificate:
                context.load_cert_chain(*certificate)
            conn = context.wrap_socket(conn, server_hostname="198.18.1.51")
        with conn:
            for command in commands:
                conn.sendall(command.encode() + b"\\r\\n")
                print(conn.recv(1024).decode().strip() or "closed")
    except (OSError, ssl.SSLError) as error:
        print("refused:", type(error).__name__)
ask(["PING"], tls=False)
ask(["PING"])
ask(["AUTH " + password, "PING"])
ask(["AUTH " + password, "PING"], certificate=("/tmp/other.crt", "/tmp/other.key"))
"""


def test_livekit_redis_answers_tls_clients_with_its_password_only(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    """From another livekit host, over the network: plaintext gets nothing, TLS without the password NOAUTH, with
    it PONG (the server verified for its address); a client certificate of another CA is refused."""
    password = lab_settings.secrets["livekit_redis_password"]
    ssh(lab, "livekit2", OTHER_CA)
    answers = ssh(lab, "livekit2", "python3 -c " + shlex.quote(REDIS_CLIENT), input=password + "\n").stdout.split("\n")
    assert answers[0] == "closed" or answers[0].startswith("refused"), answers  # plaintext
    assert answers[1].startswith("-NOAUTH") and answers[2:4] == ["+OK", "+PONG"], answers
    assert answers[4] == "closed" or answers[4].startswith("refused"), answers  # another CA's certificate
    assert ssh(lab, "livekit1", "ss -Hltn 'sport = 6379'").stdout.split()[3] == "198.18.1.51:6379"  # private only
    assert ssh(lab, "livekit1", "systemctl is-enabled redis-server", check=False).stdout.strip() == "disabled"


def test_tiers_without_their_binaries_are_skipped_not_passed(deploy_lab: Callable[..., tuple[int, str]]) -> None:
    """MinIO and livekit-server are not obtainable here: the deploy says so per tier and carries on."""
    missing = [name for name in ("minio", "mc", "livekit-server") if artifacts.problems(artifacts.manifest()[name])]
    if not missing:
        pytest.skip("the binaries are in the cache: the tiers deploy for real")
    code, out = deploy_lab("--step", "minio", "--step", "livekit", "--step", "coturn")
    assert code == 0, out
    assert "skipped: artifacts/manifest.yaml: minio: minio.RELEASE" in out
    assert "skipped: artifacts/manifest.yaml: livekit-server: livekit_" in out
    assert "deploy: no changes" in out


def needs_binaries(*names: str) -> None:
    """Skip (never pass) a test of a tier whose vendor binary is not in the artifact cache."""
    absent = [p for name in names for p in artifacts.problems(artifacts.manifest()[name])]
    if absent:
        pytest.skip(f"artifact not usable, tier not deployed: {absent[0].key}: {absent[0].message}")


def test_minio_forms_one_erasure_set_and_synapse_user_is_confined(
    deployed: None, lab: Lab, lab_settings: Settings
) -> None:
    needs_binaries("minio", "mc")
    secrets = lab_settings.secrets
    for node in ("198.18.1.31", "198.18.1.32", "198.18.1.33", "198.18.1.34"):
        health = f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://{node}:9000/minio/health/cluster').status)\""
        assert ssh(lab, "minio2", health).stdout.strip() == "200"
    root = f"http://{secrets['minio_root_user']}:{secrets['minio_root_password']}@198.18.1.31:9000"
    info = ssh(
        lab, "minio1", "IFS= read -r MC_HOST_lab; export MC_HOST_lab; mc admin info lab --json", input=root + "\n"
    )
    backend = json.loads(info.stdout)["info"]["backend"]
    assert backend["backendType"] == "Erasure" and backend["onlineDisks"] == 16 and backend["standardSCParity"] == 4
    user = f"http://{secrets['minio_synapse_access_key']}:{secrets['minio_synapse_secret_key']}@198.18.1.31:9000"
    as_synapse = "IFS= read -r MC_HOST_syn; export MC_HOST_syn; "
    bucket = lab_settings.config.minio.bucket
    put = ssh(
        lab,
        "minio1",
        as_synapse + f"echo probe | mc pipe syn/{bucket}/probe && mc cat syn/{bucket}/probe",
        input=user + "\n",
    )
    assert put.stdout.strip().endswith("probe")
    denied = ssh(lab, "minio1", as_synapse + "mc mb syn/another-bucket", input=user + "\n", check=False)
    assert denied.returncode != 0  # the policy allows its own bucket only


def test_livekit_nodes_register_in_the_mesh_redis(deployed: None, lab: Lab, lab_settings: Settings) -> None:
    needs_binaries("livekit-server")
    for node in ("198.18.1.51", "198.18.1.52"):
        answer = ssh(
            lab,
            "haproxy1",  # signalling reaches the SFUs through HAProxy only
            f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://{node}:7880/').read().decode())\"",
        )
        assert answer.stdout.strip() == "OK"
    nodes = ssh(
        lab,
        "livekit1",
        "IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; redis-cli --no-auth-warning --tls -h 198.18.1.51 hlen nodes",
        input=lab_settings.secrets["livekit_redis_password"] + "\n",
    )
    assert nodes.stdout.strip() == "2"
