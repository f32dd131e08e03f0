"""Feature dashboards in the style of SAE viewers (Neuronpedia, sae_vis): the data positions that activate a
component most, as text snippets, with a histogram of its activation over all positions.

A component is anything with a scalar activation at every position of an activation pass:
    an eigenvector v of Q(u):      a_p = v·x̂_p,                 contribution to u·MLP: λ a_p²;
    a CP component λ a⊗b⊗c:        a_p = λ (b·z_p)(c·z_p),       its output is a_p · a (a unit vector);
and the top contexts are the positions with the largest |a_p|. `Dashboard` holds the numbers; `cards_html` and
`cards_markdown` render them (one card per component, anchored so that tables can link to it), with each
snippet showing ±N tokens of its window and the position's own token highlighted.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from analysis.tokens import TokenText


@dataclass(frozen=True)
class Context:
    """Position ``pos`` of window ``seq``: the component's activation there and its contribution."""

    seq: int
    pos: int
    value: float
    contribution: float


@dataclass
class Dashboard:
    """One component: ``top`` contexts by |activation| (descending), and a histogram of the activation over all
    ``n_positions`` positions (counts [bins], edges [bins + 1])."""

    anchor: str
    title: str
    lines: list[str]
    value_name: str
    contribution_name: str
    top: list[Context]
    hist_counts: list[int]
    hist_edges: list[float]
    n_positions: int
    extra: dict[str, float] = field(default_factory=dict)


def top_contexts(
    activation: torch.Tensor, n: int, contribution: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> list[Context]:
    """The n positions of activation [n_seq, T] with the largest |value| (ties: the earlier position first)."""
    flat = activation.reshape(-1).double()
    n = min(n, flat.numel())
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:n]
    contrib = contribution(flat[order]) if contribution is not None else flat[order]
    T = activation.shape[-1]
    return [
        Context(int(p) // T, int(p) % T, float(flat[p]), float(c))
        for p, c in zip(order, contrib, strict=True)
    ]


def build_dashboard(
    anchor: str,
    title: str,
    lines: list[str],
    activation: torch.Tensor,
    n_top: int = 8,
    value_name: str = "activation",
    contribution: Callable[[torch.Tensor], torch.Tensor] | None = None,
    contribution_name: str = "",
    bins: int = 40,
) -> Dashboard:
    """A dashboard of activation [n_seq, T]: top contexts and a histogram over all positions."""
    flat = activation.reshape(-1).double()
    lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(flat, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return Dashboard(
        anchor,
        title,
        lines,
        value_name,
        contribution_name,
        top_contexts(activation, n_top, contribution),
        [int(c) for c in counts],
        [float(e) for e in edges],
        flat.numel(),
    )


# ------------------------------------------------------------------------------------------ rendering

CSS = """
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: .8em; margin: .5em 0 1.5em; }
.card { border: 1px solid #cbd5e0; border-radius: 6px; padding: .5em .8em; font-size: .85em; background: #fcfcfd; }
.card h4 { margin: .1em 0 .3em; font-size: 1em; }
.card .lines { color: #4a5568; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: .9em;
               white-space: pre-wrap; margin-bottom: .3em; }
.card ol { margin: .3em 0; padding-left: 2.2em; }
.card li { margin: .1em 0; }
.card .val { display: inline-block; min-width: 6.5em; color: #2d3748; font-variant-numeric: tabular-nums; }
.card .snip { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; white-space: pre-wrap; }
.card mark { background: #fbd38d; border-radius: 2px; padding: 0 1px; }
.card mark.neg { background: #bee3f8; }
.card .nl { color: #a0aec0; }
.card svg { display: block; margin: .2em 0; }
"""


def _token_html(text: str) -> str:
    out = []
    for part in text.split("\n"):
        out.append(html.escape(part).replace("\t", "→"))
    return '<span class="nl">↵</span>'.join(out)


def _token_plain(text: str) -> str:
    return text.replace("\n", "↵").replace("\t", "→").replace("`", "'")


def snippet_tokens(tokens: torch.Tensor, ctx: Context, before: int, after: int) -> tuple[list[int], int]:
    """(model ids of the snippet, index of the context's own token in it), clipped to the window."""
    row = tokens[ctx.seq]
    start, stop = max(0, ctx.pos - before), min(row.shape[0], ctx.pos + after + 1)
    return [int(t) for t in row[start:stop]], ctx.pos - start


def histogram_svg(counts: Sequence[int], edges: Sequence[float], width: int = 300, height: int = 56) -> str:
    """A small inline SVG bar chart of a histogram (log-free heights; the zero bin edge marked)."""
    top = max(max(counts), 1)
    n = len(counts)
    bw = width / n
    bars = []
    for i, c in enumerate(counts):
        h = (height - 12) * c / top
        if c > 0:
            h = max(h, 1.0)
        bars.append(
            f'<rect x="{i * bw:.1f}" y="{height - 12 - h:.1f}" width="{max(bw - 0.5, 0.5):.1f}" '
            f'height="{h:.1f}" fill="#4a5568"/>'
        )
    lo, hi = edges[0], edges[-1]
    zero = ""
    if lo < 0 < hi:
        x0 = width * (0 - lo) / (hi - lo)
        zero = (
            f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="0" y2="{height - 12}" stroke="#c53030" stroke-width="1"/>'
        )
    labels = (
        f'<text x="0" y="{height - 1}" font-size="9" fill="#4a5568">{lo:+.3g}</text>'
        f'<text x="{width}" y="{height - 1}" font-size="9" fill="#4a5568" text-anchor="end">{hi:+.3g}</text>'
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram">{"".join(bars)}{zero}{labels}</svg>'
    )


def card_html(d: Dashboard, tokens: torch.Tensor, token_text: TokenText, before: int, after: int) -> str:
    items = []
    for ctx in d.top:
        ids, at = snippet_tokens(tokens, ctx, before, after)
        parts = []
        for j, t in enumerate(ids):
            text = _token_html(token_text.text(t))
            if j == at:
                cls = ' class="neg"' if ctx.value < 0 else ""
                text = f"<mark{cls}>{text}</mark>"
            parts.append(text)
        contrib = f" ({d.contribution_name} {ctx.contribution:+.3g})" if d.contribution_name else ""
        items.append(
            f'<li title="window {ctx.seq}, position {ctx.pos}"><span class="val">{ctx.value:+.3f}{html.escape(contrib)}</span> '
            f'<span class="snip">{"".join(parts)}</span></li>'
        )
    lines = "\n".join(html.escape(line) for line in d.lines)
    hist = histogram_svg(d.hist_counts, d.hist_edges)
    return (
        f'<div class="card" id="{html.escape(d.anchor)}"><h4>{html.escape(d.title)}</h4>'
        f'<div class="lines">{lines}</div>{hist}'
        f'<div class="lines">{html.escape(d.value_name)} over {d.n_positions:,} validation positions; top '
        f"{len(d.top)} by |{html.escape(d.value_name)}|:</div>"
        f"<ol>{''.join(items)}</ol></div>"
    )


def cards_html(
    dashboards: Sequence[Dashboard],
    tokens: torch.Tensor,
    token_text: TokenText,
    before: int = 10,
    after: int = 4,
) -> str:
    """A grid of cards, one per dashboard."""
    return (
        '<div class="cards">'
        + "".join(card_html(d, tokens, token_text, before, after) for d in dashboards)
        + "</div>"
    )


def cards_markdown(
    dashboards: Sequence[Dashboard],
    tokens: torch.Tensor,
    token_text: TokenText,
    before: int = 10,
    after: int = 4,
) -> str:
    """The same as Markdown: per card a heading line, its readout lines and the top contexts ([[token]])."""
    out = []
    for d in dashboards:
        out.append(f"**{d.title}**" + "".join(f"  \n`{line}`" for line in d.lines))
        out.append("")
        for ctx in d.top:
            ids, at = snippet_tokens(tokens, ctx, before, after)
            text = "".join(
                f"[[{_token_plain(token_text.text(t))}]]" if j == at else _token_plain(token_text.text(t))
                for j, t in enumerate(ids)
            )
            contrib = f" ({d.contribution_name} {ctx.contribution:+.3g})" if d.contribution_name else ""
            out.append(f"- {ctx.value:+.3f}{contrib}: `{text}`")
        out.append("")
    return "\n".join(out)
