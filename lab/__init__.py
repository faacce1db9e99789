"""The lab: the production topology as real systemd hosts on one machine.

Each inventory entry of `inventory/lab/` becomes a Debian 12 host booted with
`systemd-nspawn -b` (systemd as PID 1) in its own network namespace on a bridge in
198.18.0.0/16, with no default route. Packages reach the hosts through an apt proxy on
the bridge address, as they would reach servers at an air-gapped site.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB_CONFIG = REPO / "config.lab.yaml"  # what the lab deploys
LAB_INVENTORY = REPO / "inventory" / "lab"  # the lab's hosts
