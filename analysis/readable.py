"""The parts of the report that tie eigenvectors and components to data, so that people can read them.

- Token frequency: counts of every token in the training shards; readouts through W_E list only tokens seen at
  least ``min_count`` times, each with its count (`analysis.tokens.TokenFrequency`).
- One cached activation pass over validation windows (`analysis.activations`): each bilinear layer's x̂.
- Mean layer input per token on data, m_t = mean x̂ over the positions holding t: a second readout of every
  eigenvector (m_t·v), since attention has already mixed the embeddings that W_E·v reads.
- Dashboards (`analysis.dashboards`): for every read-out eigenvector v of Q(u) the positions with the largest
  |v·x̂| (contribution λ(v·x̂)²), and for the largest components of the smallest-rank CP compression of each
  layer the positions with the largest |λ(b·z)(c·z)|; snippets of the windows and a histogram.
- Data-weighted truncation (`analysis.truncation`): explained variance of u·MLP by the top-k eigenvectors on
  the activation pass, and the KL of the per-output-token truncation.
- Two stacked bilinear layers (`analysis.composition`, `decomp.two_layer`).

`prepare` runs before the spectra (they need the frequency mask and mean inputs), `analyse` after the
compressions; the render functions add their sections to a `Report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from analysis import plots
from analysis.activations import Activations, cached_activations
from analysis.checkpoint import Checkpoint, find_files
from analysis.composition import LayerPairComposition, layer_pair_composition
from analysis.dashboards import Dashboard, build_dashboard, cards_html, cards_markdown
from analysis.faithfulness import LayerFaithfulness, Replacement
from analysis.html import Report, Table
from analysis.model_diff import LayerWeightDiff
from analysis.spectra import LayerSpectra, readout_tables
from analysis.tokens import TokenFrequency, TokenText
from analysis.truncation import TokenTruncation, explained_variance, per_token_truncation
from analysis.valdata import ValTokens, load_val_tokens, token_counts
from decomp import Eigendecomposition, TopTokens, cp_from_model, cp_normalize, eigendecompose, token_direction
from decomp.tokens import input_tokens
from model import GPT

MEAN_INPUT_MIN_COUNT = 5  # a token's mean layer input is shown only from at least this many positions
ACT_VALUES = (
    2**24
)  # default activation pass: at most this many cached values (positions × d × layers, 32 MiB)
TRUNC_COST = 1024 * 128**3  # default per-token truncation: at most this many d³ eigendecompositions' worth


def default_act_tokens(d: int, n_layers: int) -> int:
    """32,768 tokens for the 4×128 demo; fewer for wider or deeper models (the cache holds x̂ of every layer)."""
    return max(1, min(32768, ACT_VALUES // max(1, d * n_layers)))


def default_trunc_tokens(d: int) -> int:
    """1024 tokens at d = 128; fewer for larger d (one d×d eigendecomposition per token and layer, O(d³))."""
    return max(16, min(1024, TRUNC_COST // d**3))


@dataclass
class ReadableOptions:
    """The flags of these stages (see ``python -m analysis --help``)."""

    min_count: int = 20
    train_files: str | None = None
    count_tokens: int = 20_000_000
    act_tokens: int | None = None  # None: default_act_tokens
    dashboard_top: int = 8
    dashboard_components: int = 6
    context: tuple[int, int] = (12, 4)
    trunc_tokens: int | None = None  # None: default_trunc_tokens; 0: skip
    two_layer: list[int] | None = None
    two_layer_ranks: tuple[int, ...] = (16, 64)
    cache: bool = True


@dataclass
class LayerReadable:
    """eigen: {(token, eigen index): dashboard}; components: dashboards of CP components of the rank
    ``component_rank`` compression; explained: {token: EV(k), k = 0..d}; token_truncation: KL points."""

    eigen: dict[tuple[int, int], Dashboard] = field(default_factory=dict)
    components: list[Dashboard] = field(default_factory=list)
    component_rank: int | None = None
    explained: dict[int, torch.Tensor] = field(default_factory=dict)
    random_basis: dict[int, torch.Tensor] = field(default_factory=dict)
    token_truncation: TokenTruncation | None = None


@dataclass
class ReadableResults:
    freq: TokenFrequency
    acts: Activations
    acts_how: str
    context: tuple[int, int] = (12, 4)
    mean_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    layers: dict[int, LayerReadable] = field(default_factory=dict)
    compositions: list[LayerPairComposition] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ stages


def token_frequency(
    ckpt: Checkpoint, ro: ReadableOptions, val_files: list[Path], n_rows: int
) -> TokenFrequency:
    """Counts over the first ``count_tokens`` tokens of the training shards (--train-files or the checkpoint's
    train.train_files); the validation shards when no training shard is found (said in ``source``)."""
    pattern = ro.train_files or ckpt.train_config.get("train_files")
    files = find_files(pattern, [Path.cwd(), *ckpt.path.resolve().parents]) if pattern else []
    source = f"the training shards ({pattern})"
    if not files:
        files, source = val_files, "the validation shards (no training shard found; pass --train-files)"
    counts = token_counts(files, ckpt.vocab, n_rows, ro.count_tokens)
    return TokenFrequency(counts, int(counts.sum()), source, ro.min_count)


def prepare(
    ckpt: Checkpoint,
    ro: ReadableOptions,
    layers: list[int],
    val_files: list[Path],
    out: Path,
    batch_size: int,
    progress: bool,
) -> ReadableResults:
    """Token frequencies, the (cached) activation pass over ``act_tokens`` validation tokens, mean inputs."""
    model = ckpt.model
    n_rows = model.config.vocab_size
    freq = token_frequency(ckpt, ro, val_files, n_rows)
    act_tokens = ro.act_tokens or default_act_tokens(model.config.d_model, len(layers))
    windows = load_val_tokens(val_files, ckpt.seq_len, max(act_tokens, ckpt.seq_len), ckpt.vocab, n_rows)
    cache_dir = out / "cache" if ro.cache else None
    acts, how = cached_activations(model, ckpt.path, windows.x, layers, cache_dir, batch_size, progress)
    res = ReadableResults(freq, acts, how, ro.context)
    for i in layers:
        means, counts = acts.mean_input_by_token(i, n_rows)
        res.mean_inputs[i] = (means, (counts >= MEAN_INPUT_MIN_COUNT) & freq.allowed)
    return res


def spectra_inputs(rd: ReadableResults | None, layer: int) -> dict:
    """Keyword arguments of `analysis.spectra.layer_spectra` for ``layer``."""
    if rd is None:
        return {}
    means, keep = rd.mean_inputs[layer]
    return {"allowed": rd.freq.allowed, "mean_inputs": means, "mean_allowed": keep}


def _tokens(tt: TopTokens, freq: TokenFrequency, n: int = 4, negative: bool = False) -> str:
    entries = tt.negative if negative else tt.positive
    return " ".join(f"'{e.text}'×{freq.count(e.token)}" for e in entries[:n])


def eigen_dashboards(
    spec: LayerSpectra, acts: Activations, freq: TokenFrequency, n_top: int
) -> dict[tuple[int, int], Dashboard]:
    """A dashboard of v·x̂ for every read-out eigenvector of every token of ``spec``."""
    x = acts.xhat[spec.layer]
    out = {}
    for ts in spec.tokens:
        for j, ro in enumerate(ts.readouts):
            v = ts.vectors[:, j].to(x)
            lam = ro.eigenvalue
            lines = [
                f"Ê·v: {_tokens(ro.inputs, freq)} | lowest {_tokens(ro.inputs, freq, negative=True)}",
                f"W_U·B(v,v): {' '.join(repr(e.text) for e in ro.outputs.positive[:4])}",
            ]
            if ts.mean_input_readouts is not None:
                lines.insert(1, f"mean input·v: {_tokens(ts.mean_input_readouts[j], freq)}")
            out[(ts.token, j)] = build_dashboard(
                f"dash-L{spec.layer}-t{ts.token}-v{j + 1}",
                f"Layer {spec.layer} · Q({ts.label}) · v{j + 1} · λ = {lam:+.3g}",
                lines,
                x @ v,
                n_top,
                "v·x̂",
                lambda a, lam=lam: lam * a**2,
                "λ(v·x̂)²",
            )
    return out


def smallest_compression(reps: list[Replacement]) -> Replacement | None:
    """The lowest-rank inexact ALS replacement of a layer (its components are the fewest, most compressed)."""
    als = [r for r in reps if r.family == "als" and not r.exact]
    return min(als, key=lambda r: r.param) if als else None


def component_dashboards(
    model: GPT,
    layer: int,
    rep: Replacement,
    acts: Activations,
    freq: TokenFrequency,
    token_text: TokenText,
    n_valid: int,
    n_components: int,
    n_top: int,
) -> list[Dashboard]:
    """Dashboards of the largest components λ a⊗b⊗c of a CP compression acting on z = g ⊙ x̂ (unit factors):
    activation λ Π_j (b_j·z), the coefficient of the unit output direction a."""
    cp = cp_normalize(rep.cp)
    gain = model.mlp_norm_gain(layer).detach().double()
    w_e, w_u = readout_tables(model, n_valid)
    allowed = freq.allowed[:n_valid]
    z = acts.xhat[layer].double() * gain
    order = cp.weights.abs().argsort(descending=True)[:n_components]
    out = []
    for n, r in enumerate(order.tolist()):
        act = cp.weights[r] * torch.stack([z @ f[:, r] for f in cp.factors[1:]]).prod(0)
        out_tokens = (w_u @ cp.factors[0][:, r]).topk(4).indices
        lines = [f"output W_U·a: {' '.join(token_text.label(int(t)) for t in out_tokens)}"]
        for j, f in enumerate(cp.factors[1:]):
            inp = input_tokens(gain * f[:, r], w_e, 4, token_text.display, allowed)
            lines.append(f"input {'bcdefg'[j]} (Ê·(g⊙{'bcdefg'[j]})): {_tokens(inp, freq)}")
        out.append(
            build_dashboard(
                f"dash-L{layer}-c{n + 1}",
                f"Layer {layer} · rank-{rep.param} CP component {n + 1} · λ = {float(cp.weights[r]):+.3g}",
                lines,
                act.float(),
                n_top,
                "λ·Π(b·z)",
            )
        )
    return out


def diff_dashboards(diff: LayerWeightDiff, acts: Activations, n_top: int) -> list[Dashboard]:
    """Dashboards of the read-out terms λ a⊗b⊗c of a compressed weight diff (norm-folded: it acts on x̂):
    activation λ Π_j (b_j·x̂) on the given (fine-tuned model's) activations."""
    cp = diff.cp
    x = acts.xhat[diff.layer].to(cp.weights)
    out = []
    for n, comp in enumerate(diff.components):
        r = comp.index
        act = cp.weights[r] * torch.stack([x @ f[:, r] for f in cp.factors[1:]]).prod(0)
        lines = [
            f"output W_U·a: {' '.join(repr(e.text) for e in comp.output.positive[:4])} | lowest "
            + " ".join(repr(e.text) for e in comp.output.negative[:4]),
            f"input W_E·b: {' '.join(repr(e.text) for e in comp.inputs[0].positive[:4])}",
        ]
        out.append(
            build_dashboard(
                f"diff-L{diff.layer}-c{n + 1}",
                f"Layer {diff.layer} · diff term {n + 1} · magnitude {comp.magnitude:.3g}",
                lines,
                act.float(),
                n_top,
                "λ·Π(b·x̂)",
            )
        )
    return out


def analyse(
    rd: ReadableResults,
    ro: ReadableOptions,
    model: GPT,
    spectra: list[LayerSpectra],
    reps: dict[int, list[Replacement]],
    val: ValTokens,
    token_text: TokenText,
    n_valid: int,
    bilinear: list[int],
    ks: list[int],
    batch_size: int,
    seed: int,
    progress: bool,
) -> None:
    """Dashboards, data-weighted truncation and two-layer compositions (fills rd.layers, rd.compositions)."""
    acts = rd.acts
    n_trunc = default_trunc_tokens(model.config.d_model) if ro.trunc_tokens is None else ro.trunc_tokens
    trunc_ids = [int(t) for t in rd.freq.counts[:n_valid].topk(min(n_trunc, n_valid)).indices]
    for spec in tqdm(spectra, desc="dashboards and data truncation", disable=not progress):
        i = spec.layer
        lr = rd.layers.setdefault(i, LayerReadable())
        lr.eigen = eigen_dashboards(spec, acts, rd.freq, ro.dashboard_top)
        cp = cp_from_model(model, i, fold_norm=True, dtype=torch.float64)
        g_f = model.final_norm_gain().detach().double()
        x = acts.flat(i).double()
        for ts in spec.tokens:
            eig = eigendecompose(cp, token_direction(model.w_u.detach().double(), ts.token, g_f))
            lr.explained[ts.token] = explained_variance(eig, x)
            # baseline: the same eigenvalues on a random orthonormal basis (x̂ is far from isotropic, so even
            # random directions explain some of the variance)
            gen = torch.Generator().manual_seed(seed + 1000 * i + ts.token)
            basis = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=gen, dtype=x.dtype))[0]
            lr.random_basis[ts.token] = explained_variance(
                Eigendecomposition(eig.values, basis, eig.frobenius_sq), x
            )
    if n_trunc > 0 and spectra:
        layers = [spec.layer for spec in spectra]
        for i, tt in per_token_truncation(
            model, val, layers, ks, trunc_ids, batch_size, seed, progress
        ).items():
            rd.layers[i].token_truncation = tt
    for i, layer_reps in reps.items():
        rep = smallest_compression(layer_reps)
        if rep is None or i not in acts.xhat:
            continue
        lr = rd.layers.setdefault(i, LayerReadable())
        lr.component_rank = rep.param
        lr.components = component_dashboards(
            model, i, rep, acts, rd.freq, token_text, n_valid, ro.dashboard_components, ro.dashboard_top
        )
    firsts = [i for i in bilinear if i + 1 in bilinear] if ro.two_layer is None else ro.two_layer
    w_e, _ = readout_tables(model, n_valid)
    for i in tqdm(firsts, desc="two-layer tensors", disable=not progress):
        rd.compositions.append(
            layer_pair_composition(
                model,
                i,
                acts,
                spectra[0].tokens[0].token,
                w_e,
                rd.freq.allowed[:n_valid],
                token_text.display,
                ro.two_layer_ranks,
            )
        )


# ------------------------------------------------------------------------------------------ page


def summary_text(rd: ReadableResults, token_text: TokenText, n_valid: int) -> str:
    acts = rd.acts
    return (
        rd.freq.describe(token_text, n_valid)
        + f" Dashboards and data-weighted curves use one activation pass over {acts.n_positions:,} validation "
        f"positions ({acts.tokens.shape[0]} windows of {acts.tokens.shape[1]}; "
        + ("read from the cache" if rd.acts_how == "cache" else "computed and cached under cache/")
        + ")."
    )


def method_text(rd: ReadableResults | None) -> str | None:
    if rd is None:
        return None
    return (
        "Readable eigenvectors: readouts through W_E use ê_t = e_t/rms(e_t) and list only tokens seen at least "
        f"{rd.freq.min_count} times in {rd.freq.source}; the mean-layer-input readout scores m_t·v with m_t the "
        f"mean x̂ at the layer over the activation-pass positions holding t (tokens with ≥ {MEAN_INPUT_MIN_COUNT} "
        "such positions). Dashboards rank positions by |v·x̂| (eigenvectors; contribution λ(v·x̂)²) or by "
        "|λ(b·z)(c·z)| (CP components). The data-weighted truncation curve is 1 − EV(k), EV(k) = 1 − "
        "Var_p(y − y_k)/Var_p(y) with y_p = u·MLP(x_p) = x̂_pᵀQx̂_p and y_k its top-k eigen-truncation; its "
        "baseline puts the same eigenvalues on a random orthonormal basis (seeded). The "
        "per-output-token truncation changes, for each of the most frequent tokens t, only this layer's direct "
        "contribution to logit t: logit_t += (y_t,k − y_t)/rms(final residual), before the soft-cap."
    )


def readout_table(spec: LayerSpectra, rd: ReadableResults | None) -> Table:
    """The eigenvector readout table: W_E (frequent tokens, ×count), mean layer input, W_U·B(v,v), dashboard."""
    freq = rd.freq if rd is not None else None
    lr = rd.layers.get(spec.layer) if rd is not None else None
    rows, links = [], {}

    def fmt(entries) -> str:
        if freq is None:
            return " ".join(f"'{e.text}'" for e in entries[:5])
        return " ".join(f"'{e.text}'×{freq.count(e.token)}" for e in entries[:5])

    for ts in spec.tokens:
        for j, ro in enumerate(ts.readouts):
            mean = ts.mean_input_readouts[j] if ts.mean_input_readouts is not None else None
            row = [
                ts.label,
                f"v{ro.index + 1}",
                f"{ro.eigenvalue:+.3g}",
                fmt(ro.inputs.positive),
                fmt(ro.inputs.negative),
                fmt(mean.positive) + " | " + fmt(mean.negative) if mean is not None else "—",
                " ".join(f"'{e.text}'" for e in ro.outputs.positive[:5]),
            ]
            if lr is not None and (ts.token, j) in lr.eigen:
                row.append("contexts →")
                links[(len(rows), len(row) - 1)] = "#" + lr.eigen[(ts.token, j)].anchor
            rows.append(row)
    header = [
        "output token",
        "eigvec",
        "λ",
        "inputs: Ê·v highest",
        "inputs: Ê·v lowest",
        "mean layer input·v: highest | lowest",
        "outputs: W_U·B(v,v) highest",
    ] + (["dashboard"] if lr is not None else [])
    caption = f"Layer {spec.layer}: token readouts of the leading eigenvectors" + (
        f" (input tokens seen ≥ {freq.min_count} times in training, ×count)"
        if freq is not None and freq.min_count
        else ""
    )
    return Table(header, rows, caption, mono_columns=(0, 3, 4, 5, 6), links=links)


def truncation_figure(
    r: Report, spec: LayerSpectra, faith: LayerFaithfulness | None, rd: ReadableResults | None
) -> None:
    lr = rd.layers.get(spec.layer) if rd is not None else None
    i = spec.layer
    caption = (
        f"Layer {i}: truncation curves. Left: relative error ‖Q − Q_k‖_F/‖Q‖_F of Q(u) keeping its top-k "
        "eigenpairs (solid)"
    )
    if lr is not None and lr.explained:
        caption += (
            f" and, on {rd.acts.n_positions:,} validation positions, the variance of u·MLP left unexplained by them, "
            "1 − EV(k) (dashed, same colour): the data-weighted curve; dotted: the same for a matrix with the same "
            "eigenvalues on random orthonormal eigenvectors, the level that says nothing about the eigenvectors"
        )
    caption += (
        ". Right: KL of the whole MLP truncated to k eigencomponents per output direction of P (labels: "
    )
    caption += "relative error of the symmetric tensor)"
    if lr is not None and lr.token_truncation is not None:
        tt = lr.token_truncation
        caption += (
            f", and of the per-output-token truncation (direct path): each of the {len(tt.tokens):,} most frequent "
            f"tokens (p-mass {tt.mass:.1%} of the model's predictions) keeps only the top-k eigencomponents of its own "
            "Q(u_t) in this layer's direct contribution to its logit, with its own noise floor (random logit "
            "perturbations of the same norm)"
        )
    r.figure(
        plots.plot_truncation(
            spec,
            faith,
            lr.explained if lr else None,
            lr.token_truncation if lr else None,
            lr.random_basis if lr else None,
        ),
        f"layer{i}_truncation",
        caption + ".",
    )


def dashboards_section(r: Report, layer: int, rd: ReadableResults | None, token_text: TokenText) -> None:
    lr = rd.layers.get(layer) if rd is not None else None
    if lr is None:
        return
    before, after = rd.context
    tokens = rd.acts.tokens
    if lr.eigen:
        cards = list(lr.eigen.values())
        r.heading(f"Layer {layer}: dashboards of the leading eigenvectors", level=3)
        r.text(
            "Each card: the eigenvector's token readouts, the histogram of v·x̂ over the validation positions "
            "(red line: 0), and the positions with the largest |v·x̂| as snippets of their window (the position's "
            "token highlighted, ↵ = newline), with v·x̂ and its contribution λ(v·x̂)² to u·MLP."
        )
        r.html(
            cards_html(cards, tokens, token_text, before, after),
            cards_markdown(cards, tokens, token_text, before, after),
        )
    if lr.components:
        r.heading(f"Layer {layer}: dashboards of the rank-{lr.component_rank} CP components", level=3)
        r.text(
            f"The {len(lr.components)} largest components λ a⊗b⊗c (unit factors) of the rank-{lr.component_rank} "
            "ALS compression of this layer, acting on z = N(x): activation λ(b·z)(c·z), the coefficient of its "
            "unit output direction a in the compressed MLP output."
        )
        r.html(
            cards_html(lr.components, tokens, token_text, before, after),
            cards_markdown(lr.components, tokens, token_text, before, after),
        )


def composition_section(r: Report, rd: ReadableResults | None, token_text: TokenText) -> None:
    if rd is None or not rd.compositions:
        return
    freq = rd.freq
    r.heading("Two stacked bilinear layers")
    r.text(
        "Layer L+1's MLP applied to layer L's MLP output through the residual stream is an exact polynomial in "
        "layer L's normalised input x̂: B2(x̂ + B1(x̂,x̂)) = T3(x̂,x̂) + T4(x̂,x̂,x̂) + T5(x̂,x̂,x̂,x̂), tensors of "
        "orders 3, 4 and 5 (`decomp.two_layer`), each kept as a tensor network and never made dense (T5 would "
        "have d⁵ entries; as CP its rank would be h²·h). Norms between the layers: at each position the residual "
        "carries s·x̂ and layer L+1 divides by ρ (s, ρ: rms of `resid_mid` at L and L+1), so the orders carry "
        "s²/ρ², s/ρ², 1/ρ²; the table scales each order by their means c_k over the activation pass (block "
        "L+1's attention left out). ‖T_k‖ is the Frobenius norm of each order's network as written (implicit)."
    )
    rows = []
    for c in rd.compositions:
        for k in (3, 4, 5):
            rows.append(
                [
                    f"{c.first} → {c.first + 1}",
                    str(k),
                    f"{c.scales[k]:.3g}",
                    f"{c.norms[k]:.3g}",
                    f"{c.scales[k] * c.norms[k]:.3g}",
                    f"{c.data_size[k]:.3g}",
                    ", ".join(f"r={rk}: {e:.3f}" for rk, e in c.als.get(k, [])),
                    f"{c.explained:.3f} (‖MLP‖ {c.actual_size:.3g})" if k == 3 else "",
                ]
            )
    r.table(
        Table(
            [
                "layers",
                "order",
                "scale c_k (data)",
                "‖T_k‖",
                "c_k‖T_k‖",
                "mean ‖c_k T_k(x̂)‖ on data",
                "implicit ALS rel. error",
                "variance of MLP_{L+1} explained",
            ],
            rows,
            "How much of the composition each order carries (the last column: the per-position polynomial "
            "against layer L+1's actual MLP output on validation data; the rest is block L+1's attention)",
        )
    )
    for c in rd.compositions:
        rows = []
        for d in c.readout:
            through = " ; ".join(f"λ={lam:+.2g}: {_tokens(tt, freq, 3)}" for lam, tt in d.through)
            rows.append(
                [f"w{d.direction.index + 1}", f"{d.direction.value:+.3g}", _tokens(d.direct, freq), through]
            )
        r.table(
            Table(
                [
                    "eigvec of Q2(u)",
                    "μ",
                    "order 3: Ê·w (direct)",
                    "orders 4, 5: eigenvectors of Q1(w) read through Ê",
                ],
                rows,
                f"Layers {c.first} → {c.first + 1}: composed readout for u = {token_text.label(c.token)}. u·T3 = "
                "Σ μ_i (w_i·x̂)², u·T4 = 2Σ μ_i (w_i·x̂)(x̂ᵀQ1(w_i)x̂), u·T5 = Σ μ_i (x̂ᵀQ1(w_i)x̂)²",
                mono_columns=(2, 3),
            )
        )


def to_json(rd: ReadableResults | None) -> dict | None:
    if rd is None:
        return None
    return {
        "frequency": {
            "min_count": rd.freq.min_count,
            "source": rd.freq.source,
            "n_tokens": rd.freq.n_tokens,
            "kept": int(rd.freq.allowed.sum()),
        },
        "activation_positions": rd.acts.n_positions,
        "layers": {
            str(i): {
                "explained_variance": {str(t): ev[:33].tolist() for t, ev in lr.explained.items()},
                "explained_variance_random_basis": {
                    str(t): ev[:33].tolist() for t, ev in lr.random_basis.items()
                },
                "token_truncation": (
                    {
                        "mass": lr.token_truncation.mass,
                        "n_tokens": len(lr.token_truncation.tokens),
                        "points": [vars(p) for p in lr.token_truncation.points],
                    }
                    if lr.token_truncation
                    else None
                ),
                "eigen_top_contexts": {
                    f"{t}:v{j + 1}": [[c.seq, c.pos, c.value] for c in dash.top]
                    for (t, j), dash in lr.eigen.items()
                },
            }
            for i, lr in rd.layers.items()
        },
        "two_layer": [
            {
                "first": c.first,
                "scales": vars(c.scales),
                "norms": c.norms,
                "data_size": c.data_size,
                "explained": c.explained,
                "als": c.als,
            }
            for c in rd.compositions
        ],
    }
