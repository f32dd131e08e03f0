"""The tnt transformer: a GPT in the modded-nanoGPT style whose MLP is a tensor-network layer.

Pre-norm blocks with parameter-free RMSNorm (optionally with gains), rotary attention with QK-norm on SDPA,
zero-initialised output projections, an untied head with logit soft-capping, and optional value embeddings and
U-net skips. Hook points carry TransformerLens names (see ``model.hooks``).

With ``GPTConfig(**model.config.RECORD21)`` it is modded-nanoGPT record #21's network, per layer i:

    x0 = N(W_E[idx]);   x <- x + s_i · skip  (decoder half: the mirrored encoder block's output, U-net)
    x <- λ_i0 · x + λ_i1 · x0
    x <- x + Attn_i(N(x))  (none in layer 7; v <- μ0·v + μ1·VE_j[idx] in layers 0-2 and 9-11, else μ0·v;
                            softmax(0.12 · q·k) inside documents, block windows long/short per window_pattern)
    x <- x + MLP_i(N(x))
    logits = 15 · tanh(W_U N(x) / 15)   (the record's 30·σ(z/7.5) minus the constant 15: the same softmax)

What decomp/ reads exactly and what it treats as given: each MLP is read from its weights as a tensor
(bilinear: B = Σ_h P_h ⊗ W_h ⊗ V_h, with the RMSNorm gain folded in) acting on the normalised MLP input
N(x); the direct token paths read W_E and W_U. Everything else is a fixed non-linear context that decomp/ does
not decompose: the RMSNorms' 1/rms(x), QK-norm, rotary, the softmax and its masks, the soft-cap's tanh, the
learned scalars (λ, μ, s), value embeddings and U-net skips. Their effect reaches the MLP only through the
residual stream, which analysis/ observes on data (hooks), not from weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

import kernels

from .attention import ATTN_BACKENDS, Mask, block_mask, dense_mask, document_ids, flex
from .config import GATED_ACTIVATION, GPTConfig
from .fp8 import fp8_linear
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
    """Rotary position embedding on the last dim of [B, T, H, D] (half-split convention).

    Frequencies: standard θ_i = base^(-2i/D), i < D/2; half_truncated (record #21) θ_i = base^(-i/(D/4 - 1))
    for i < D/4 and θ_i = 0 for the other D/4 (those dimensions carry no position).
    """

    def __init__(self, head_dim: int, base: float, kind: str = "standard") -> None:
        super().__init__()
        if kind == "half_truncated":
            quarter = head_dim // 4
            inv_freq = (1 / base) ** torch.linspace(0, 1, steps=quarter, dtype=torch.float32)
            inv_freq = torch.cat((inv_freq, inv_freq.new_zeros(quarter)))
        else:
            inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.size(1), device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    """Causal self-attention softmax(scale · q·k + mask) v with QK-norm and rotary on q and k.

    ``mask`` (from ``GPT.attention_masks``): None for the config's causal / token-window attention, a dense
    boolean [B, 1, T, T] mask (SDPA) or a FlexAttention BlockMask (same function; model.attention).
    """

    def __init__(self, cfg: GPTConfig, value_embed: bool) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.window = cfg.n_head, cfg.head_dim, cfg.window
        self.qk_norm, self.qk_norm_eps = cfg.qk_norm, cfg.qk_norm_eps
        self.scale = cfg.attn_scale  # None: 1/sqrt(head_dim)
        self.c_qkv = linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = linear(cfg.d_model, cfg.d_model, zero=True)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, cfg.rope_kind)
        # v <- l0 * v + l1 * value_embedding(token), as in modded-nanoGPT; with v_lambdas v <- l0 * v elsewhere
        # (l1 then unused: the record's layout, one [2] parameter per attention layer)
        learned = value_embed or cfg.v_lambdas
        self.ve_lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if learned else None
        self.hook_pattern = HookPoint()  # [B, H, T, T]

    def _mask(self, T: int, device: torch.device) -> torch.Tensor:
        i = torch.arange(T, device=device)
        diff = i[:, None] - i[None, :]
        mask = diff >= 0
        if self.window is not None:
            mask &= diff < self.window
        return mask

    def forward(
        self, x: torch.Tensor, ve: torch.Tensor | None = None, mask: Mask | None = None
    ) -> torch.Tensor:
        B, T, d = x.shape
        qkv = self.c_qkv(x)
        q, k, v = qkv.view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        if self.qk_norm:  # QK-norm, then rotary
            q = F.rms_norm(q, (self.head_dim,), eps=self.qk_norm_eps)
            k = F.rms_norm(k, (self.head_dim,), eps=self.qk_norm_eps)
        q, k = self.rotary(q), self.rotary(k)
        if ve is not None:
            v = self.ve_lambdas[0] * v + self.ve_lambdas[1] * ve.view_as(v)
        elif self.ve_lambdas is not None:
            v = self.ve_lambdas[0] * v
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if isinstance(
            mask, BlockMask
        ):  # FlexAttention wants one dtype: the projection's (bf16 under autocast)
            y = flex(q.to(qkv.dtype), k.to(qkv.dtype), v.to(qkv.dtype), mask, self.scale)
        elif self.hook_pattern.active:  # explicit attention so the pattern can be read or edited
            qk = q @ k.transpose(-1, -2)
            scores = qk / math.sqrt(self.head_dim) if self.scale is None else qk * self.scale
            allowed = self._mask(T, x.device) if mask is None else mask
            y = self.hook_pattern(scores.masked_fill(~allowed, float("-inf")).softmax(-1)) @ v
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        elif self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(T, x.device), scale=self.scale)
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
        # a c_fc with a LoRA adapter (model.lora) must be called: the fused path reads only its base weight
        explicit = getattr(self.c_fc, "has_adapter", False)
        if self.order == 1:  # relu2 / gelu: the kind names its activation
            if self.hook_pre.active or explicit:
                hidden = kernels.gated_product(self.hook_pre(self.c_fc(x)), self.kind, 1)
            else:  # one GEMM with relu² (gelu) in its epilogue on the fused path
                hidden = kernels.fused_up_product(x, self.c_fc.weight, self.kind, 1)
        else:
            act = GATED_ACTIVATION[self.kind]
            if self.hook_pre.active or self.hook_pre_linear.active or explicit:
                up = self.c_fc(x)
                first = self.hook_pre(up[..., : self.hidden])
                rest = self.hook_pre_linear(up[..., self.hidden :])
                hidden = kernels.gated_product(torch.cat((first, rest), dim=-1), act, self.order)
            else:  # one GEMM reads x and the stacked weight, the product in its epilogue on the fused path
                hidden = kernels.fused_up_product(x, self.c_fc.weight, act, self.order)
        return self.c_proj(self.hook_post(hidden))


class Block(nn.Module):
    """x <- λ0·x + λ1·x0 (x0_lambdas); x <- x + Attn(N(x)) (absent for layers in no_attention); x <- x + MLP(N(x))."""

    def __init__(self, cfg: GPTConfig, value_embed: bool, layer: int = 0) -> None:
        super().__init__()
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0])) if cfg.x0_lambdas else None
        has_attn = layer not in cfg.no_attention
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps) if has_attn else None
        self.attn = Attention(cfg, value_embed) if has_attn else None
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        ve: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        mask: Mask | None = None,
    ) -> torch.Tensor:
        """x [B, T, d] -> [B, T, d]; ``x0`` is the normalised embedding (x0_lambdas), ``ve`` the value embedding."""
        if self.lambdas is not None:
            x = self.lambdas[0] * x + self.lambdas[1] * x0
        x = self.hook_resid_pre(x)
        if self.attn is not None:
            x = x + self.hook_attn_out(self.attn(self.ln1(x), ve, mask))
        x = self.hook_resid_mid(x)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class GPT(HookedRootModule):
    """Decoder-only transformer. ``forward(idx)`` maps token ids [B, T] to logits [B, T, vocab]."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        L = cfg.n_layer
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.ln_embed = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps) if cfg.embed_norm else None
        # Value embeddings, as in modded-nanoGPT: table j serves layer j and layer L - n + j (first and last n).
        n_ve = min(3, L // 2) if cfg.value_embeds else 0
        self.ve_index = {**{L - n_ve + j: j for j in range(n_ve)}, **{j: j for j in range(n_ve)}}
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.d_model) for _ in range(n_ve))
        self.blocks = nn.ModuleList(Block(cfg, i in self.ve_index, i) for i in range(L))
        self.skip_weights = nn.Parameter(torch.ones(L // 2)) if cfg.unet_skips else None
        self.ln_f = RMSNorm(cfg.d_model, cfg.norm_gain, cfg.norm_eps)
        self.lm_head = linear(cfg.d_model, cfg.vocab_size, zero=True)
        self.hook_embed = HookPoint()
        self.setup_hooks()
        # Masked attention (cfg.masked_attention): "auto" = FlexAttention on CUDA, SDPA with a dense mask elsewhere.
        self.attn_backend = "auto"

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

    def w_q(self, layer: int) -> torch.Tensor:
        """W_Q [d, d]: rows [0, d) of the attention's c_qkv.weight (a view); head h is rows [h·D, (h+1)·D)."""
        return self._qkv_block(layer, 0)

    def w_k(self, layer: int) -> torch.Tensor:
        """W_K [d, d]: rows [d, 2d) of c_qkv.weight (a view); head h is rows [h·D, (h+1)·D)."""
        return self._qkv_block(layer, 1)

    def w_v(self, layer: int) -> torch.Tensor:
        """W_V [d, d]: rows [2d, 3d) of c_qkv.weight (a view); head h is rows [h·D, (h+1)·D)."""
        return self._qkv_block(layer, 2)

    def w_o(self, layer: int) -> torch.Tensor:
        """W_O [d, d]: the attention's c_proj.weight; head h's output is read by columns [h·D, (h+1)·D)."""
        return self._attention(layer).c_proj.weight

    def _attention(self, layer: int) -> Attention:
        attn = self.blocks[layer].attn
        if attn is None:
            raise ValueError(f"layer {layer} has no attention (GPTConfig.no_attention)")
        return attn

    def _qkv_block(self, layer: int, j: int) -> torch.Tensor:
        d = self.config.d_model
        return self._attention(layer).c_qkv.weight[j * d : (j + 1) * d]

    def mlp_norm_gain(self, layer: int) -> torch.Tensor:
        """Gain g [d] of the RMSNorm before MLP ``layer`` (ones when parameter-free)."""
        return self.blocks[layer].ln2.gain()

    def attn_norm_gain(self, layer: int) -> torch.Tensor:
        ln1 = self.blocks[layer].ln1
        if ln1 is None:
            raise ValueError(f"layer {layer} has no attention (GPTConfig.no_attention)")
        return ln1.gain()

    def final_norm_gain(self) -> torch.Tensor:
        return self.ln_f.gain()

    # ---- forward ----
    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Residual [.., d] -> logits [.., vocab]: final norm, head, soft-cap c·tanh(z/c).

        With head_fp8, in training mode the head runs through model.fp8 (FP8 operands, bf16 logits; not with a
        LoRA adapter on the head, model.lora, which needs the module call). Half precision logits are
        soft-capped in float32 (as the record), so they come out float32.
        """
        x = self.ln_f(x)
        if self.config.head_fp8 and self.training and not getattr(self.lm_head, "has_adapter", False):
            logits = fp8_linear(x, self.lm_head.weight)
        else:
            logits = self.lm_head(x)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        c = self.config.logit_softcap
        return c * torch.tanh(logits / c) if c is not None else logits

    def attention_masks(
        self, idx: torch.Tensor, window_blocks: int | torch.Tensor | None = None
    ) -> dict[str, Mask]:
        """The masks of one forward pass on ``idx`` [B, T], by window kind: {"L": long, "S": short}.

        ``window_blocks`` (default: the config's) is the long window in blocks; short = long // 2. Pass a 0-dim
        int32 tensor while the model is compiled (an int is a constant to torch.compile: a recompile per value).
        """
        cfg = self.config
        if window_blocks is None:
            window_blocks = cfg.window_blocks
        elif cfg.window_blocks is None:
            raise ValueError("window_blocks given, but GPTConfig.window_blocks is None (no block window)")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(
                f"GPT.attn_backend must be one of {', '.join(ATTN_BACKENDS)}, got {self.attn_backend!r}"
            )
        use_flex = self.attn_backend == "flex" or (self.attn_backend == "auto" and idx.is_cuda)
        if any(b.attn is not None and b.attn.hook_pattern.active for b in self.blocks):
            use_flex = False  # the explicit path that hooks read needs the dense mask
        if cfg.doc_mask:
            docs = document_ids(idx, cfg.eot_token)
        else:
            docs = torch.zeros(idx.shape, dtype=torch.int32, device=idx.device)
        build = block_mask if use_flex else dense_mask
        masks = {"L": build(docs, window_blocks, cfg.attn_block)}
        if cfg.window_pattern is not None and "S" in cfg.window_pattern:
            masks["S"] = build(docs, window_blocks // 2, cfg.attn_block)
        return masks

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        window_blocks: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab]; with ``targets`` [B, T] -> mean cross-entropy (nats).

        ``stop_at_layer=L`` returns the residual stream [B, T, d] entering block L. ``window_blocks``: the long
        attention window in blocks for this call (see ``attention_masks``; the trainer's per-step schedule).
        """
        cfg = self.config
        x = self.hook_embed(self.wte(idx))
        if self.ln_embed is not None:
            x = self.ln_embed(x)
        x0 = x
        masks = self.attention_masks(idx, window_blocks) if cfg.masked_attention else None
        n_enc = len(self.blocks) // 2
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if stop_at_layer is not None and i >= stop_at_layer:
                return x
            if self.skip_weights is not None and i >= len(self.blocks) - n_enc:
                x = x + self.skip_weights[i - (len(self.blocks) - n_enc)] * skips.pop()
            ve = self.value_embeds[self.ve_index[i]](idx) if i in self.ve_index else None
            x = block(x, ve, x0, masks[cfg.layer_window(i)] if masks is not None else None)
            if self.skip_weights is not None and i < n_enc:
                skips.append(x)
        if stop_at_layer is not None:
            return x
        logits = self.unembed(x)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
