"""The handbook as data, written out twice: Markdown for a repository or a wiki, one HTML page for a browser.

The content (runbooks/handbook_content.py) is built once as sections of paragraphs, tables,
commands and a picture, so both forms say the same thing; a renderer never decides what
goes in. The HTML page is self-contained (styles and the picture inline, no script), so it
opens on an air-gapped machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "handbook" / "handbook.html.j2"


@dataclass(frozen=True)
class Text:
    """A paragraph; `code` spans are written between backticks."""

    text: str


@dataclass(frozen=True)
class Commands:
    """Command lines the operator types on the controller, one per line."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Picture:
    """An SVG drawing, beside the Markdown as `file` and inline in the HTML."""

    svg: str
    file: str
    caption: str


Block = Text | Commands | Table | Picture


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


@dataclass(frozen=True)
class Handbook:
    title: str
    provenance: tuple[tuple[str, str], ...]  # (what, value): the settings and tool it was made from
    sections: tuple[Section, ...]

    def pictures(self) -> list[Picture]:
        found: list[Picture] = []

        def walk(section: Section) -> None:
            found.extend(block for block in section.blocks if isinstance(block, Picture))
            for inner in section.sections:
                walk(inner)

        for section in self.sections:
            walk(section)
        return found


def cell(text: str) -> str:
    """A Markdown table cell: a pipe would end it, a line break would end the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(book: Handbook) -> str:
    out = [f"# {book.title}", ""]
    out += [f"- {what}: `{value}`" for what, value in book.provenance] + [""]
    out += ["## Contents", ""]
    out += [f"- [{s.title}](#{s.anchor()})" for s in book.sections] + [""]

    def write(section: Section, level: int) -> None:
        out.extend([f"{'#' * level} {section.title}", ""])
        for block in section.blocks:
            if isinstance(block, Text):
                out.extend([block.text, ""])
            elif isinstance(block, Commands):
                out.extend(["```sh", *block.lines, "```", ""])
            elif isinstance(block, Table):
                out.append("| " + " | ".join(cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows)
                out.append("")
            else:
                out.extend([f"![{block.caption}]({block.file})", "", f"*{block.caption}*", ""])
        for inner in section.sections:
            write(inner, level + 1)

    for section in book.sections:
        write(section, 2)
    return "\n".join(out).rstrip() + "\n"


def html(book: Handbook) -> str:
    import jinja2
    from markupsafe import Markup, escape

    def inline(text: str) -> Markup:
        """`code` spans as <code>, the rest escaped."""
        parts = str(escape(text)).split("`")
        return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["inline"] = inline
    environment.filters["svg"] = Markup  # made here, from names the settings validated (runbooks/handbook_diagram.py)
    kinds = {Text: "text", Commands: "commands", Table: "table", Picture: "picture"}
    environment.globals["kind"] = lambda block: kinds[type(block)]
    return environment.from_string(TEMPLATE.read_text()).render(book=book)
