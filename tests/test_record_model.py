"""Record #21's network in tnt (GPTConfig(**RECORD21)) against a re-implementation of the record's forward.

The reference (record21_reference.record_forward) is the record's loop written out in plain torch, reading
tnt's weights by name: value embeddings 0 1 2 … 0 1 2, U-net pops, x0 lambdas, no attention in layer 7,
half-truncated rotary, scale 0.12, the long/short block windows and the logits 30·σ(z/7.5).
"""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from record21_reference import _rotary, loop_mask, record_forward
from torch.nn.attention.flex_attention import flex_attention

from model import GPT, ConfigError, GPTConfig, load_model, save_model
from model import attention as attention_module
from model.config import RECORD21
from model.export import ExportError, check_exportable

EOT, BLOCK, T = 5, 8, 64


def toy_record(**kw) -> GPTConfig:
    """The record's 12-layer wiring at toy width: d 32, 2 heads of 16, 8-token blocks, a 3-block window."""
    base = dict(vocab_size=128, n_head=2, d_model=32, eot_token=EOT, attn_block=BLOCK, window_blocks=3)
    return GPTConfig(**{**RECORD21, **base, **kw})


def randomised(cfg: GPTConfig, seed: int = 0) -> GPT:
    """Every weight random (zero-initialised projections, lambdas and skip weights too), in eval mode."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.25)  # lambdas, skip weights: away from 0 and 1
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model


def documents(seed: int, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 100, (batch, T), generator=g)
    idx[idx == EOT] = 0
    idx[torch.rand(batch, T, generator=g) < 0.06] = EOT
    idx[:, 0] = EOT
    return idx


def reference_logits(model: GPT, idx: torch.Tensor, n_blocks: int) -> torch.Tensor:
    params = dict(model.named_parameters())
    cfg = model.config
    return record_forward(params, idx, cfg.n_head, n_blocks, cfg.attn_block, cfg.eot_token, cfg.rope_base)


@pytest.mark.parametrize("n_blocks", [3, 1, 6])
def test_forward_equals_the_records_forward_with_the_same_weights(n_blocks):
    model = randomised(toy_record())
    idx = documents(seed=n_blocks)
    targets = torch.randint(0, 100, (1, T))
    with torch.no_grad():
        got = model(idx, window_blocks=torch.tensor(n_blocks, dtype=torch.int32))
        ref = reference_logits(model, idx[0], n_blocks)
        # the record's logits are tnt's + 15: the same log-probabilities and loss
        torch.testing.assert_close(got[0] + 15, ref, atol=2e-5, rtol=2e-5)
        loss = model(idx, targets, window_blocks=torch.tensor(n_blocks))
        ref_loss = F.cross_entropy(ref, targets[0])
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)


def test_the_reference_sees_the_wiring():
    """Sanity of the comparison above: moving any one record-specific weight moves the reference's logits."""
    model = randomised(toy_record())
    idx = documents(seed=1)
    with torch.no_grad():
        base = reference_logits(model, idx[0], 3)
        for name in [
            "value_embeds.2.weight",
            "skip_weights",
            "blocks.11.lambdas",
            "blocks.3.attn.ve_lambdas",
        ]:
            p = dict(model.named_parameters())[name]
            p.mul_(1.5)
            assert not torch.allclose(reference_logits(model, idx[0], 3), base, atol=1e-4), name
            p.div_(1.5)


def test_layer_7_has_no_attention_and_value_embeddings_serve_layers_0_2_and_9_11():
    model = GPT(toy_record())
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("blocks.7.attn") or n.startswith("blocks.7.ln1") for n in names)
    assert {f"blocks.{i}.attn.ve_lambdas" for i in range(12) if i != 7} <= names
    assert model.ve_index == {0: 0, 1: 1, 2: 2, 9: 0, 10: 1, 11: 2}
    assert model.skip_weights.shape == (6,) and model.blocks[0].lambdas.tolist() == [1.0, 0.0]
    assert model.blocks[3].attn.ve_lambdas.tolist() == [0.5, 0.5] and model.blocks[3].attn.scale == 0.12
    assert "blocks.7.attn.c_qkv.weight" not in model.projection_blocks()
    with pytest.raises(ValueError, match="layer 7 has no attention"):
        model.attn_norm_gain(7)


def test_record_config_values():
    cfg = GPTConfig(**RECORD21)
    assert (cfg.n_layer, cfg.d_model, cfg.head_dim, cfg.hidden, cfg.vocab_size) == (12, 768, 128, 3072, 50304)
    assert cfg.window_pattern == "LSSSLS" + "LSSSLS"[::-1]
    bilinear = GPTConfig(**{**RECORD21, "mlp": "bilinear"})
    assert bilinear.hidden == 2048  # 3·768·2048 = 2·768·3072: parameter-matched
    small = [GPTConfig(**{**c.to_dict(), "vocab_size": 64, "eot_token": 0}) for c in (cfg, bilinear)]
    counts = [sum(p.numel() for n, p in GPT(c).named_parameters() if ".mlp." in n) for c in small]
    assert counts[0] == counts[1]


def test_half_truncated_rotary_equals_the_record_formula():
    model = GPT(toy_record())
    x = torch.randn(1, 40, 2, 16)
    torch.testing.assert_close(model.blocks[0].attn.rotary(x)[0], _rotary(x[0], 1024.0), atol=1e-6, rtol=1e-6)


def test_documents_do_not_see_each_other(monkeypatch):
    """Perturb one document's tokens (its EOT kept): later documents' logits do not move; its own do."""
    monkeypatch.setattr(attention_module, "_compiled_flex", flex_attention)  # eager: its mask_mod is the mask
    model = randomised(toy_record())
    idx = documents(seed=2)
    starts = (idx[0] == EOT).nonzero().flatten().tolist()
    assert len(starts) >= 3
    a, b = starts[1], starts[2]  # the second document is [a, b)
    other = idx.clone()
    other[0, a + 1 : b] = (idx[0, a + 1 : b] + 1) % 100
    other[other == EOT] = 6
    other[0, starts] = EOT
    with torch.no_grad():
        for backend in ("sdpa", "flex"):
            model.attn_backend = backend
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                before, after = model(idx), model(other)
            torch.testing.assert_close(after[0, :a], before[0, :a], atol=0, rtol=0)
            torch.testing.assert_close(after[0, b:], before[0, b:], atol=1e-6, rtol=1e-6)
            if b - a > 2:
                assert not torch.allclose(after[0, a + 1 : b], before[0, a + 1 : b], atol=1e-4)


def test_flex_backend_equals_sdpa_backend(monkeypatch):
    """Same model, FlexAttention masks against dense SDPA masks (eager flex: its mask_mod carries the window)."""
    monkeypatch.setattr(attention_module, "_compiled_flex", flex_attention)
    model = randomised(toy_record())
    idx = documents(seed=4, batch=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.attn_backend = "sdpa"
        dense = model(idx)
        model.attn_backend = "flex"
        flex = model(idx)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    model.attn_backend = "triton"
    with pytest.raises(ValueError, match="attn_backend"):
        model(idx)


def test_window_argument_equals_the_configured_window():
    """forward(window_blocks=n) computes what a model configured with window_blocks=n computes."""
    model = randomised(toy_record(window_blocks=6))
    fixed = GPT(toy_record(window_blocks=2)).eval()
    fixed.load_state_dict(model.state_dict())
    idx = documents(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, window_blocks=torch.tensor(2)), fixed(idx), atol=0, rtol=0)
        assert not torch.allclose(model(idx), fixed(idx), atol=1e-4)


def test_attention_pattern_hook_reads_the_masked_pattern():
    model = randomised(toy_record())
    idx = documents(seed=6)
    with torch.no_grad():
        plain = model(idx)
        logits, cache = model.run_with_cache(idx, names_filter="blocks.1.attn.hook_pattern")
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    pattern = cache["blocks.1.attn.hook_pattern"][0]  # layer 1 is short: 3 // 2 = 1 block
    outside = ~loop_mask(idx[0], EOT, 1, BLOCK)
    assert pattern[:, outside].abs().max() == 0
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, T))


def test_doc_mask_without_a_window_and_with_standard_parts():
    """doc_mask alone on the default architecture: causal attention inside documents, nothing else changed."""
    cfg = GPTConfig(
        vocab_size=128, n_layer=2, n_head=2, d_model=16, mlp="bilinear", doc_mask=True, eot_token=EOT
    )
    model = randomised(cfg)
    plain = GPT(GPTConfig(**{**cfg.to_dict(), "doc_mask": False})).eval()
    plain.load_state_dict(model.state_dict())
    idx = documents(seed=7)
    second = (idx[0] == EOT).nonzero().flatten().tolist()[1]
    with torch.no_grad():
        masked, full = model(idx), plain(idx)
    torch.testing.assert_close(masked[0, :second], full[0, :second], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(masked[0, second:], full[0, second:], atol=1e-4)
    with pytest.raises(ValueError, match="window_blocks given"):
        model(idx, window_blocks=2)


def test_config_round_trip_and_old_config_files(tmp_path):
    model = randomised(toy_record())
    save_model(model, tmp_path / "rec")
    loaded = load_model(tmp_path / "rec").eval()
    assert loaded.config == model.config and loaded.config.no_attention == (7,)
    idx = documents(seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx), atol=0, rtol=0)
    # a config.json written before these fields existed loads with their defaults
    old = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16))
    save_model(old, tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    for name in (
        "attn_scale",
        "rope_kind",
        "embed_norm",
        "x0_lambdas",
        "v_lambdas",
        "no_attention",
        "doc_mask",
    ):
        del saved["model"][name]
    for name in ("eot_token", "window_blocks", "window_pattern", "attn_block", "head_fp8"):
        del saved["model"][name]
    path.write_text(json.dumps(saved))
    assert load_model(tmp_path / "old").config == old.config


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("attn_scale", 0.0, "attn_scale must be a positive number"),
        ("rope_kind", "yarn", "rope_kind must be one of"),
        ("no_attention", (12,), r"no_attention must list layer indices in \[0, 12\)"),
        ("no_attention", (3, 3), "lists a layer twice"),
        ("eot_token", 128, "eot_token must be a token id"),
        ("window_blocks", 0, "window_blocks must be a positive integer"),
        ("attn_block", 0, "attn_block must be a positive integer"),
        ("window_pattern", "LS", "window_pattern must be a string of 12 letters"),
        ("window_pattern", "LSSSLSSLSSSX", "window_pattern must be a string of 12 letters"),
        ("x0_lambdas", 1, "x0_lambdas must be true or false"),
        ("norm_eps", 0.0, "norm_eps must be a number in"),
    ],
)
def test_bad_record_fields_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        toy_record(**{field: value})


def test_incompatible_combinations_are_refused():
    with pytest.raises(ConfigError, match="window_pattern needs window_blocks"):
        GPTConfig(n_layer=2, window_pattern="LS")
    with pytest.raises(ConfigError, match="cannot be combined"):
        GPTConfig(n_layer=2, window=16, doc_mask=True)
    with pytest.raises(ConfigError, match="head_dim divisible by 4"):
        GPTConfig(n_layer=2, n_head=2, d_model=12, rope_kind="half_truncated")
    with pytest.raises(ConfigError, match="unknown GPTConfig field"):
        GPTConfig.from_dict({"window_size": 3})


def test_export_refuses_the_record_parts():
    with pytest.raises(ExportError) as e:
        check_exportable(GPTConfig(**{**RECORD21, "mlp": "bilinear", "logit_softcap": None}))
    for field in (
        "attn_scale",
        "rope_kind",
        "embed_norm",
        "x0_lambdas",
        "v_lambdas",
        "no_attention",
        "doc_mask",
    ):
        assert f"GPTConfig.{field}=" in str(e.value)


@pytest.mark.gpu
def test_compiled_model_on_cuda_flex_equals_sdpa_forward_and_backward():
    """The trainer's path: torch.compile(model) with FlexAttention masks built inside the graph, the window a
    tensor, the FP8 head in training mode; against the SDPA dense-mask path (same weights, fp32)."""
    model = randomised(toy_record(attn_block=128, window_blocks=2)).cuda().train()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 100, (1, 512), generator=g)
    idx[idx == EOT] = 0
    idx[0, ::97] = EOT
    idx, y = idx.cuda(), torch.randint(0, 100, (1, 512), generator=g).cuda()
    window = torch.tensor(2, dtype=torch.int32, device="cuda")
    losses, grads = [], []
    for backend, fn in (("flex", torch.compile(model)), ("sdpa", model)):
        model.attn_backend = backend
        model.zero_grad(set_to_none=True)
        loss = fn(idx, y, window_blocks=window)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], atol=1e-4, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-3, rtol=1e-2, msg=name)
