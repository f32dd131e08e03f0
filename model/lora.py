"""LoRA adapters on a GPT: low-rank updates of chosen weights, optionally only after a separator token.

An adapted weight W [d_out, d_in] computes W + ΔW with ΔW = s·B A, s = α/r, A [r, d_in] (kaiming-uniform, as
PEFT) and B [d_out, r] (zeros, so the function is unchanged at step 0). Stacked weights get one adapter per
row block: ``c_qkv`` rows [0, d) / [d, 2d) / [2d, 3d) are W_Q / W_K / W_V (targets q, k, v) and ``c_fc`` rows
[(j-1)h, jh) are W_j (mlp_w: W_1; mlp_v: W_2 … W_k, one adapter each). The embedding (target embed) gets
ΔE = s·A B with A [vocab, r] zeros and B [r, d] normal, as PEFT.

The adapted modules are subclasses of ``nn.Linear`` / ``nn.Embedding`` that keep ``weight`` (the frozen base)
and add ``lora_A`` / ``lora_B`` (``nn.ParameterDict`` keyed by the row block: q, k, v; w1 … wk; w for a
single-map weight), so the base parameter names are unchanged:

    blocks.{i}.attn.c_qkv.weight       the base W_QKV [3d, d]
    blocks.{i}.attn.c_qkv.lora_A.k     A_K [r, d];   blocks.{i}.attn.c_qkv.lora_B.k  B_K [d, r]
    blocks.{i}.mlp.c_fc.lora_A.w2      A of W_2;     lm_head.lora_A.w, wte.lora_A.w  …

With ``mask_token`` t_sep the adapters act only at positions t of a row with idx[s] = t_sep for some s < t
(strictly after the separator's first occurrence): up to and including it the model computes exactly the base
model (``torch.where``, not a multiplication, so not even a -0 differs; bitwise where the base model takes the
same path, as on the torch reference path; on CUDA an adapted c_fc is called where the base uses the fused
Triton GEMM, and an adapted head skips the training-mode FP8 head, which round differently). The mask is
computed once per forward from idx by a forward pre-hook on the GPT, in a small state object shared by the
adapters; it is traced under torch.compile (no recompile when the separator moves).

``merged_state_dict`` gives a plain GPT's weights W + ΔW; ``adapter_state_dict`` the adapters and the frozen base
weights of the adapted tensors (with the merged weights, enough to rebuild the training-time model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError
from .gpt import GPT

ATTN_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("mlp_w", "mlp_v", "mlp_p")
LORA_TARGETS = (*ATTN_TARGETS, *MLP_TARGETS, "head", "embed")
TARGET_ALIASES = {"attn": ATTN_TARGETS, "mlp": MLP_TARGETS, "all": ATTN_TARGETS + MLP_TARGETS}
_HELP = f"known: {', '.join(LORA_TARGETS)}; aliases {', '.join(TARGET_ALIASES)}; -x drops x"


def parse_lora_targets(text: str, mlp_order: int | None = None) -> tuple[str, ...]:
    """The targets of a comma list, in ``LORA_TARGETS`` order: names, aliases (attn = q,k,v,o; mlp =
    mlp_w,mlp_v,mlp_p; all = attn + mlp: head and embed only when named) and ``-x`` (drop x, applied after
    the additions). "all,-k" is every block weight but W_K; "k" is W_K only.

    ``mlp_order`` (the model's ``GPTConfig.order``): with 1 (relu2 / gelu: only W_1) the aliases leave mlp_v
    out and a named mlp_v is refused. Raises ConfigError (one line) for an unknown name or an empty selection.
    """
    if not isinstance(text, str):
        raise ConfigError(f"LoRA targets must be a comma list, got {text!r}")
    added: list[str] = []
    dropped: set[str] = set()
    for item in (s.strip() for s in text.split(",")):
        negate = item.startswith("-")
        name = item[1:].strip() if negate else item
        if not name:
            raise ConfigError(f"LoRA targets {text!r}: empty item ({_HELP})")
        if name not in LORA_TARGETS and name not in TARGET_ALIASES:
            raise ConfigError(f"LoRA targets {text!r}: unknown target {name!r} ({_HELP})")
        if mlp_order == 1 and name == "mlp_v" and not negate:
            raise ConfigError(
                f"LoRA targets {text!r}: mlp_v adapts W_2..W_k, but this MLP (order 1: relu2 / gelu) has only W_1"
            )
        names = TARGET_ALIASES.get(name, (name,))
        if mlp_order == 1 and name in TARGET_ALIASES:
            names = tuple(n for n in names if n != "mlp_v")
        (dropped.update if negate else added.extend)(names)
    targets = tuple(t for t in LORA_TARGETS if t in added and t not in dropped)
    if not targets:
        raise ConfigError(f"LoRA targets {text!r} select no weight ({_HELP})")
    return targets


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class LoRAConfig:
    """Rank r >= 1, targets (names of ``LORA_TARGETS``), α (0: α = r, scale α/r = 1) and the separator token
    (None: the adapters act at every position)."""

    rank: int
    targets: tuple[str, ...]
    alpha: float = 0.0
    mask_token: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.rank) or self.rank < 1:
            raise ConfigError(f"LoRAConfig.rank must be an integer >= 1, got {self.rank!r}")
        targets = self.targets
        if isinstance(targets, list):  # read back from JSON
            object.__setattr__(self, "targets", tuple(targets))
        if not isinstance(self.targets, tuple) or not self.targets:
            raise ConfigError(f"LoRAConfig.targets must be a non-empty tuple of names, got {targets!r}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ConfigError(
                f"LoRAConfig.targets: unknown target(s) {unknown} (known: {', '.join(LORA_TARGETS)})"
            )
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"LoRAConfig.targets lists a target twice: {list(self.targets)}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a < float("inf"):
            raise ConfigError(f"LoRAConfig.alpha must be a finite number >= 0, got {a!r}")
        if self.mask_token is not None and (not _is_int(self.mask_token) or self.mask_token < 0):
            raise ConfigError(
                f"LoRAConfig.mask_token must be a token id >= 0 or None, got {self.mask_token!r}"
            )

    @property
    def scale(self) -> float:
        """s = α / r (1 when α = 0)."""
        return (self.alpha or self.rank) / self.rank

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: object, source: str = "config") -> LoRAConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: 'lora' must be an object with the LoRAConfig fields, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown LoRAConfig field(s) {unknown}")
        try:
            return cls(**d)
        except (TypeError, ConfigError) as e:
            raise ConfigError(f"{source}: {' '.join(str(e).split())}") from e


class LoRAState:
    """What the adapters of one model share: the separator token and the position mask of the latest forward.

    ``mask`` [B, T] bool (True: the adapters act) is set by ``pre_hook`` from idx at the start of every GPT
    forward; an adapted module called on its own uses the latest one (inputs must be [B, T, ...] alike).
    """

    def __init__(self, mask_token: int | None) -> None:
        self.mask_token = mask_token
        self.mask: Tensor | None = None

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        idx = args[0] if args else kwargs["idx"]
        self.mask = after_separator(idx, self.mask_token)

    def add(self, base: Tensor, delta: Tensor) -> Tensor:
        """base + delta where the adapters act, exactly base elsewhere; base, delta [B, T, n]."""
        if self.mask_token is None:
            return base + delta
        mask = self.mask
        if mask is None or mask.shape != base.shape[:-1]:
            got = None if mask is None else tuple(mask.shape)
            raise RuntimeError(
                f"LoRA with mask_token: the position mask (from the GPT's forward: {got}) does not fit the input "
                f"{tuple(base.shape)}; call the GPT on idx, not an adapted module alone"
            )
        return torch.where(mask[..., None], base + delta, base)


def after_separator(idx: Tensor, token: int) -> Tensor:
    """bool [B, T]: True at t iff idx[b, s] == token for some s < t (strictly after the first occurrence)."""
    hit = (idx == token).to(torch.int32)
    return (hit.cumsum(-1) - hit) > 0


def _init_a(rows: int, d_in: int, generator: torch.Generator | None) -> Tensor:
    # PEFT's kaiming_uniform_(a=√5): bound = gain·√(3/fan_in) with gain = √(2/(1+5)), i.e. 1/√d_in
    bound = 1 / math.sqrt(d_in)
    return torch.empty(rows, d_in).uniform_(-bound, bound, generator=generator)


class LoRALinear(nn.Linear):
    """y = x Wᵀ with row block j of W read as W_j + s·B_j A_j for the adapted blocks (where the mask allows).

    ``blocks``: (label, rows) of every row block of W in order (one block "w" for a single map); ``adapted``:
    the labels that get adapters. Bias-free, as every tnt projection.
    """

    has_adapter = True

    def __init__(
        self,
        base: nn.Linear,
        blocks: tuple[tuple[str, int], ...],
        adapted: tuple[str, ...],
        rank: int,
        scale: float,
        state: LoRAState,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight  # the same Parameter: its name and any reference to it stay valid
        self.labels = tuple(label for label, _ in blocks)
        self.sizes = tuple(rows for _, rows in blocks)
        self.rank, self.scale, self.state = rank, scale, state
        w = base.weight
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for label, rows in blocks:
            if label in adapted:
                self.lora_A[label] = nn.Parameter(
                    _init_a(rank, self.in_features, generator).to(w.device, w.dtype)
                )
                self.lora_B[label] = nn.Parameter(torch.zeros(rows, rank, device=w.device, dtype=w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight)
        pieces = list(y.split(self.sizes, dim=-1))
        for j, label in enumerate(self.labels):
            if label in self.lora_A:
                delta = F.linear(F.linear(x, self.lora_A[label]), self.lora_B[label]) * self.scale
                pieces[j] = self.state.add(pieces[j], delta)
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """ΔW [d_out, d_in]: s·B_j A_j in the adapted row blocks, zeros elsewhere (the weight's dtype)."""
        w = self.weight
        parts = [
            self.scale * (self.lora_B[label].float() @ self.lora_A[label].float())
            if label in self.lora_A
            else w.new_zeros(rows, w.shape[1], dtype=torch.float32)
            for label, rows in zip(self.labels, self.sizes, strict=True)
        ]
        return torch.cat(parts).to(w.dtype)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        return (self.weight.float() + self.delta_weight().float()).to(self.weight.dtype)


class LoRAEmbedding(nn.Embedding):
    """e = E[idx] + s·(A B)[idx] (where the mask allows); A [vocab, r] zeros, B [r, d] normal (PEFT's)."""

    has_adapter = True

    def __init__(
        self,
        base: nn.Embedding,
        rank: int,
        scale: float,
        state: LoRAState,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(base.num_embeddings, base.embedding_dim, device="meta")
        self.weight = base.weight
        self.labels, self.rank, self.scale, self.state = ("w",), rank, scale, state
        w = base.weight
        b = torch.empty(rank, self.embedding_dim).normal_(generator=generator)
        self.lora_A = nn.ParameterDict(
            {"w": nn.Parameter(torch.zeros(self.num_embeddings, rank, device=w.device, dtype=w.dtype))}
        )
        self.lora_B = nn.ParameterDict({"w": nn.Parameter(b.to(w.device, w.dtype))})

    def forward(self, idx: Tensor) -> Tensor:
        e = F.embedding(idx, self.weight)
        delta = (F.embedding(idx, self.lora_A["w"]) @ self.lora_B["w"]) * self.scale
        return self.state.add(e, delta)

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """ΔE [vocab, d] = s·A B."""
        return (self.scale * (self.lora_A["w"].float() @ self.lora_B["w"].float())).to(self.weight.dtype)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        return (self.weight.float() + self.delta_weight().float()).to(self.weight.dtype)


LoRAModule = LoRALinear | LoRAEmbedding


def lora_config(model: nn.Module) -> LoRAConfig | None:
    """The LoRAConfig that ``apply_lora`` attached to ``model``; None for a model without adapters."""
    return getattr(model, "_lora_config", None)


def lora_modules(model: nn.Module) -> dict[str, LoRAModule]:
    """The adapted modules by their name in ``model`` (e.g. ``blocks.0.attn.c_qkv``, ``lm_head``, ``wte``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear | LoRAEmbedding)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters in a fixed order (the order of ``model.named_parameters()``)."""
    return [p for n, p in model.named_parameters() if _is_adapter_name(n)]


def _is_adapter_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def apply_lora(model: GPT, cfg: LoRAConfig, generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` and attach adapters to ``cfg.targets`` in place; the adapters.

    Layers without attention are skipped for q, k, v, o. Raises ConfigError for a model that already has
    adapters, mlp_v on an order-1 MLP (relu2 / gelu) or a mask token outside the vocabulary. ``generator``
    draws the A (and the embedding's B) initialisations; the global RNG is used when None.
    """
    if lora_config(model) is not None:
        raise ConfigError(f"apply_lora: the model already has LoRA adapters ({lora_config(model)})")
    mc = model.config
    if "mlp_v" in cfg.targets and mc.order == 1:
        raise ConfigError(
            f"LoRA target mlp_v adapts W_2..W_k, but mlp={mc.mlp!r} has only W_1 (use mlp_w; "
            "parse_lora_targets(text, mlp_order=1) leaves mlp_v out of the aliases)"
        )
    if cfg.mask_token is not None and cfg.mask_token >= mc.vocab_size:
        raise ConfigError(
            f"LoRAConfig.mask_token={cfg.mask_token} is outside the vocabulary [0, {mc.vocab_size})"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    state = LoRAState(cfg.mask_token)
    targets, r, s, g = set(cfg.targets), cfg.rank, cfg.scale, generator

    def linear(base: nn.Linear, blocks: tuple[tuple[str, int], ...], adapted: tuple[str, ...]) -> LoRALinear:
        return LoRALinear(base, blocks, adapted, r, s, state, g)

    if "embed" in targets:
        model.wte = LoRAEmbedding(model.wte, r, s, state, g)
    d = mc.d_model
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        if attn is not None:
            qkv = tuple(t for t in ("q", "k", "v") if t in targets)
            if qkv:
                attn.c_qkv = linear(attn.c_qkv, (("q", d), ("k", d), ("v", d)), qkv)
            if "o" in targets:
                attn.c_proj = linear(attn.c_proj, (("w", d),), ("w",))
        fc = [f"w{j + 1}" for j in range(mlp.order)]
        up = (fc[:1] if "mlp_w" in targets else []) + (fc[1:] if "mlp_v" in targets else [])
        if up:
            mlp.c_fc = linear(mlp.c_fc, tuple((label, mlp.hidden) for label in fc), tuple(up))
        if "mlp_p" in targets:
            mlp.c_proj = linear(mlp.c_proj, (("w", d),), ("w",))
    if "head" in targets:
        model.lm_head = linear(model.lm_head, (("w", mc.vocab_size),), ("w",))
    model._lora_config = cfg
    model._lora_state = state
    if cfg.mask_token is not None:  # a bound method: deepcopy of the model rebinds it to the copied state
        model.register_forward_pre_hook(state.pre_hook, with_kwargs=True)
    return lora_parameters(model)


def merged_state_dict(model: GPT) -> dict[str, Tensor]:
    """The plain GPT's state dict (same keys): every adapted weight replaced by W + ΔW, adapters left out."""
    modules = lora_modules(model)
    out = {n: t.detach() for n, t in model.state_dict().items() if not _is_adapter_name(n)}
    for name, module in modules.items():
        out[f"{name}.weight"] = module.merged_weight()
    return out


def adapter_state_dict(model: GPT) -> dict[str, Tensor]:
    """The adapters and the frozen base weights of the adapted tensors, by their names in ``model``."""
    base = {f"{name}.weight" for name in lora_modules(model)}
    return {n: t.detach() for n, t in model.state_dict().items() if _is_adapter_name(n) or n in base}


def load_adapters(
    model: GPT, tensors: dict[str, Tensor], source: str = "adapters", allow_nonfinite: bool = False
):
    """Copy ``tensors`` (an ``adapter_state_dict``) into ``model``, which ``apply_lora`` built with the same
    LoRAConfig. Raises CheckpointError naming ``source`` for missing or unexpected tensors, wrong shapes or
    dtypes, and inf/NaN values (unless ``allow_nonfinite``)."""
    from .io import CheckpointError, check_tensors

    expected = adapter_state_dict(model)
    if not expected:
        raise CheckpointError(f"{source}: the model has no LoRA adapters to load these tensors into")
    check_tensors(source, tensors, expected, "the LoRA config", allow_nonfinite)
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t)
