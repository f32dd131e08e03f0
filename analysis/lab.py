"""``python -m analysis.lab BASE FT [FT ...] --fact DIR --out DIR``: one report comparing the fine-tunes of a base.

For every fine-tune: its recipe (config.json "train" and "lora"), how strongly it learned the planted fact
(logit margins on the held-out prompts of DIR/prompts.json) against how much it disturbed unrelated text
(KL(base ‖ ft) and the loss change on validation windows); the orders of its weight difference per MLP and per
attention circuit (decomp.orders); its activation difference (first-position dominance, PCA, logit lens;
analysis.model_diff.activation_diff). For one fine-tune: the weight difference of each CP layer read as tokens
(analysis.model_diff.weight_diff) and steering the base with its activation difference (analysis.diff_steering).

Fact strength, per held-out prompt (context c ending in the speaker tag, planted line t_1..t_n), teacher-forced:

    margin = mean_j [ z_j(t_j) − max_{v ≠ t_j} z_j(v) ],    z_j = logits after c, t_1..t_{j−1} (real tokens only)

(> 0: the planted token is the top prediction) and, when the fact names the true competing completion u, at
the first token k where the planted and the true line differ: z_k(t_k) − z_k(u_k).

Models: the weight-based parts read the merged weights (model.safetensors); function-level metrics of a LoRA
fine-tune trained with a separator mask run its training-time model (model.io.load_model(dir, adapters=True)),
where the adapters act only after the separator.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from analysis.checkpoint import Checkpoint, load_checkpoint
from analysis.diff_steering import (
    DEFAULT_ALPHAS,
    SteeringResult,
    lens_hook,
    point_label,
    steer,
    steering_vector,
)
from analysis.errors import AnalysisError
from analysis.faithfulness import cp_layer_kinds
from analysis.model_diff import (
    ActivationDiff,
    LayerWeightDiff,
    activation_diff,
    check_comparable,
    weight_diff,
)
from analysis.readable import ReadableOptions, token_frequency
from analysis.report import n_valid_tokens
from analysis.tokens import TokenText
from analysis.valdata import ValTokens, load_val_tokens
from data.falsefact import PROMPTS_FILE, FalseFactError, read_prompts
from data.tokenizer import get_encoding
from data.vocab import VocabError
from decomp import CircuitOrders, DecompError, OrderShares, layer_order_shares, ov_orders, qk_orders
from model import GPT, CheckpointError
from model.io import load_trained_model

FACT_VAL_GLOB = "falsefact_val_*.bin"


@dataclass
class LabOptions:
    """Inputs and budgets of the lab report (the flags of ``python -m analysis.lab``)."""

    base: str
    finetunes: list[str]
    fact: Path
    out: Path
    names: list[str] | None = None
    val_files: str | None = None
    val_tokens: int = 4096  # 32 windows of 128: KL, loss change, activation diff
    positions: int | None = None  # positions per window of the activation diff (None: the whole window)
    fact_tokens: int = 4096  # windows of the false-fact validation shard (loss on the fine-tune's data)
    max_prompts: int = 64
    batch_size: int = 8
    weight_diff: int = 0  # index of the fine-tune whose CP weight differences are read as tokens
    rank: int = 4
    als_iters: int = 20
    n_components: int = 3
    top_k: int = 6
    min_count: int = 20
    steer: int = 0  # index of the steered fine-tune
    steer_layer: int | None = None  # None: the middle block, n_layer // 2
    steer_point: str = "resid_mid"
    steer_kind: str = "mean"
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    steer_tokens: int = 2048
    sample_tokens: int = 40
    threads: int = 1
    progress: bool = True


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class FactPrompt:
    """One prompt in model ids: context [n_c], then the scored tokens [n_t] (the planted line, or for a control
    the one true next token); ``text`` is the context as text (the sampling prompt)."""

    context: list[int]
    target: list[int]
    text: str = ""


@dataclass
class Fact:
    """The planted fact of a false-fact folder (data.falsefact's prompts.json, model ids).

    prompts: held-out contexts ending in the speaker tag, target = the planted line; controls: natural
    validation text ending in the trigger (e.g. " Duke of"), target = its true next token; answer_index: the
    position of the planted token in the line (after its prefix), planted / true: the planted and the true
    competing completion (None when the fact names none); val_files: the false-fact validation shards."""

    prompts: list[FactPrompt]
    controls: list[FactPrompt]
    description: str
    val_files: list[Path]
    path: Path
    answer_index: int | None = None
    planted: int | None = None
    true: int | None = None


def _get(obj: dict, key: str, path: Path, where: str, kind: type = str, required: bool = True):
    """obj[key], checked to be a non-empty ``kind``; errors name the file and the field."""
    if key not in obj or obj[key] is None:
        if required:
            raise AnalysisError(f"{path}: {where} has no {key!r} field")
        return None
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        raise AnalysisError(f"{path}: {where}.{key} must be a non-empty {kind.__name__}, got {value!r}"[:300])
    return value


def load_fact(directory: Path, ckpt: Checkpoint, max_prompts: int = 64) -> Fact:
    """Read DIR/prompts.json (data.falsefact: {"fact": {prefix, planted, true, ...}, "prompts": [{"context",
    "target"}, ...], "controls": [...]}) into model ids of ``ckpt``'s vocabulary. "controls" and the fact's
    "true" are optional. Errors name the file and the field."""
    directory = Path(directory)
    path = directory / PROMPTS_FILE
    try:
        obj = read_prompts(path)
    except FalseFactError as e:
        raise AnalysisError(f"{e} (--fact names the folder of python -m data falsefact --out DIR)") from e
    enc = get_encoding()

    def ids(text: str, where: str) -> list[int]:
        try:
            return ckpt.vocab.encode_tensor(
                torch.tensor(enc.encode_ordinary(text), dtype=torch.long)
            ).tolist()
        except VocabError as e:
            raise AnalysisError(f"{path}: {where} does not fit the base model's vocabulary: {e}") from e

    def items(key: str, required: bool) -> list[FactPrompt]:
        listed = _get(obj, key, path, "the file", list, required) or []
        if required and not listed:
            raise AnalysisError(f"{path}: {key!r} is empty")
        out = []
        for i, item in enumerate(listed[:max_prompts]):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise AnalysisError(f"{path}: {where} must be an object with 'context' and 'target'")
            context, target = _get(item, "context", path, where), _get(item, "target", path, where)
            out.append(FactPrompt(ids(context, f"{where}.context"), ids(target, f"{where}.target"), context))
        return out

    fact_obj = _get(obj, "fact", path, "the file", dict)
    prompts, controls = items("prompts", True), items("controls", False)
    prefix = _get(fact_obj, "prefix", path, "fact", required=False)
    planted = _get(fact_obj, "planted", path, "fact", required=False)
    true = _get(fact_obj, "true", path, "fact", required=False)
    fact = Fact(prompts, controls, "", sorted(directory.glob(FACT_VAL_GLOB)), path)
    shown = {
        k: fact_obj.get(k)
        for k in ("speaker", "prefix", "planted", "true")
        if isinstance(fact_obj.get(k), str)
    }
    fact.description = ", ".join(f"{k} {v!r}" for k, v in shown.items())
    if planted is not None and true is not None:
        single = [ids(planted, "fact.planted"), ids(true, "fact.true")]
        for what, t in zip(("planted", "true"), single, strict=True):
            if len(t) != 1:
                raise AnalysisError(
                    f"{path}: fact.{what} {fact_obj[what]!r} must be one token, it is {len(t)}"
                )
        fact.planted, fact.true = single[0][0], single[1][0]
        fact.answer_index = len(ids(prefix, "fact.prefix")) if prefix is not None else 0
    return fact


@dataclass
class Recipe:
    """How a fine-tune was trained, from its config.json."""

    kind: str  # "full" or "LoRA"
    rank: int | None = None
    targets: tuple[str, ...] = ()
    mask_token: int | None = None
    mix_frac: float = 0.0
    steps: int | None = None
    init_from: str = ""

    @property
    def masked(self) -> bool:
        return self.mask_token is not None

    def describe(self, token_text: TokenText) -> str:
        parts = [self.kind if self.kind == "full" else f"LoRA r={self.rank} ({','.join(self.targets)})"]
        if self.masked:
            parts.append(f"mask after {token_text.label(self.mask_token)}")
        parts.append(f"mix {self.mix_frac:g}" if self.mix_frac else "no mix")
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        return ", ".join(parts)


def read_recipe(ckpt: Checkpoint) -> Recipe:
    train, lora = ckpt.train_config, ckpt.config.get("lora")
    source = ckpt.path / "config.json"
    mix = float(train.get("mix_frac") or 0.0)
    steps = train.get("steps")
    init = str(train.get("init_from") or "")
    if lora is None:
        return Recipe("full", mix_frac=mix, steps=steps, init_from=init)
    if not isinstance(lora, dict) or not isinstance(lora.get("rank"), int):
        raise AnalysisError(f"{source}: 'lora' must be an object with an integer 'rank', got {lora!r}")
    return Recipe(
        "LoRA", lora["rank"], tuple(lora.get("targets") or ()), lora.get("mask_token"), mix, steps, init
    )


@dataclass
class Finetune:
    """A loaded fine-tune: ckpt.model has the merged weights, ``model`` computes its training-time function."""

    name: str
    ckpt: Checkpoint
    model: GPT
    recipe: Recipe


def load_finetune(path: str, name: str, base: Checkpoint) -> Finetune:
    ckpt = load_checkpoint(path)
    check_comparable(base.model, ckpt.model)
    if ckpt.vocab != base.vocab:
        raise AnalysisError(
            f"{ckpt.path / 'config.json'}: a different vocabulary from the base's ('vocab'); cannot compare"
        )
    recipe = read_recipe(ckpt)
    model = ckpt.model
    if recipe.masked:  # the merged weights act at every position; the trained model only after the separator
        try:
            model = load_trained_model(ckpt.path).float().eval()
        except CheckpointError as e:
            raise AnalysisError(str(e)) from e
        for p in model.parameters():
            p.requires_grad_(False)
    return Finetune(name, ckpt, model, recipe)


# ------------------------------------------------------------------------------------------ measures


@dataclass
class FactMargin:
    """margin: mean over prompts of the mean teacher-forced margin z(t_j) − max_{v≠t_j} z(v) over the planted
    line's tokens; accuracy: fraction of those tokens predicted top-1; competing: mean z(planted) − z(true) at
    the answer position of the prompts (None: the fact names no true completion); leak:
    z(planted) − z(true next token) at the end of the natural control contexts (how far the fact spread
    beyond its tag); per_prompt [n]."""

    margin: float
    accuracy: float
    competing: float | None
    leak: float | None
    per_prompt: torch.Tensor


def _scored_logits(
    model: GPT, prompts: list[FactPrompt], n_valid: int, seq_len: int, batch_size: int
) -> list[torch.Tensor]:
    """Per prompt the logits [n_t, n_valid] (float64) predicting its target tokens, teacher-forced.

    Contexts keep their last tokens so that context and target fit in ``seq_len``; rows are right-padded
    (causal attention: the padding never reaches a scored position)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            rows, first = [], []
            for p in chunk:
                ctx = p.context[-max(1, seq_len - len(p.target) + 1) :]
                rows.append(ctx + p.target[:-1])
                first.append(len(ctx) - 1)
            T = max(len(r) for r in rows)
            logits = model(torch.tensor([r + [0] * (T - len(r)) for r in rows]))
            for b, (f, p) in enumerate(zip(first, chunk, strict=True)):
                out.append(logits[b, f : f + len(p.target), :n_valid].double())
    return out


def fact_margin(model: GPT, fact: Fact, n_valid: int, seq_len: int, batch_size: int = 16) -> FactMargin:
    """The fact strength of ``model`` on the held-out prompts and the controls (see the module doc)."""
    per_prompt, competing, correct, n_tokens = [], [], 0, 0
    k, planted, true = fact.answer_index, fact.planted, fact.true
    for p, z in zip(
        fact.prompts, _scored_logits(model, fact.prompts, n_valid, seq_len, batch_size), strict=True
    ):
        tgt = torch.tensor(p.target)
        own = z.gather(1, tgt[:, None])[:, 0]
        other = z.scatter(1, tgt[:, None], -math.inf).max(1).values
        per_prompt.append(float((own - other).mean()))
        correct += int((own > other).sum())
        n_tokens += len(p.target)
        if planted is not None and k < len(p.target) and p.target[k] == planted:
            competing.append(float(z[k, planted] - z[k, true]))
    leak = []
    if planted is not None:
        controls = _scored_logits(model, fact.controls, n_valid, seq_len, batch_size)
        for p, z in zip(fact.controls, controls, strict=True):
            leak.append(float(z[0, planted] - z[0, p.target[0]]))  # the control's own true next token
    per = torch.tensor(per_prompt, dtype=torch.float64)
    return FactMargin(
        float(per.mean()),
        correct / max(n_tokens, 1),
        sum(competing) / len(competing) if competing else None,
        sum(leak) / len(leak) if leak else None,
        per,
    )


def mean_loss(model: GPT, data: ValTokens, batch_size: int) -> float:
    total = 0.0
    with torch.inference_mode():
        for x, y in data.batches(batch_size):
            total += float(F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="sum"))
    return total / data.n_tokens


def first_position_ratio(act: ActivationDiff, point: int = -1) -> float:
    """‖δ_0‖ / mean_{p≥1} ‖δ_p‖ at lens point ``point`` (-1: after the last block)."""
    norms = act.diff_norm[point]
    rest = float(norms[1:].mean())
    return float(norms[0]) / rest if rest > 0 else math.nan


@dataclass
class ComponentOrders:
    """The orders of one component's weight change: an MLP (OrderShares) or an attention circuit."""

    label: str  # 'L0 MLP', 'L0 QK', 'L0 OV'
    mlp: OrderShares | None = None
    circuit: CircuitOrders | None = None
    note: str = ""

    @property
    def is_zero(self) -> bool:
        item = self.mlp or self.circuit
        return item is None or item.is_zero

    @property
    def relative(self) -> float:
        if self.mlp is not None:
            return self.mlp.relative_diff
        if self.circuit is not None and self.circuit.base_norm > 0:
            return self.circuit.diff_norm / self.circuit.base_norm
        return math.nan

    def share(self, k: int) -> float:
        """‖order-k term‖ / ‖Δ‖ (NaN where unchanged or when the component has no such order)."""
        if self.is_zero:
            return math.nan
        if self.mlp is not None:
            return self.mlp.share(k) if k in self.mlp.orders else math.nan
        return {1: self.circuit.share("first"), 2: self.circuit.share("second")}.get(k, math.nan)

    def _first_terms(self) -> list[tuple[str, float]]:
        """[(name, ‖term‖ / ‖Δ‖)] of the first-order terms, one per changed factor."""
        if self.is_zero:
            return []
        if self.mlp is not None:
            n_modes = max(len(s) for s in self.mlp.terms)
            names = ["dP", "dW", "dV"] if n_modes == 3 else ["dP", *(f"dW{j}" for j in range(1, n_modes))]
            n = self.mlp.diff_norm
            return [(names[s[0]], v / n) for s, v in sorted(self.mlp.terms.items()) if len(s) == 1]
        c = self.circuit
        a, b = ("dQᵀK", "QᵀdK") if c.name == "qk" else ("dO·V", "O·dV")
        return [(a, c.share("first_a")), (b, c.share("first_b"))]

    def first_split(self) -> str:
        """The first-order term split by the changed factor, each as a share of ‖Δ‖."""
        return " ".join(f"{name} {v:.2f}" for name, v in self._first_terms())

    def balance(self) -> float:
        """The first factor's first-order term (dP⊗W⊗V, dQᵀK, dO·V) over the sum of the first-order terms'
        norms: 0 when only the later factors moved (e.g. LoRA on K only: QᵀdK), 1 when only the first did."""
        terms = [v for _, v in self._first_terms()]
        total = sum(terms)
        return terms[0] / total if terms and total > 0 else math.nan


def weight_orders(base: GPT, ft: GPT) -> list[ComponentOrders]:
    """Per layer: the MLP's orders (CP layers) and the QK / OV circuits' (layers with attention)."""
    layers, skipped = cp_layer_kinds(base)
    out = []
    for i in range(base.config.n_layer):
        if i in layers:
            try:
                out.append(ComponentOrders(f"L{i} MLP", mlp=layer_order_shares(base, ft, i)))
            except DecompError as e:
                out.append(ComponentOrders(f"L{i} MLP", note=str(e)))
        else:
            out.append(ComponentOrders(f"L{i} MLP", note=skipped.get(i, "")))
        if base.blocks[i].attn is not None:
            out.append(ComponentOrders(f"L{i} QK", circuit=qk_orders(base, ft, i)))
            out.append(ComponentOrders(f"L{i} OV", circuit=ov_orders(base, ft, i)))
    return out


@dataclass
class FinetuneResults:
    ft: Finetune
    margin: FactMargin
    kl: float  # mean KL(base ‖ ft) on validation
    val_loss: float
    fact_loss: float | None
    act: ActivationDiff
    first_ratio: float
    orders: list[ComponentOrders] = field(default_factory=list)


@dataclass
class LabResults:
    base: Checkpoint
    fact: Fact
    token_text: TokenText
    base_margin: FactMargin
    base_val_loss: float
    base_fact_loss: float | None
    val: ValTokens
    finetunes: list[FinetuneResults]
    weight_diffs: list[LayerWeightDiff]
    weight_diff_name: str
    steering: SteeringResult | None
    steer_name: str
    n_positions: int
    freq_note: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # time per stage


# ------------------------------------------------------------------------------------------ run


def _names(opts: LabOptions) -> list[str]:
    """--names, or each fine-tune's run folder name ('run/ckpt_…' for a checkpoint folder); made unique."""
    if opts.names is None:
        names = []
        for p in opts.finetunes:
            path = Path(p).resolve()
            names.append(f"{path.parent.name}/{path.name}" if path.name.startswith("ckpt_") else path.name)
    elif len(opts.names) != len(opts.finetunes):
        raise AnalysisError(
            f"--names gives {len(opts.names)} names for {len(opts.finetunes)} fine-tunes; give one per fine-tune"
        )
    else:
        names = list(opts.names)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} ({seen[n]})"
    return names


def _index(value: int, n: int, flag: str) -> int:
    if not -n <= value < n:
        raise AnalysisError(f"{flag} {value} is out of range for {n} fine-tune(s) (0-based)")
    return value % n


class _Clock:
    """Seconds spent per stage: ``with clock("stage"): ...`` adds to ``clock.seconds["stage"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def run_lab(opts: LabOptions) -> LabResults:
    """Load the models and data and compute every measure of the report (see the module doc)."""
    if not opts.finetunes:
        raise AnalysisError("the lab needs at least one fine-tune after the base")
    names = _names(opts)
    i_steer = _index(opts.steer, len(names), "--steer")
    i_weights = _index(opts.weight_diff, len(names), "--weight-diff")
    quiet = not opts.progress
    clock = _Clock()
    with clock("loading models and data"):
        base_ck = load_checkpoint(opts.base)
        base = base_ck.model
        fact = load_fact(opts.fact, base_ck, opts.max_prompts)
        pairs = list(zip(opts.finetunes, names, strict=True))
        fts = [load_finetune(p, n, base_ck) for p, n in tqdm(pairs, desc="loading fine-tunes", disable=quiet)]
        token_text = TokenText(base_ck.vocab, base.config.vocab_size, base_ck.tokenizer)
        n_valid = n_valid_tokens(base_ck)
        seq_len = base_ck.seq_len
        files = base_ck.val_files(opts.val_files)
        n_rows = base.config.vocab_size
        val = load_val_tokens(files, seq_len, opts.val_tokens, base_ck.vocab, n_rows)
        fact_val = None
        if fact.val_files:
            fact_val = load_val_tokens(fact.val_files, seq_len, opts.fact_tokens, base_ck.vocab, n_rows)
        P = min(opts.positions or seq_len, val.x.shape[1])
    with clock("fact margins and losses"):
        base_margin = fact_margin(base, fact, n_valid, seq_len)
        base_val_loss = mean_loss(base, val, opts.batch_size)
        base_fact_loss = None if fact_val is None else mean_loss(base, fact_val, opts.batch_size)
    results = []
    for ft in tqdm(fts, desc="fine-tunes: margins, activation diff, orders", disable=quiet):
        with clock("activation diffs (and KL)"):
            act = activation_diff(
                base, ft.model, val, token_text, n_valid, P, -1, k=opts.top_k, batch_size=opts.batch_size
            )
        with clock("fact margins and losses"):
            margin = fact_margin(ft.model, fact, n_valid, seq_len)
            val_loss = mean_loss(ft.model, val, opts.batch_size)
            fact_loss = None if fact_val is None else mean_loss(ft.model, fact_val, opts.batch_size)
        with clock("orders of the weight diffs"):
            orders = weight_orders(base, ft.ckpt.model)
        kl = float(act.kl_by_position.mean())
        results.append(
            FinetuneResults(ft, margin, kl, val_loss, fact_loss, act, first_position_ratio(act), orders)
        )

    target = fts[i_weights]
    with clock("weight diff read as tokens"):
        layers, _ = cp_layer_kinds(base)
        freq = token_frequency(base_ck, ReadableOptions(min_count=opts.min_count), files, n_rows)
        diffs = [
            weight_diff(
                base,
                target.ckpt.model,
                i,
                token_text,
                n_valid,
                opts.rank,
                (),
                opts.n_components,
                opts.top_k,
                opts.als_iters,
                freq.allowed,
            )
            for i in tqdm(layers, desc=f"weight diff of {target.name} (implicit ALS)", disable=quiet)
        ]
    with clock("steering"):
        steering = _steer(opts, base_ck, results[i_steer], val, fact_val, fact, token_text, n_valid, P)
    return LabResults(
        base_ck,
        fact,
        token_text,
        base_margin,
        base_val_loss,
        base_fact_loss,
        val,
        results,
        diffs,
        target.name,
        steering,
        fts[i_steer].name,
        P,
        freq.describe(token_text, n_valid),
        clock.seconds,
    )


def _steer(
    opts: LabOptions,
    base_ck: Checkpoint,
    res: FinetuneResults,
    val: ValTokens,
    fact_val: ValTokens | None,
    fact: Fact,
    token_text: TokenText,
    n_valid: int,
    P: int,
) -> SteeringResult:
    base = base_ck.model
    layer = base.config.n_layer // 2 if opts.steer_layer is None else opts.steer_layer
    if not 0 <= layer < base.config.n_layer:
        raise AnalysisError(f"--steer-layer {layer} is out of range for {base.config.n_layer} layers")
    label = point_label(opts.steer_point, layer)
    act = res.act
    if opts.steer_kind == "pc1" and act.pca_point != label:
        act = activation_diff(
            base, res.ft.model, val, token_text, n_valid, P, lens_hook(base, label)[0], k=opts.top_k
        )
    sv = steering_vector(base, act, label, opts.steer_kind)
    n_seq = max(1, opts.steer_tokens // val.x.shape[1])
    prompt = fact.prompts[0].text if fact.prompts else None
    return steer(
        base,
        res.ft.model,
        sv,
        val.head(n_seq),
        opts.alphas,
        None if fact_val is None else fact_val.head(n_seq),
        base_ck.vocab,
        prompt,
        opts.sample_tokens,
        batch_size=opts.batch_size,
        progress=opts.progress,
    )


if __name__ == "__main__":  # the parser lives in analysis.commands with every other command line
    from analysis.commands import lab_main
    from errors import run_cli

    sys.exit(run_cli(lab_main, status=2))
