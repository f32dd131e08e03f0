"""GPTConfig: the architecture of a tnt transformer, validated at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from errors import TntError

ROPE_KINDS = ("standard", "half_truncated")
FLOAT32_EPS = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps
MLP_KINDS = ("relu2", "gelu", "bilinear", "reglu", "geglu", "swiglu", "multilinear")
# Gated kinds compute act(W1 x) * (W2 x) [* (W3 x) ...]; the activation applied to the first factor.
GATED_ACTIVATION = {
    "bilinear": "identity",
    "reglu": "relu",
    "geglu": "gelu",
    "swiglu": "silu",
    "multilinear": "identity",
}


class ConfigError(TntError, ValueError):
    """A configuration value is invalid; the message names the field (and the file, when read from one)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def round_to_multiple(x: float, multiple: int = 64) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


@dataclass
class GPTConfig:
    """Architecture of a GPT in the modded-nanoGPT style.

    The MLP hidden width h defaults to the width that keeps parameters and FLOPs equal to a 4d ReLU² MLP:
    4d for relu2/gelu, 8d/3 for the GLU family and bilinear, 8d/(k+1) for multilinear of order k,
    rounded to a multiple of 64. Set ``mlp_hidden`` to override.
    """

    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6
    d_model: int = 768
    mlp: str = "relu2"
    mlp_order: int = 2  # k for "multilinear"; gated kinds are order 2, relu2/gelu order 1
    mlp_hidden: int | None = None
    window: int | None = None  # sliding-window attention span in tokens; None = full causal
    value_embeds: bool = False  # modded-nanoGPT value embeddings mixed into v of the first/last layers
    unet_skips: bool = False  # U-net skips: first-half block outputs added to second-half inputs
    logit_softcap: float | None = 30.0  # logits = c * tanh(logits / c)
    norm_gain: bool = False  # learnable RMSNorm gains (modded-nanoGPT's norms are parameter-free)
    rope_base: float = 10000.0
    # Defaults reproduce the original network; other values represent imported models (model.hf_import).
    norm_eps: float = 1e-6  # eps of the block and final RMSNorms
    qk_norm: bool = True  # parameter-free RMSNorm on each head of q and k, before rotary
    qk_norm_eps: float | None = None  # None: torch's default, the machine epsilon of the dtype
    # Record #21 of modded-nanoGPT (model.config.RECORD21); each default keeps the network above unchanged.
    attn_scale: float | None = None  # softmax(scale · q·k); None: 1/sqrt(head_dim)
    rope_kind: str = "standard"  # "half_truncated": D/4 frequencies base^(-linspace(0, 1, D/4)), D/4 zeros
    embed_norm: bool = False  # x0 = N(W_E[token]): the embedding goes through an RMSNorm
    x0_lambdas: bool = False  # every block starts with x <- λ0·x + λ1·x0 (learned, init [1, 0])
    v_lambdas: bool = (
        False  # every attention layer learns v <- λ0·v (init 0.5), not only value-embedding ones
    )
    no_attention: tuple[int, ...] = ()  # layers without attention (record #21: (7,))
    doc_mask: bool = False  # a token attends only inside its document; documents start at eot_token
    eot_token: int = 50256  # model id of the token that starts a document
    window_blocks: int | None = None  # block-wise sliding window: a query in block b sees blocks > b - n
    window_pattern: str | None = None  # per layer "L" (window_blocks) or "S" (window_blocks // 2)
    attn_block: int = 128  # tokens per block of the block-wise window (FlexAttention's block size)
    head_fp8: bool = False  # training-mode head in FP8 (model.fp8); eval and no-grad stay in the input dtype

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.mlp, str) or self.mlp not in MLP_KINDS:
            raise ConfigError(f"GPTConfig.mlp must be one of {', '.join(MLP_KINDS)}; got {self.mlp!r}")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"GPTConfig.n_head={self.n_head} must divide d_model={self.d_model} (heads split the width)"
            )
        if (self.d_model // self.n_head) % 2:
            raise ConfigError(
                f"head dim d_model/n_head = {self.d_model // self.n_head} must be even (rotary)"
            )
        if not _is_int(self.mlp_order) or self.mlp_order < 2:
            raise ConfigError(f"GPTConfig.mlp_order must be an integer >= 2, got {self.mlp_order!r}")
        if self.mlp != "multilinear" and self.mlp_order != 2:
            raise ConfigError(f"GPTConfig.mlp_order={self.mlp_order} only applies to mlp='multilinear'")
        if self.mlp_hidden is not None and (not _is_int(self.mlp_hidden) or self.mlp_hidden <= 0):
            raise ConfigError(
                f"GPTConfig.mlp_hidden must be a positive integer or None, got {self.mlp_hidden!r}"
            )
        if self.window is not None and (not _is_int(self.window) or self.window <= 0):
            raise ConfigError(f"GPTConfig.window must be a positive integer or None, got {self.window!r}")
        for name in ("norm_eps", "qk_norm_eps"):
            value = getattr(self, name)
            if value is None and name == "qk_norm_eps":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise ConfigError(f"GPTConfig.{name} must be a number in (0, 1), got {value!r}")
        if not isinstance(self.qk_norm, bool):
            raise ConfigError(f"GPTConfig.qk_norm must be true or false, got {self.qk_norm!r}")
        for name in ("value_embeds", "unet_skips", "norm_gain"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("logit_softcap", "rope_base"):
            value = getattr(self, name)
            if value is None and name == "logit_softcap":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ConfigError(
                    f"GPTConfig.{name} must be a positive number{' or None' * (name == 'logit_softcap')}, got {value!r}"
                )

        self._check_record_fields()

    def _check_record_fields(self) -> None:
        """Validate the fields of record #21's architecture (attention masks, lambdas, rotary, FP8 head)."""
        for name in ("embed_norm", "x0_lambdas", "v_lambdas", "doc_mask", "head_fp8"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        scale = self.attn_scale
        if scale is not None and (
            isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < float("inf")
        ):
            raise ConfigError(f"GPTConfig.attn_scale must be a positive number or None, got {scale!r}")
        if self.rope_kind not in ROPE_KINDS:
            raise ConfigError(
                f"GPTConfig.rope_kind must be one of {', '.join(ROPE_KINDS)}; got {self.rope_kind!r}"
            )
        if self.rope_kind == "half_truncated" and self.head_dim % 4:
            raise ConfigError(
                f"GPTConfig.rope_kind='half_truncated' needs head_dim divisible by 4, got {self.head_dim}"
            )
        layers = self.no_attention
        if isinstance(layers, list):  # read back from JSON
            layers = self.no_attention = tuple(layers)
        if not isinstance(layers, tuple) or not all(_is_int(i) and 0 <= i < self.n_layer for i in layers):
            raise ConfigError(
                f"GPTConfig.no_attention must list layer indices in [0, {self.n_layer}), got {self.no_attention!r}"
            )
        if len(set(layers)) != len(layers):
            raise ConfigError(f"GPTConfig.no_attention lists a layer twice: {list(layers)}")
        if (
            not _is_int(self.eot_token)
            or self.eot_token < 0
            or (self.doc_mask and self.eot_token >= self.vocab_size)
        ):
            raise ConfigError(
                f"GPTConfig.eot_token must be a token id in [0, vocab_size={self.vocab_size}), got {self.eot_token!r}"
            )
        for name in ("window_blocks", "attn_block"):
            value = getattr(self, name)
            if (value is not None or name == "attn_block") and (not _is_int(value) or value <= 0):
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.window is not None and (self.window_blocks is not None or self.doc_mask):
            raise ConfigError(
                "GPTConfig.window (a token window) cannot be combined with window_blocks or doc_mask; "
                "use window_blocks for a sliding window with document masking"
            )
        pattern = self.window_pattern
        if pattern is not None:
            if self.window_blocks is None:
                raise ConfigError("GPTConfig.window_pattern needs window_blocks (the long window, in blocks)")
            if not isinstance(pattern, str) or len(pattern) != self.n_layer or set(pattern) - {"L", "S"}:
                raise ConfigError(
                    f"GPTConfig.window_pattern must be a string of {self.n_layer} letters L or S, got {pattern!r}"
                )

    @property
    def masked_attention(self) -> bool:
        """Whether attention uses model.attention's document / block-window masks."""
        return self.doc_mask or self.window_blocks is not None

    def layer_window(self, layer: int) -> str:
        """The window of ``layer``: 'L' (long) or 'S' (short); 'L' when the config has no pattern."""
        return self.window_pattern[layer] if self.window_pattern is not None else "L"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def order(self) -> int:
        """Number of input projections of the MLP: 1 for relu2/gelu, 2 for gated kinds, k for multilinear."""
        if self.mlp in ("relu2", "gelu"):
            return 1
        return self.mlp_order if self.mlp == "multilinear" else 2

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp in ("relu2", "gelu"):
            return 4 * self.d_model
        return round_to_multiple(8 * self.d_model / (self.order + 1))

    def check_vocab(self, max_token_id: int, source: str = "the data") -> None:
        """Raise if token ids up to ``max_token_id`` do not fit the embedding."""
        if max_token_id >= self.vocab_size:
            raise ConfigError(
                f"GPTConfig.vocab_size={self.vocab_size} does not cover {source}: it holds token id {max_token_id}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown GPTConfig field(s) {unknown}")
        try:
            return cls(**d)
        except (TypeError, ConfigError) as e:  # name the file: "<config.json>: GPTConfig.n_layer must be ..."
            raise ConfigError(f"{source}: {e}") from e


# modded-nanoGPT record #21 (records/track_1_short/2025-01-26_BatchSize/): ``GPTConfig(**RECORD21)`` is its
# network; ``GPTConfig(**{**RECORD21, "mlp": kind})`` swaps only the MLP, at the parameter-matched width.
# Its logits 30·sigmoid(z/7.5) = 15·tanh(z/15) + 15 differ from soft-cap 15 by a constant: the same softmax.
# window_blocks is the value its schedule ends at (model.attention.window_blocks_at(1770, 1770) = 14 blocks).
RECORD21: dict = dict(
    vocab_size=50304,
    n_layer=12,
    n_head=6,
    d_model=768,
    mlp="relu2",
    value_embeds=True,
    unet_skips=True,
    logit_softcap=15.0,
    norm_gain=False,
    rope_kind="half_truncated",
    rope_base=1024.0,
    norm_eps=FLOAT32_EPS,  # the record's F.rms_norm(x, (d,)): torch's default eps, float32's for fp32 and bf16
    qk_norm=True,
    qk_norm_eps=None,
    attn_scale=0.12,
    embed_norm=True,
    x0_lambdas=True,
    v_lambdas=True,
    no_attention=(7,),
    doc_mask=True,
    eot_token=50256,
    window_blocks=14,
    window_pattern="LSSSLSSLSSSL",
    attn_block=128,
    head_fp8=True,
)
