"""A report page: headings, text, figures (PNG files next to the page) and tables, written as a
self-contained ``index.html`` (inline CSS, images referenced by relative path) and a Markdown ``report.md``.
Both files are written atomically."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from analysis.dashboards import CSS as DASHBOARD_CSS
from analysis.plots import save_figure
from errors import atomic_write_bytes

FIGURES_DIR = "figures"

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #1a202c; line-height: 1.45; }
h1 { border-bottom: 2px solid #2b6cb0; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #cbd5e0; }
img { max-width: 100%; border: 1px solid #e2e8f0; margin: .5em 0; }
figcaption { color: #4a5568; font-size: .9em; margin-bottom: 1.5em; }
table { border-collapse: collapse; margin: .8em 0 1.5em; font-size: .88em; }
th, td { border: 1px solid #cbd5e0; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
td.tok { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; white-space: pre; }
.note { background: #fffbea; border-left: 4px solid #d69e2e; padding: .5em 1em; margin: 1em 0; }
code { background: #edf2f7; padding: 0 .25em; border-radius: 3px; white-space: pre; }
nav ul { columns: 2; }
td a { text-decoration: none; }
details > summary { cursor: pointer; color: #2b6cb0; margin: .5em 0; }
"""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    mono_columns: tuple[int, ...] = ()  # columns holding token text (shown in a monospace font)
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, column) -> href of that cell


@dataclass
class Report:
    """Build a report in ``out_dir``: call the methods in page order, then `write`."""

    title: str
    out_dir: Path
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        (self.out_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        """A paragraph; `backticks` become code."""
        self.blocks.append(("text", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def figure(self, fig: Figure, name: str, caption: str) -> Path:
        """Save ``fig`` to figures/<name>.png and show it here with ``caption``."""
        path = save_figure(fig, self.out_dir / FIGURES_DIR / f"{name}.png")
        self.blocks.append(("figure", (f"{FIGURES_DIR}/{name}.png", caption)))
        return path

    def table(self, table: Table) -> None:
        self.blocks.append(("table", table))

    def html(self, html_text: str, markdown: str, summary: str | None = None) -> None:
        """Ready-made HTML (e.g. dashboard cards) and its Markdown; with ``summary``, folded in <details>."""
        self.blocks.append(("html", (html_text, markdown, summary)))

    def write(self) -> Path:
        """Write index.html and report.md; returns the path of index.html."""
        index = self.out_dir / "index.html"
        atomic_write_bytes(index, self.to_html().encode("utf-8"))
        atomic_write_bytes(self.out_dir / "report.md", self.to_markdown().encode("utf-8"))
        return index

    # ------------------------------------------------------------ rendering

    def to_html(self) -> str:
        body, toc, n = [], [], 0
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload
                n += 1
                anchor = f"s{n}"
                if level == 2:
                    toc.append(f'<li><a href="#{anchor}">{html.escape(text)}</a></li>')
                body.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')
            elif kind == "text":
                body.append(f"<p>{_inline_html(payload)}</p>")
            elif kind == "note":
                body.append(f'<div class="note">{_inline_html(payload)}</div>')
            elif kind == "figure":
                src, caption = payload
                body.append(
                    f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                    f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
                )
            elif kind == "table":
                body.append(_table_html(payload))
            elif kind == "html":
                raw, _, summary = payload
                body.append(
                    f"<details><summary>{html.escape(summary)}</summary>{raw}</details>" if summary else raw
                )
        nav = f"<nav><ul>{''.join(toc)}</ul></nav>" if toc else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}{DASHBOARD_CSS}</style></head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{nav}\n" + "\n".join(body) + "\n</body></html>\n"
        )

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload
                out += ["#" * level + " " + text, ""]
            elif kind in ("text", "note"):
                out += [("> " if kind == "note" else "") + payload, ""]
            elif kind == "figure":
                src, caption = payload
                out += [f"![{caption}]({src})", "", f"*{caption}*", ""]
            elif kind == "table":
                t: Table = payload
                if t.caption:
                    out += [f"*{t.caption}*", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
                out.append("|" + "---|" * len(t.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
                out.append("")
            elif kind == "html":
                _, markdown, summary = payload
                out += ([f"*{summary}*", ""] if summary else []) + [markdown, ""]
        return "\n".join(out)


def _inline_html(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    rows = []
    for i, row in enumerate(t.rows):
        cells = "".join(
            ('<td class="tok">' if j in t.mono_columns else "<td>") + _cell(c, t.links.get((i, j))) + "</td>"
            for j, c in enumerate(row)
        )
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{_inline_html(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(text: str, href: str | None) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>' if href else html.escape(text)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "\\`")
