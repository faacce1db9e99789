"""The architecture picture of one deployment: every inventory group as a box of its servers, and an arrow for
every group that may connect to another's ports, drawn as SVG from the firewall's own source.

The arrows are the components' port declarations (`PortUse.clients`), the same ones the
firewall loads, so the picture cannot show a path the firewall drops or miss one it opens.
Boxes sit in tiers, the way a request travels: the edge, Synapse, its stores, the database,
then the hosts that watch and keep copies of everything (their arrows are drawn lighter:
they reach nearly every server). No layout engine is needed: the tiers fix the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from core.settings import Settings

# The rows, top to bottom; a group not named here goes into the last row.
TIERS: tuple[tuple[str, ...], ...] = (
    ("haproxy", "coturn", "livekit"),
    ("synapse",),
    ("pgbouncer", "minio"),
    ("patroni",),
    ("monitoring", "backup"),
)
WATCHERS = ("monitoring", "backup")  # their arrows are drawn lighter
CLIENTS = "clients"  # the box of everyone outside: users, other homeservers, TURN peers

BOX_WIDTH, LINE, HEADER, GAP_X, GAP_Y, MARGIN = 230, 16, 24, 40, 70, 20


@dataclass(frozen=True)
class Box:
    group: str
    lines: tuple[str, ...]
    x: int
    y: int

    @property
    def height(self) -> int:
        return HEADER + LINE * len(self.lines) + 8

    @property
    def centre(self) -> int:
        return self.x + BOX_WIDTH // 2


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    ports: str  # e.g. "5432, 8008/tcp"
    light: bool


def arrows(settings: Settings) -> list[Arrow]:
    """Who may connect to whom, by group, from the components' port declarations (public ports: from clients)."""
    present = {group for host in settings.hosts.values() for group in host.groups}
    found: dict[tuple[str, str], set[str]] = {}
    for group in sorted(present):
        for use in settings.catalog.ports(settings.config, [group]):
            sources = (CLIENTS,) if use.public else tuple(c for c in use.clients if c in present and c != group)
            for source in sources:
                found.setdefault((source, group), set()).add(f"{use.span}/{use.proto}")
    return [
        Arrow(
            source,
            target,
            ", ".join(sorted(ports, key=lambda p: (int(p.split("/")[0].split("-")[0]), p))),  # by port, then text
            source in WATCHERS,
        )
        for (source, target), ports in sorted(found.items())
    ]


def boxes(settings: Settings) -> list[Box]:
    """Every group with servers, placed in its tier's row and centred; the clients above them all."""
    present = {group for host in settings.hosts.values() for group in host.groups}
    placed = {group for row in TIERS for group in row}
    rows = [[g for g in row if g in present] for row in TIERS]
    rows[-1] += sorted(present - placed)
    rows = [[CLIENTS], *(row for row in rows if row)]
    width = max(len(row) for row in rows) * (BOX_WIDTH + GAP_X) - GAP_X
    found, y = [], MARGIN
    for row in rows:
        left = MARGIN + (width - (len(row) * (BOX_WIDTH + GAP_X) - GAP_X)) // 2
        made = [Box(g, box_lines(settings, g), left + i * (BOX_WIDTH + GAP_X), y) for i, g in enumerate(row)]
        found += made
        y += max(box.height for box in made) + GAP_Y
    return found


def box_lines(settings: Settings, group: str) -> tuple[str, ...]:
    if group == CLIENTS:
        return (f"https://{settings.config.homeserver_fqdn}", "federation, TURN, calls")
    lines = tuple(f"{h.name}  {h.private_ip}" for h in settings.members(group))
    return (f"VIP {settings.vip}", *lines) if group == "haproxy" else lines


def svg(settings: Settings) -> str:
    """The picture, as a standalone SVG document."""
    placed = {box.group: box for box in boxes(settings)}
    width = max(b.x for b in placed.values()) + BOX_WIDTH + MARGIN
    height = max(b.y + b.height for b in placed.values()) + MARGIN
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' font-family="sans-serif" font-size="12">',
        "<defs>",
        '<marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#57606a"/></marker>',
        "</defs>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for arrow in arrows(settings):
        source, target = placed[arrow.source], placed[arrow.target]
        out.append(path(source, target, arrow))
    for box in placed.values():
        fill = "#fff8c5" if box.group == CLIENTS else "#ddf4ff"
        out.append(
            f'<g><title>{escape(box.group)}</title><rect x="{box.x}" y="{box.y}" width="{BOX_WIDTH}" '
            f'height="{box.height}" rx="6" fill="{fill}" stroke="#0969da"/>'
            f'<text x="{box.x + 8}" y="{box.y + 17}" font-weight="bold">{escape(box.group)}</text>'
        )
        for index, line in enumerate(box.lines):
            out.append(f'<text x="{box.x + 8}" y="{box.y + HEADER + 12 + index * LINE}">{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def path(source: Box, target: Box, arrow: Arrow) -> str:
    """A curve from `source` to `target`: downwards or upwards between rows, over the top within one."""
    if source.y < target.y:
        start, end = (source.centre, source.y + source.height), (target.centre, target.y)
    elif source.y > target.y:
        start, end = (source.centre, source.y), (target.centre, target.y + target.height)
    else:  # over the boxes between them
        start, end = (source.centre, source.y), (target.centre, target.y)
    bend = (start[1] + end[1]) // 2 if start[1] != end[1] else start[1] - GAP_Y // 2
    style = 'stroke="#8c959f" stroke-dasharray="4 3"' if arrow.light else 'stroke="#57606a"'
    title = f"{arrow.source} → {arrow.target}: {arrow.ports}"
    return (
        f'<path d="M{start[0]},{start[1]} C{start[0]},{bend} {end[0]},{bend} {end[0]},{end[1]}" fill="none" '
        f'{style} marker-end="url(#head)"><title>{escape(title)}</title></path>'
    )
