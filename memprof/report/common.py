"""What every renderer shares: rich renderables to plain text or HTML, and Markdown tables."""

from __future__ import annotations

import io

from rich.console import Console


def render_text(renderable, *, width: int, color: bool = False) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system="standard" if color else None).print(renderable)
    return buf.getvalue()


def render_html(renderable, *, width: int) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_html(inline_styles=True)


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; a `|` or line break inside a cell (a note from a user's file) is escaped."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head)] + [line(r) for r in rows]


def with_charts(html: str, svgs: list[str]) -> str:
    """The rendered page with SVG charts after its text (rich's HTML export knows no SVG)."""
    if not svgs:
        return html
    block = "\n".join(f'<div style="margin: 1em 0">{svg}</div>' for svg in svgs)
    head, sep, tail = html.rpartition("</body>")
    return f"{head}{block}\n{sep}{tail}" if sep else html + block
