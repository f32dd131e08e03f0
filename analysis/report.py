"""The single-checkpoint report (``python -m analysis``): what each bilinear layer computes, how compressible it
is, how faithful the compressions are under KL, the logit lens, and steering through the layers.

`build_report(ReportOptions(...))` runs every stage and writes ``index.html``, ``report.md``, ``summary.json``
and ``figures/*.png`` into the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from analysis import plots, readable
from analysis.checkpoint import Checkpoint, load_checkpoint
from analysis.cli import torch_threads
from analysis.errors import AnalysisError
from analysis.faithfulness import LayerFaithfulness, build_replacements, cp_layer_kinds, evaluate_replacements
from analysis.html import Report, Table
from analysis.logit_lens import LogitLens, logit_lens
from analysis.readable import ReadableOptions, ReadableResults
from analysis.spectra import LayerSpectra, layer_spectra, top_eigenvector
from analysis.steering import SteeringCurve, steering_sweep
from analysis.tokens import TokenText, display_text, parse_token_texts
from analysis.valdata import load_val_tokens, token_counts
from errors import atomic_write_bytes

DEFAULT_RANKS = (16, 64, 160, 256)
DEFAULT_KS = (1, 8)
FREQUENCY_TOKENS = 1_000_000  # tokens of the validation shards counted to find the most frequent ones


@dataclass
class ReportOptions:
    """Inputs and budgets of the report (the command-line flags of ``python -m analysis``)."""

    checkpoint: str
    out: Path
    val_files: str | None = None
    val_tokens: int = 2048
    batch_size: int = 8
    tokens: list[str] | None = None
    n_tokens: int = 4
    ranks: tuple[int, ...] = DEFAULT_RANKS
    ks: tuple[int, ...] = DEFAULT_KS
    als_iters: int = 40
    noise_seeds: int = 2
    n_eigen: int = 3
    n_top: int = 6
    layers: list[int] | None = None
    steer_sequences: int = 4
    steer_alphas: int = 13
    seed: int = 0
    threads: int = 1
    progress: bool = True
    readable: ReadableOptions | None = field(default_factory=ReadableOptions)  # None: skip those stages


@dataclass
class ReportResults:
    checkpoint: Checkpoint
    tokens: list[int]
    cp_layers: list[int]
    skipped: dict[int, str]
    spectra: list[LayerSpectra] = field(default_factory=list)
    faithfulness: dict[int, LayerFaithfulness] = field(default_factory=dict)
    lens: LogitLens | None = None
    steering: list[SteeringCurve] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    n_val_tokens: int = 0
    readable: ReadableResults | None = None


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = time.perf_counter() - self.start


def n_valid_tokens(ckpt: Checkpoint) -> int:
    """Rows of the embedding that are real tokens (the rest is padding to a multiple of 64)."""
    size = ckpt.tokenizer.vocab_size if ckpt.tokenizer is not None else ckpt.vocab.size
    return min(size, ckpt.model.config.vocab_size)


def choose_tokens(
    opts: ReportOptions, ckpt: Checkpoint, token_text: TokenText, files: list[Path]
) -> list[int]:
    """Model ids of --tokens, or the --n-tokens most frequent tokens of the validation shards."""
    if opts.tokens:
        return parse_token_texts(opts.tokens, token_text)
    counts = token_counts(files, ckpt.vocab, ckpt.model.config.vocab_size, FREQUENCY_TOKENS)
    top = counts.topk(min(opts.n_tokens, int((counts > 0).sum())))
    return [int(i) for i in top.indices]


def run_analyses(opts: ReportOptions) -> ReportResults:
    ckpt = load_checkpoint(opts.checkpoint)
    model = ckpt.model
    torch.manual_seed(opts.seed)
    token_text = TokenText(ckpt.vocab, model.config.vocab_size, ckpt.tokenizer)
    cp_layers, skipped = cp_layer_kinds(model)
    if not cp_layers:
        kinds = sorted({model.mlp_kind(i) for i in range(model.config.n_layer)})
        raise AnalysisError(
            f"{ckpt.path}: no bilinear or multilinear MLP layer (MLP kind {', '.join(kinds)}); the weight-based "
            "analyses need layers with an exact CP form (train with --mlp bilinear or multilinear)"
        )
    if opts.layers is not None:
        bad = [i for i in opts.layers if i not in cp_layers]
        if bad:
            raise AnalysisError(f"--layers {bad}: not bilinear/multilinear layers (those are {cp_layers})")
        cp_layers = list(opts.layers)
    bilinear = [i for i in cp_layers if model.mlp_order(i) == 2]
    files = ckpt.val_files(opts.val_files)
    n_valid = n_valid_tokens(ckpt)
    results = ReportResults(ckpt, [], cp_layers, skipped)
    t = results.timings

    with _Timer(t, "validation tokens"):
        val = load_val_tokens(files, ckpt.seq_len, opts.val_tokens, ckpt.vocab, model.config.vocab_size)
        results.tokens = choose_tokens(opts, ckpt, token_text, files)
        results.n_val_tokens = val.n_tokens
    rd, ro = None, opts.readable
    if ro is not None and bilinear:
        with _Timer(t, "token counts, activation pass"):
            rd = readable.prepare(ckpt, ro, bilinear, files, opts.out, opts.batch_size, opts.progress)
    results.readable = rd
    with _Timer(t, "spectra"):
        for i in tqdm(bilinear, desc="spectra of Q(u)", disable=not opts.progress):
            results.spectra.append(
                layer_spectra(
                    model,
                    i,
                    results.tokens,
                    token_text,
                    n_valid,
                    opts.n_eigen,
                    opts.n_top,
                    **readable.spectra_inputs(rd, i),
                )
            )
    with _Timer(t, "compression (ALS, top-k)"):
        reps = build_replacements(
            model, cp_layers, list(opts.ranks), list(opts.ks), opts.als_iters, opts.progress
        )
    with _Timer(t, "KL faithfulness"):
        results.faithfulness = evaluate_replacements(
            model, val, reps, opts.batch_size, opts.noise_seeds, opts.seed, opts.progress
        )
    if rd is not None:
        with _Timer(t, "dashboards, data truncation, two-layer tensors"):
            readable.analyse(
                rd,
                ro,
                model,
                results.spectra,
                reps,
                val,
                token_text,
                n_valid,
                bilinear,
                list(opts.ks),
                opts.batch_size,
                opts.seed,
                opts.progress,
            )
    with _Timer(t, "logit lens"):
        results.lens = logit_lens(model, val, opts.batch_size, n_valid)
    with _Timer(t, "steering"):
        x = val.x[: opts.steer_sequences]
        alphas = torch.logspace(-2, 1.5, opts.steer_alphas)
        token = results.tokens[0]
        for i in tqdm(bilinear, desc="steering", disable=not opts.progress):
            v, lam = top_eigenvector(model, i, token)
            desc = (
                f"s = leading eigenvector of Q({token_text.label(token)}) at layer {i} (λ = {lam:+.3g}), added at "
                f"blocks.{i}.hook_resid_mid; mean over {x.numel()} validation positions"
            )
            results.steering.append(steering_sweep(model, x, i, v, alphas, desc))
    return results


def build_report(opts: ReportOptions) -> Path:
    """Run every analysis and write the report; returns the path of index.html."""
    start = time.perf_counter()
    with torch_threads(opts.threads):
        res = run_analyses(opts)
        return write_report(opts, res, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ page


def write_report(opts: ReportOptions, res: ReportResults, elapsed: float) -> Path:
    ckpt, model = res.checkpoint, res.checkpoint.model
    cfg = model.config
    token_text = TokenText(ckpt.vocab, cfg.vocab_size, ckpt.tokenizer)
    r = Report(f"tnt analysis — {ckpt.name}", opts.out)
    spectra = {s.layer: s for s in res.spectra}
    steering = {c.layer: c for c in res.steering}

    r.heading("Summary")
    r.text(
        f"Checkpoint `{ckpt.path}`: {cfg.n_layer} layers, d = {cfg.d_model}, MLP {cfg.mlp} (h = {cfg.hidden}"
        f"{', order ' + str(cfg.order) if cfg.mlp == 'multilinear' else ''}), {cfg.vocab_size} embedding rows "
        f"({n_valid_tokens(ckpt)} real tokens). Validation: {res.n_val_tokens} tokens in windows of "
        f"{ckpt.seq_len}. Output tokens analysed: "
        + ", ".join(f"`{token_text.display(t)}`" for t in res.tokens)
        + (" (the most frequent validation tokens)." if not opts.tokens else " (chosen with --tokens).")
    )
    if res.readable is not None:
        r.text(readable.summary_text(res.readable, token_text, n_valid_tokens(ckpt)))
    for i, why in sorted(res.skipped.items()):
        r.note(f"Layer {i} skipped: {why}.")
    for i in res.cp_layers:
        if model.mlp_order(i) > 2:
            r.note(
                f"Layer {i} is multilinear of order {model.mlp_order(i)}: the CP-rank sweep and its KL are reported; "
                "interaction-matrix spectra, top-k truncation and steering need an order-2 (bilinear) layer."
            )
    r.table(summary_table(res))
    if res.spectra:
        r.figure(
            plots.plot_effective_ranks(res.spectra, cfg.d_model),
            "effective_ranks",
            "Effective rank (‖λ‖₁/‖λ‖₂)² of the interaction matrix Q(u) for each output token: how many input "
            "directions a token's logit reads quadratically.",
        )
    r.figure(
        plots.plot_faithfulness_overview(list(res.faithfulness.values())),
        "faithfulness_overview",
        "Left: KL(original ‖ model with one MLP replaced by its rank-r CP compression), per layer (solid), next "
        "to the noise floor (dashed): the original output plus random perturbations with the same per-position "
        "error norm. Right: their ratio; below 1 the compression errs in directions the network ignores.",
    )

    for i in res.cp_layers:
        r.heading(f"Layer {i}")
        if i in spectra:
            layer_spectra_section(r, spectra[i], res.faithfulness.get(i), res.readable)
        readable.dashboards_section(r, i, res.readable, token_text)
        if i in res.faithfulness:
            f = res.faithfulness[i]
            r.figure(
                plots.plot_rank_sweep(f, cfg.hidden),
                f"layer{i}_rank_sweep",
                f"Layer {i}: CP-rank sweep with decomp's implicit ALS ({opts.als_iters} iterations max). Left: "
                "relative errors of the tensor, of its symmetric part and of the MLP output on validation data. "
                "Middle: KL with the noise floor (mean ± std over seeds) and the mean-ablation ceiling. Right: "
                "validation loss with the compressed MLP.",
            )
            r.table(sweep_table(f))
        if i in steering:
            c = steering[i]
            r.figure(
                plots.plot_steering(c),
                f"layer{i}_steering",
                f"Layer {i}: steering. Measured change of the MLP output when α·s is added before the RMSNorm, "
                "against the no-norm prediction 2α·M_s z + α²·B(s,s) (norm scale frozen at the unsteered "
                "position). The norm makes the effect saturate at ‖B(ŝ,ŝ) − MLP(z)‖ and removes the part odd in α "
                "(the sign of α is lost).",
            )

    readable.composition_section(r, res.readable, token_text)
    if res.lens is not None:
        r.heading("Logit lens")
        r.figure(
            plots.plot_logit_lens(res.lens),
            "logit_lens",
            "The residual stream after each sublayer read through the final norm and the unembedding. The last "
            "point is the model's own output.",
        )
        r.figure(
            plots.plot_logit_lens_example(res.lens, token_text),
            "logit_lens_example",
            "Logit lens on one validation sequence: "
            + f"`{display_text(token_text.decode(res.lens.example_x[:16].tolist()))}`",
        )

    r.heading("Method")
    r.text(
        "Interaction matrices: Q(u) = ½(W'ᵀ diag(Pᵀu) V' + V'ᵀ diag(Pᵀu) W') with u = g_f ⊙ W_U[token] and the "
        "RMSNorm gain folded into W', V', so u·MLP(N(x)) = x̂ᵀQx̂ = Σ λ_i (v_i·x̂)² with x̂ = x/rms(x). Eigenvectors "
        "are read as inputs through W_E v and as outputs through W_U B(v,v)."
    )
    r.text(
        "Faithfulness: `blocks.i.hook_mlp_out` is replaced by the compressed CP tensor applied to the cached "
        "`blocks.i.ln2.hook_normalized`; KL(p_original ‖ p_modified) is averaged over validation positions. "
        "The noise floor adds, at every position, a random vector of the same norm as that position's "
        f"replacement error ({opts.noise_seeds} seeds). Top-k truncation keeps, for each left singular vector "
        "u_j of P, the k largest-|λ| eigencomponents of Q(u_j)."
    )
    if res.readable is not None:
        r.text(readable.method_text(res.readable))
    r.text(
        "Timings (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
        + f"; total {elapsed:.1f} before drawing."
    )
    index = r.write()
    atomic_write_bytes(
        opts.out / "summary.json", (json.dumps(summary_json(opts, res), indent=2) + "\n").encode()
    )
    return index


def layer_spectra_section(
    r: Report, spec: LayerSpectra, faith: LayerFaithfulness | None, rd: ReadableResults | None = None
) -> None:
    i = spec.layer
    r.figure(
        plots.plot_spectra(spec),
        f"layer{i}_spectra",
        f"Layer {i}: eigenvalues of Q(u) for each output token (left: the leading ones with their signs; right: "
        "the whole spectrum, |λ| on a log scale). Positive λ: inputs along v raise the token's logit; negative: "
        "they lower it (the contribution is λ(v·x̂)², whatever the sign of v·x̂).",
    )
    r.figure(
        plots.plot_eigen_readouts(spec),
        f"layer{i}_eigen_tokens",
        f"Layer {i}: input tokens whose embeddings align most (blue) and least (red) with each leading eigenvector.",
    )
    r.table(readable.readout_table(spec, rd))
    readable.truncation_figure(r, spec, faith, rd)


def summary_table(res: ReportResults) -> Table:
    rows = []
    for i in res.cp_layers:
        f = res.faithfulness.get(i)
        spec = next((s for s in res.spectra if s.layer == i), None)
        eff = ", ".join(f"{t.effective_rank:.1f}" for t in spec.tokens) if spec else "—"
        below = [p.param for p in f.family("als") if not p.exact and p.kl <= p.kl_noise] if f else []
        pts = [p for p in f.family("als") if not p.exact] if f else []
        best = min(pts, key=lambda p: p.kl) if pts else None
        rows.append(
            [
                str(i),
                res.checkpoint.model.mlp_kind(i),
                eff,
                f"{best.param}: {best.kl:.3g} (noise {best.kl_noise:.3g})" if best else "—",
                f"{f.kl_mean_ablation:.3g}" if f else "—",
                str(min(below)) if below else "none of those tested",
            ]
        )
    return Table(
        [
            "layer",
            "kind",
            "effective ranks (per token)",
            "largest tested rank: KL (noise floor)",
            "KL mean-ablated",
            "smallest rank with KL ≤ noise floor",
        ],
        rows,
        "Per-layer summary (KL in nats per token)",
    )


def sweep_table(f: LayerFaithfulness) -> Table:
    rows = [
        [
            p.label,
            f"{p.rel_error:.3f}",
            f"{p.sym_rel_error:.3f}",
            f"{p.rel_output_error:.3f}",
            f"{p.kl:.3g}",
            f"{p.kl_noise:.3g} ± {p.kl_noise_std:.2g}",
            f"{p.loss:.4f}",
        ]
        for fam in ("als", "truncation")
        for p in f.family(fam)
    ]
    return Table(
        [
            "replacement",
            "rel. err. tensor",
            "rel. err. symmetric",
            "rel. err. output",
            "KL",
            "noise-floor KL",
            "val loss",
        ],
        rows,
        f"Layer {f.layer}: replacements (original val loss {f.base_loss:.4f}, mean-ablation KL {f.kl_mean_ablation:.3g})",
    )


def summary_json(opts: ReportOptions, res: ReportResults) -> dict:
    """The report's numbers (options, tokens, spectra heads, faithfulness, logit lens, timings) for scripts."""
    token_text = TokenText(
        res.checkpoint.vocab, res.checkpoint.model.config.vocab_size, res.checkpoint.tokenizer
    )
    opts_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    return {
        "checkpoint": str(res.checkpoint.path),
        "options": opts_dict,
        "tokens": [{"id": t, "text": token_text.text(t)} for t in res.tokens],
        "skipped_layers": {str(k): v for k, v in res.skipped.items()},
        "spectra": {
            str(s.layer): [
                {"token": t.token, "effective_rank": t.effective_rank, "eigenvalues": t.values[:32].tolist()}
                for t in s.tokens
            ]
            for s in res.spectra
        },
        "faithfulness": {str(k): v.to_dict() for k, v in res.faithfulness.items()},
        "logit_lens": (
            {
                "labels": res.lens.labels,
                "loss": res.lens.loss.tolist(),
                "kl_to_final": res.lens.kl_to_final.tolist(),
            }
            if res.lens
            else None
        ),
        "readable": readable.to_json(res.readable),
        "timings_s": res.timings,
    }
