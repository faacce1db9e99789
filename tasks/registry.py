"""Every component declared through `tasks.component`: the tables that span components loop over it."""

from __future__ import annotations

from tasks.component import Component
from tasks.coturn import COTURN
from tasks.etcd import ETCD
from tasks.keepalived import KEEPALIVED

COMPONENTS: dict[str, Component] = {component.name: component for component in (ETCD, KEEPALIVED, COTURN)}
