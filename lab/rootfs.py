"""Root filesystems: one cached debootstrap base, and a per-host overlay on top of it.

The base looks like a freshly installed Debian 12 server (sshd, Python, systemd, sudo
and a `deploy` user with passwordless sudo); everything else arrives through the
deploy's own package step. It is built once into a temporary folder and renamed into
place, so an interrupted build never leaves a half base behind, and rebuilt whenever
its recipe changes. Per host, the overlay's upper layer carries the host's own name,
machine-id, SSH host key and the controller's authorised key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from lab.network import BRIDGE_ADDRESS
from lab.shell import LabError, sh

SUITE = "bookworm"
# What a fresh Debian 12 server has (nftables is priority "important": every standard
# install carries it), plus python3 and sudo for the deploy user.
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "nftables",
    "python3",
    "ca-certificates",
    "sudo",
)
PROXY_PORT = 13142  # not 3142: a system apt-cacher-ng may already hold that
PROXY_URL = f"http://{BRIDGE_ADDRESS}:{PROXY_PORT}"
LAB_USER = "deploy"
RECIPE_FILE = ".lab-recipe"

# Written into the base once: quick shutdowns (a container once hung ~2 min on
# user@0.service), SSH with keys only, sudo for the deploy user.
BASE_FILES = {
    "etc/systemd/system.conf.d/lab.conf": "[Manager]\nDefaultTimeoutStopSec=10s\n",
    "etc/systemd/system/user@.service.d/lab.conf": "[Service]\nTimeoutStopSec=3s\n",
    "etc/ssh/sshd_config.d/lab.conf": (
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
    ),
    f"etc/sudoers.d/{LAB_USER}": f"{LAB_USER} ALL=(ALL) NOPASSWD:ALL\n",
    "etc/resolv.conf": "# no DNS in the lab: names come from /etc/hosts\n",
}


# Written into every host (not the base, so changing them needs no rebuild): apt through
# the lab's proxy.
APT_PROXY = {
    # No pipelining through the proxy (an apt http method hung on a connection the proxy
    # had closed, CLOSE-WAIT, for minutes); time out and retry instead of waiting forever.
    "etc/apt/apt.conf.d/90lab-proxy": (
        f'Acquire::http::Proxy "{PROXY_URL}";\nAcquire::http::Pipeline-Depth "0";\n'
        'Acquire::http::Timeout "30";\nAcquire::Retries "3";\n'
    ),
}


def machine_apt_files() -> dict[str, str]:
    """The controller's own enabled apt sources and its fetch settings, to reuse in the lab.

    Hosts fetch through the proxy, which then talks to the same package sources as the
    controller; HTTPS sources cannot pass through the proxy and are left out.
    """
    files: dict[str, str] = {}
    etc = Path("/etc/apt")
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in (".list", ".sources") and "https://" not in path.read_text():
            files[f"etc/apt/{path.relative_to(etc)}"] = path.read_text()
    for path in sorted((etc / "apt.conf.d").glob("*")):
        text = path.read_text() if path.is_file() else ""
        if "Acquire::" in text and "Proxy" not in text:
            files[f"etc/apt/apt.conf.d/80machine-{path.name}"] = text
    return files


def recipe() -> str:
    """What the base is built from; a different recipe means a rebuild."""
    text = repr((SUITE, INCLUDE, sorted(BASE_FILES.items()), LAB_USER))
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_base(state: Path) -> tuple[Path, bool]:
    """The cached base, built if missing or outdated; returns (path, built now)."""
    base = state / "base"
    if base_current(state):
        return base, False
    tmp = state / "base.tmp"
    unmount_all(tmp)  # an interrupted debootstrap leaves its /proc and /sys mounted
    shutil.rmtree(tmp, ignore_errors=True)
    sh(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(tmp)], timeout=1200)
    _customize(tmp)
    (tmp / RECIPE_FILE).write_text(recipe())
    old = state / "base.old"
    if base.exists():
        base.rename(old)
    tmp.rename(base)
    shutil.rmtree(old, ignore_errors=True)
    return base, True


def _customize(root: Path) -> None:
    _write(root, BASE_FILES)
    (root / f"etc/sudoers.d/{LAB_USER}").chmod(0o440)
    sh(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", LAB_USER])
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    sh(["chroot", str(root), "apt-get", "clean"])


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(text)


def base_current(state: Path) -> bool:
    stamp = state / "base" / RECIPE_FILE
    return stamp.exists() and stamp.read_text() == recipe()


def mount_overlay(base: Path, host_dir: Path) -> Path:
    """Mount the host's overlay (base below, the host's own changes above); returns the root."""
    merged = host_dir / "root"
    if _mounted(merged):
        return merged
    for sub in ("upper", "work", "root"):
        (host_dir / sub).mkdir(parents=True, exist_ok=True)
    sh(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={base},upperdir={host_dir / 'upper'},workdir={host_dir / 'work'}",
            str(merged),
        ]
    )
    return merged


def _mounted(path: Path) -> bool:
    return str(path) in mounts_under(path.parent)


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first (the order to unmount them)."""
    prefix = str(folder)
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def unmount_all(folder: Path) -> None:
    for point in mounts_under(folder):
        sh(["umount", "--lazy", point], check=False)
    remaining = mounts_under(folder)
    if remaining:
        raise LabError(f"could not unmount {', '.join(remaining)}: a process may still use them (fuser -m)")


def personalise(root: Path, host: str, authorized_key: str) -> str:
    """Give a host about to boot its name, machine-id, apt setup, SSH host key and the controller's key.

    Only before it boots: on a running host these files are the deploy's (/etc/hosts
    carries its block). Returns the host's public SSH key.
    """
    apt = machine_apt_files()
    _write(root, {**APT_PROXY, **apt})
    if "etc/apt/sources.list" not in apt:
        # debootstrap's own: the hosts use the machine's sources and nothing else (the proxy
        # serves no other), and the same source twice makes apt warn on every run.
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/hostname").write_text(f"{host}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/machine-id").write_text(hashlib.md5(f"matrix-lab {host}".encode()).hexdigest() + "\n")
    key = root / "etc/ssh/ssh_host_ed25519_key"
    if not key.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host}", "-f", str(key)])
    ssh_dir = root / "home" / LAB_USER / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(authorized_key)
    entry = next(line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith(f"{LAB_USER}:"))
    uid, gid = (int(field) for field in entry.split(":")[2:4])
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, uid, gid)
    return host_key(root)


def host_key(root: Path) -> str:
    """The host's public SSH key (base64), as known_hosts lists it."""
    return (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
