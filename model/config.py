"""GPTConfig: the architecture of a tnt transformer, validated at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from errors import TntError

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
