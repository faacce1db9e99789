"""A drill's timeline as a PNG: each probe's successes and failures over time, with the
fault, the detection, the recovery, the restoration and the rejoining marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, ROW, MARGIN, TOP = 1200, 40, 110, 80
OK, FAILED = (46, 160, 67), (207, 34, 46)
MARKERS = {
    "fault": (207, 34, 46),
    "detected": (219, 140, 0),
    "recovered": (31, 111, 235),
    "restored": (110, 64, 170),
    "rejoined": (0, 128, 128),
}


def render(
    path: Path, title: str, samples: Sequence[tuple[float, bool, str]], marks: dict[str, float | None], origin: float
) -> None:
    """Write the timeline to `path`; times are seconds since the epoch, shown relative to `origin` (the fault)."""
    probes = sorted({probe for _, _, probe in samples})
    times = [t for t, _, _ in samples] + [t for t in marks.values() if t is not None]
    start, end = (min(times), max(times)) if times else (origin - 1, origin + 1)
    span = max(end - start, 1e-3)
    height = TOP + ROW * len(probes) + 60
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def x(moment: float) -> float:
        return MARGIN + (moment - start) / span * (WIDTH - MARGIN - 20)

    draw.text((10, 10), title, fill="black", font=font)
    for row, probe in enumerate(probes):
        y = TOP + row * ROW
        draw.text((10, y + 12), probe, fill="black", font=font)
        for moment, ok, name in samples:
            if name == probe:
                draw.line([(x(moment), y + 5), (x(moment), y + ROW - 5)], fill=OK if ok else FAILED)
    axis = TOP + ROW * len(probes) + 5
    draw.line([(MARGIN, axis), (WIDTH - 20, axis)], fill="black")
    for second in range(int(start - origin), int(end - origin) + 1, max(1, int(span // 12) or 1)):
        draw.line([(x(origin + second), axis), (x(origin + second), axis + 4)], fill="black")
        draw.text((x(origin + second) - 8, axis + 6), f"{second:+d}s", fill="black", font=font)
    for offset, (name, moment) in enumerate((n, m) for n, m in marks.items() if m is not None):
        # "fault: 3 patroni-kill" takes the colour of "fault"; labels stack in five rows above the probes.
        colour, top = MARKERS.get(name.split(":")[0], (0, 0, 0)), TOP - 52 + offset % 5 * 11
        draw.line([(x(moment), top), (x(moment), axis)], fill=colour, width=2)
        draw.text((x(moment) + 3, top), name, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
