#!/usr/bin/env bash
# One-time set-up of the controller: a Debian 12 machine, run as root.
# Installs the system packages the framework and its lab need, the pinned Python
# dependencies into .venv (Debian's system Python refuses pip installs, PEP 668), and
# fills the artifact cache (artifacts/manifest.yaml).
# Safe to re-run: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")"

export DEBIAN_FRONTEND=noninteractive
# python3-venv: the controller's venv; openssh-client: ssh-keygen and `lab.py ssh`;
# debootstrap … nftables build the lab (debootstrap base, systemd-nspawn hosts, bridge, its firewall);
# chromium: the tests open the HTML run report in a headless browser.
packages=(python3 python3-venv openssh-client debootstrap systemd-container iproute2 nftables chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  timeout 600 apt-get update -q
  timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# promtool and amtool check the monitoring configuration in the tests: taken from Debian's
# packages without installing (and starting) Prometheus or Alertmanager on the controller.
tool_package() {  # tool_package PACKAGE TOOL
  [ -x ".tools/$2" ] && return
  local tmp
  tmp=$(mktemp -d)
  chmod 0755 "$tmp"  # apt-get download writes as _apt
  (cd "$tmp" && { timeout 600 apt-get download -q "$1" || { timeout 600 apt-get update -q && timeout 600 apt-get download -q "$1"; }; })
  dpkg-deb -x "$tmp/$1"_*.deb "$tmp/root"
  install -D -m 0755 "$tmp/root/usr/bin/$2" ".tools/$2"
  rm -rf "$tmp"
}
tool_package prometheus promtool
tool_package prometheus-alertmanager amtool

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# The artifact cache (pinned, checksummed): what servers get from the controller, never
# from the internet. Here only what the package index serves; on a controller with
# internet, `python runbooks/artifacts.py fetch` (all) or `import FILE` adds the vendor
# binaries (MinIO, mc, LiveKit) once their sha256 is pinned in artifacts/manifest.yaml.
.venv/bin/python runbooks/artifacts.py fetch patroni synapse synapse-auto-compressor
echo "set-up complete: activate with '. .venv/bin/activate'"
