"""The tnt transformer: a GPT in the modded-nanoGPT style whose MLP is a tensor-network layer.

Pre-norm blocks with parameter-free RMSNorm (optionally with gains), rotary attention with QK-norm on SDPA,
zero-initialised output projections, an untied head with logit soft-capping, and optional value embeddings and
U-net skips. Hook points carry TransformerLens names (see ``model.hooks``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .config import GATED_ACTIVATION, GPTConfig
from .hooks import HookedRootModule, HookPoint


class RMSNorm(nn.Module):
    """N(x) = g ⊙ x / rms(x), with g = 1 (no parameter) unless ``gain`` is set."""

    def __init__(self, d: int, gain: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.d, self.eps = d, eps
        self.weight = nn.Parameter(torch.ones(d)) if gain else None
        self.hook_normalized = HookPoint()

    def gain(self) -> torch.Tensor:
        return self.weight if self.weight is not None else torch.ones(self.d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(F.rms_norm(x, (self.d,), self.weight, self.eps))


def linear(d_in: int, d_out: int, zero: bool = False) -> nn.Linear:
    """Bias-free linear layer; modded-nanoGPT's init (uniform with std 0.5/sqrt(d_in)) or zeros."""
    layer = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            bound = math.sqrt(3) * 0.5 / math.sqrt(d_in)
            layer.weight.uniform_(-bound, bound)
    return layer


class Rotary(nn.Module):
    """Rotary position embedding on the last dim of [B, T, H, D] (half-split convention)."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.size(1), device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, value_embed: bool) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.window = cfg.n_head, cfg.head_dim, cfg.window
        self.qk_norm, self.qk_norm_eps = cfg.qk_norm, cfg.qk_norm_eps
        self.c_qkv = linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = linear(cfg.d_model, cfg.d_model, zero=True)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        # v <- l0 * v + l1 * value_embedding(token), as in modded-nanoGPT
        self.ve_lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if value_embed else None
        self.hook_pattern = HookPoint()  # [B, H, T, T]

    def _mask(self, T: int, device: torch.device) -> torch.Tensor:
        i = torch.arange(T, device=device)
        diff = i[:, None] - i[None, :]
        mask = diff >= 0
        if self.window is not None:
            mask &= diff < self.window
        return mask

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.c_qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        if self.qk_norm:  # QK-norm, then rotary
            q = F.rms_norm(q, (self.head_dim,), eps=self.qk_norm_eps)
            k = F.rms_norm(k, (self.head_dim,), eps=self.qk_norm_eps)
        q, k = self.rotary(q), self.rotary(k)
        if ve is not None:
            v = self.ve_lambdas[0] * v + self.ve_lambdas[1] * ve.view_as(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if self.hook_pattern.active:  # explicit attention so the pattern can be read or edited
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~self._mask(T, x.device), float("-inf"))
            y = self.hook_pattern(scores.softmax(-1)) @ v
        elif self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(T, x.device))
        return self.c_proj(y.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Module):
    """The MLP of one block; ``kind`` chooses the tensor-network layer.

    relu2: P relu(Wx)²; gelu: P gelu(Wx); gated kinds: P (act(W₁x) ⊙ W₂x [⊙ … ⊙ W_kx]), with
    act = identity (bilinear, multilinear), relu (reglu), gelu-tanh (geglu), silu (swiglu).
    The k input projections are one weight ``c_fc.weight`` of shape [k·h, d]; W_j is rows [(j-1)h, jh).
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind, self.order, self.hidden = cfg.mlp, cfg.order, cfg.hidden
        self.c_fc = linear(cfg.d_model, self.order * self.hidden)
        self.c_proj = linear(self.hidden, cfg.d_model, zero=True)
        self.hook_pre = HookPoint()  # [..., h]: W₁x, the (activated) first factor
        self.hook_pre_linear = HookPoint()  # [..., (k-1)·h]: W₂x … W_kx, the linear factors (gated kinds)
        self.hook_post = HookPoint()  # [..., h]: the hidden activation fed to P

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == 1:  # relu2 / gelu: the kind names its activation
            if self.hook_pre.active:
                hidden = kernels.gated_product(self.hook_pre(self.c_fc(x)), self.kind, 1)
            else:  # one GEMM with relu² (gelu) in its epilogue on the fused path
                hidden = kernels.fused_up_product(x, self.c_fc.weight, self.kind, 1)
        else:
            act = GATED_ACTIVATION[self.kind]
            if self.hook_pre.active or self.hook_pre_linear.active:
                up = self.c_fc(x)
                first = self.hook_pre(up[..., : self.hidden])
                rest = self.hook_pre_linear(up[..., self.hidden :])
                hidden = kernels.gated_product(torch.cat((first, rest), dim=-1), act, self.order)
            else:  # one GEMM reads x and the stacked weight, the product in its epilogue on the fused path
                hidden = kernels.fused_up_product(x, self.c_fc.weight, act, self.order)
        return self.c_proj(self.hook_post(hidden))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, value_embed: bool) -> None:
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps)
        self.attn = Attention(cfg, value_embed)
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), ve)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class GPT(HookedRootModule):
    """Decoder-only transformer. ``forward(idx)`` maps token ids [B, T] to logits [B, T, vocab]."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        L = cfg.n_layer
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # Value embeddings, as in modded-nanoGPT: table j serves layer j and layer L - n + j (first and last n).
        n_ve = min(3, L // 2) if cfg.value_embeds else 0
        self.ve_index = {**{L - n_ve + j: j for j in range(n_ve)}, **{j: j for j in range(n_ve)}}
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.d_model) for _ in range(n_ve))
        self.blocks = nn.ModuleList(Block(cfg, i in self.ve_index) for i in range(L))
        self.skip_weights = nn.Parameter(torch.ones(L // 2)) if cfg.unet_skips else None
        self.ln_f = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps)
        self.lm_head = linear(cfg.d_model, cfg.vocab_size, zero=True)
        self.hook_embed = HookPoint()
        self.setup_hooks()

    # ---- weight accessors: what analysis code reads, without knowing the trainer ----
    @property
    def w_e(self) -> torch.Tensor:
        """Token embedding W_E [vocab, d]."""
        return self.wte.weight

    @property
    def w_u(self) -> torch.Tensor:
        """Unembedding W_U [vocab, d] (untied; logits = softcap(W_U N(x)))."""
        return self.lm_head.weight

    def mlp_kind(self, layer: int) -> str:
        return self.blocks[layer].mlp.kind

    def mlp_order(self, layer: int) -> int:
        return self.blocks[layer].mlp.order

    def projection_blocks(self) -> dict[str, tuple[int, ...]]:
        """Row-block sizes of each weight that stacks several linear maps along its rows, by parameter name.

        ``blocks.{i}.attn.c_qkv.weight`` [3d, d] -> (d, d, d): W_Q, W_K, W_V;
        ``blocks.{i}.mlp.c_fc.weight`` [k·h, d] -> (h,)·k: W_1 … W_k. Weights not listed hold one map each.
        """
        out: dict[str, tuple[int, ...]] = {}
        for i, block in enumerate(self.blocks):
            if block.attn is not None:
                out[f"blocks.{i}.attn.c_qkv.weight"] = (self.config.d_model,) * 3
            out[f"blocks.{i}.mlp.c_fc.weight"] = (block.mlp.hidden,) * block.mlp.order
        return out

    def w_in(self, layer: int) -> list[torch.Tensor]:
        """The k input projections W_1..W_k, each [h, d], as views of the stacked [k·h, d] weight."""
        mlp = self.blocks[layer].mlp
        return list(mlp.c_fc.weight.view(mlp.order, mlp.hidden, -1).unbind(0))

    def w_l(self, layer: int) -> torch.Tensor:
        """W [h, d]: the first (activated) input projection of layer ``layer``'s MLP."""
        return self.w_in(layer)[0]

    def w_r(self, layer: int) -> torch.Tensor:
        """V [h, d]: the second input projection (gated kinds only)."""
        w = self.w_in(layer)
        if len(w) < 2:
            raise ValueError(f"layer {layer}: MLP kind {self.mlp_kind(layer)!r} has no second projection V")
        return w[1]

    def w_p(self, layer: int) -> torch.Tensor:
        """P [d, h]: the output projection."""
        return self.blocks[layer].mlp.c_proj.weight

    def mlp_norm_gain(self, layer: int) -> torch.Tensor:
        """Gain g [d] of the RMSNorm before MLP ``layer`` (ones when parameter-free)."""
        return self.blocks[layer].ln2.gain()

    def attn_norm_gain(self, layer: int) -> torch.Tensor:
        return self.blocks[layer].ln1.gain()

    def final_norm_gain(self) -> torch.Tensor:
        return self.ln_f.gain()

    # ---- forward ----
    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Residual [.., d] -> logits [.., vocab]: final norm, head, soft-cap."""
        logits = self.lm_head(self.ln_f(x))
        c = self.config.logit_softcap
        return c * torch.tanh(logits / c) if c is not None else logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab]; with ``targets`` [B, T] -> mean cross-entropy (nats).

        ``stop_at_layer=L`` returns the residual stream [B, T, d] entering block L.
        """
        x = self.hook_embed(self.wte(idx))
        n_enc = len(self.blocks) // 2
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if stop_at_layer is not None and i >= stop_at_layer:
                return x
            if self.skip_weights is not None and i >= len(self.blocks) - n_enc:
                x = x + self.skip_weights[i - (len(self.blocks) - n_enc)] * skips.pop()
            ve = self.value_embeds[self.ve_index[i]](idx) if i in self.ve_index else None
            x = block(x, ve)
            if self.skip_weights is not None and i < n_enc:
                skips.append(x)
        if stop_at_layer is not None:
            return x
        logits = self.unembed(x)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
