"""``python -m analysis.diff BASE FINETUNED --out DIR``: what a fine-tune changed, from weights and activations.

Weight-based: each CP layer's B_ft − B_base compressed with decomp's implicit ALS, its largest terms read as
tokens. Activation-based baseline: mean residual differences on the first positions of validation text, their
PCA and logit lens. Output-level: which tokens the fine-tune made more or less likely. See
`analysis.model_diff` for the definitions.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from analysis import plots
from analysis.activations import cached_activations
from analysis.checkpoint import load_checkpoint
from analysis.cli import torch_threads
from analysis.dashboards import cards_html, cards_markdown
from analysis.errors import AnalysisError
from analysis.faithfulness import cp_layer_kinds
from analysis.html import Report, Table
from analysis.model_diff import LayerWeightDiff, activation_diff, check_comparable, weight_diff
from analysis.readable import ReadableOptions, diff_dashboards, token_frequency
from analysis.report import n_valid_tokens
from analysis.tokens import TokenText
from analysis.valdata import load_val_tokens


@dataclass
class DiffOptions:
    base: str
    finetuned: str
    out: Path
    val_files: str | None = None
    val_tokens: int = 4096
    positions: int = 32
    batch_size: int = 8
    rank: int = 8
    sweep: tuple[int, ...] = (1, 2, 4, 8, 16)
    n_components: int = 4
    top_k: int = 8
    als_iters: int = 60
    pca_point: int = -1
    act_tokens: int = 16384
    min_count: int = 20
    dashboard_top: int = 8
    threads: int = 1
    progress: bool = True


def build_diff_report(opts: DiffOptions) -> Path:
    """Run both diffs and write DIR/index.html, report.md and figures; returns the path of index.html."""
    with torch_threads(opts.threads):
        return _build_diff_report(opts)


def _build_diff_report(opts: DiffOptions) -> Path:
    start = time.perf_counter()
    base_ck, ft_ck = load_checkpoint(opts.base), load_checkpoint(opts.finetuned)
    base, ft = base_ck.model, ft_ck.model
    check_comparable(base, ft)
    if base_ck.vocab != ft_ck.vocab:
        raise AnalysisError(
            "the checkpoints have different vocabularies (config.json 'vocab'); cannot diff them"
        )
    token_text = TokenText(ft_ck.vocab, ft.config.vocab_size, ft_ck.tokenizer)
    n_valid = n_valid_tokens(ft_ck)
    layers, skipped = cp_layer_kinds(base)
    seq_len = min(base_ck.seq_len, opts.positions) if opts.positions else base_ck.seq_len
    files = base_ck.val_files(opts.val_files)
    val = load_val_tokens(files, base_ck.seq_len, opts.val_tokens, base_ck.vocab, base.config.vocab_size)

    freq = token_frequency(base_ck, ReadableOptions(min_count=opts.min_count), files, ft.config.vocab_size)
    diffs = [
        weight_diff(
            base,
            ft,
            i,
            token_text,
            n_valid,
            opts.rank,
            opts.sweep,
            opts.n_components,
            opts.top_k,
            opts.als_iters,
            freq.allowed,
        )
        for i in tqdm(layers, desc="weight diffs (implicit ALS)", disable=not opts.progress)
    ]
    act = activation_diff(
        base, ft, val, token_text, n_valid, seq_len, opts.pca_point, k=opts.top_k, batch_size=opts.batch_size
    )
    dashboards = {}
    with_cp = [d for d in diffs if d.cp is not None and d.components]
    if with_cp and opts.act_tokens > 0:
        windows = load_val_tokens(
            files, base_ck.seq_len, opts.act_tokens, base_ck.vocab, base.config.vocab_size
        )
        acts, _ = cached_activations(
            ft,
            ft_ck.path,
            windows.x,
            [d.layer for d in with_cp],
            opts.out / "cache",
            opts.batch_size,
            opts.progress,
        )
        dashboards = {d.layer: diff_dashboards(d, acts, opts.dashboard_top) for d in with_cp}
    elapsed = time.perf_counter() - start

    r = Report(f"tnt model diff — {base_ck.name} → {ft_ck.name}", opts.out)
    r.heading("Summary")
    r.text(
        f"Base `{base_ck.path}`, fine-tuned `{ft_ck.path}` ({base.config.n_layer} layers, d = {base.config.d_model}, "
        f"MLP {base.config.mlp}). Activation statistics over {val.x.shape[0]} validation windows, first "
        f"{act.diff_norm.shape[1]} positions each. Mean KL(base ‖ fine-tuned) over those positions: "
        f"{float(act.kl_by_position.mean()):.4f} nats/token."
    )
    r.text(freq.describe(token_text, n_valid))
    for i, why in sorted(skipped.items()):
        r.note(f"Layer {i}: no weight diff ({why}).")
    r.figure(
        plots.plot_token_readouts(
            [("mean change of p(next token), all positions", act.prob_change)],
            "mean p_ft − p_base (probability)",
            "Output level: where the fine-tune moved probability mass on validation text",
            n_tokens=opts.top_k,
        ),
        "prob_change",
        "Tokens whose next-token probability the fine-tune raised (blue) or lowered (red) most, averaged over "
        "validation positions.",
    )

    r.heading("Weight-based diff (CP of B_ft − B_base)")
    if diffs:
        r.figure(
            plots.plot_weight_diff_overview(diffs),
            "weight_diff_overview",
            "Left: size of each layer's change relative to the base tensor. Right: relative error of the rank-r "
            "ALS compression of the difference: a curve that drops fast means a low-rank (few-feature) change.",
        )
        r.table(
            Table(
                ["layer", "‖D‖/‖B_base‖", f"rel. error at rank {opts.rank}", "note"],
                [[str(d.layer), f"{d.relative_change:.4f}", f"{d.rel_error:.3f}", d.note] for d in diffs],
                "Weight differences per layer (norm gains folded in)",
            )
        )
    for d in diffs:
        if not d.components:
            continue
        r.heading(f"Layer {d.layer}: top terms of the compressed difference", level=3)
        r.figure(
            plots.plot_diff_components(d, n_tokens=5),
            f"layer{d.layer}_diff_terms",
            f"Layer {d.layer}: the largest rank-one terms λ a⊗b⊗c of the rank-{d.rank} CP of B_ft − B_base. Output "
            "a read through W_U (tokens whose logits the term writes), inputs b, c through W_E.",
        )
        r.table(diff_terms_table(d))
        if d.layer in dashboards:
            cards = dashboards[d.layer]
            r.text(
                f"Dashboards of these terms on the fine-tuned model's activations ({acts.n_positions:,} validation "
                "positions): activation λ(b·x̂)(c·x̂), the coefficient of the term's unit output direction a; the "
                "positions where it is largest in magnitude, as snippets (position's token highlighted)."
            )
            r.html(cards_html(cards, acts.tokens, token_text), cards_markdown(cards, acts.tokens, token_text))

    r.heading("Activation-based diff (mean residual difference on unrelated text)")
    r.figure(
        plots.plot_activation_diff(act),
        "activation_diff",
        "δ_p = mean over validation windows of h_ft − h_base at position p, after the embedding and after each "
        "block's MLP. Top: its norm and its direction compared with the mean over positions ≥ 1. Bottom: PCA of "
        "the per-window differences (uncentred, positions ≥ 1) and the output KL by position.",
    )
    blocks = [label for label in act.labels if label.endswith("mlp")]
    r.figure(
        plots.plot_token_readouts(
            [(f"δ after {label}, positions ≥ 1", act.mean_lens[label]) for label in blocks]
            + [(f"δ after {blocks[-1]}, position 0", act.first_lens[blocks[-1]])],
            "logit-lens score W_U·(g_f ⊙ δ)",
            "Logit lens of the mean activation difference",
        ),
        "activation_diff_lens",
        "The mean difference read through the unembedding, per block (positions ≥ 1 averaged) and at the first "
        "position.",
    )
    r.figure(
        plots.plot_token_readouts(
            [(f"PC {j + 1} ({float(act.pca_explained[j]):.0%})", top) for j, top in enumerate(act.pca_lens)],
            "logit-lens score W_U·(g_f ⊙ v)",
            f"Logit lens of the principal directions of h_ft − h_base after {act.pca_point} (sign arbitrary)",
        ),
        "activation_diff_pca_lens",
        "Principal directions of the per-window differences read through the unembedding.",
    )
    r.heading("Method")
    r.text(
        "Weight diff: decomp's `layer_diff_cp` gives B_ft − B_base exactly as a CP tensor of rank h_ft + h_base; "
        f"it is compressed to rank {opts.rank} with the implicit ALS ({opts.als_iters} iterations max) and "
        "reads the largest terms through the fine-tuned model's W_E and W_U·diag(g_f). Activation diff: residual "
        "streams of both models on the same validation windows; the first position is shown separately because "
        "it acts as an attention sink."
    )
    r.text(f"Computed in {elapsed:.1f} s.")
    return r.write()


def diff_terms_table(d: LayerWeightDiff) -> Table:
    """The token readouts of a weight diff's top terms λ a⊗b⊗c: output a through W_U, inputs b, c through W_E."""
    return Table(
        [
            "term",
            "magnitude",
            "output W_U·a highest",
            "output lowest",
            "input W_E·b highest",
            "input W_E·c highest",
        ],
        [
            [
                str(n + 1),
                f"{c.magnitude:.3g}",
                _tokens(c.output.positive),
                _tokens(c.output.negative),
                _tokens(c.inputs[0].positive),
                _tokens(c.inputs[1].positive) if len(c.inputs) > 1 else "",
            ]
            for n, c in enumerate(d.components)
        ],
        f"Layer {d.layer}: token readouts (signs of a term's factors are defined only jointly)",
        mono_columns=(2, 3, 4, 5),
    )


def _tokens(entries) -> str:
    return " ".join(f"'{e.text}'" for e in entries[:5])


if __name__ == "__main__":  # the parser lives in analysis.commands with every other command line
    from analysis.commands import diff_main
    from errors import run_cli

    sys.exit(run_cli(diff_main, status=2))
