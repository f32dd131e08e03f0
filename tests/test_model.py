"""The network: each MLP kind against an independent dense reference, widths, hooks, attention, config, I/O."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, CheckpointError, ConfigError, GPTConfig, load_model, save_model

KINDS = ["relu2", "gelu", "bilinear", "reglu", "geglu", "swiglu", "multilinear"]


def small_config(**kw) -> GPTConfig:
    base = dict(vocab_size=97, n_layer=2, n_head=2, d_model=32, mlp="bilinear")
    base.update(kw)
    return GPTConfig(**base)


def randomise(model: GPT, seed: int = 0) -> GPT:
    """Zero-initialised projections make many checks trivial; give every weight random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(max(p.shape[-1], 1)))
    return model


def dense_mlp_reference(kind: str, k: int, w_up: torch.Tensor, w_p: torch.Tensor, x: torch.Tensor):
    """MLP output from the weights alone: elementwise formulas, and for (multi)linear kinds the dense CP tensor."""
    if kind in ("relu2", "gelu"):
        a = x @ w_up.T
        hidden = (
            F.relu(a) ** 2
            if kind == "relu2"
            else 0.5 * a * (1 + torch.tanh(0.7978845608 * (a + 0.044715 * a**3)))
        )
        return hidden @ w_p.T
    factors = w_up.chunk(k, dim=0)  # k × [h, d]
    if kind == "bilinear":
        tensor = torch.einsum("ah,hi,hj->aij", w_p, factors[0], factors[1])  # B_{aij} = Σ_h P_ah W_hi V_hj
        return torch.einsum("aij,...i,...j->...a", tensor, x, x)
    if kind == "multilinear":
        assert k == 3
        tensor = torch.einsum("ah,hi,hj,hl->aijl", w_p, *factors)
        return torch.einsum("aijl,...i,...j,...l->...a", tensor, x, x, x)
    a, b = x @ factors[0].T, x @ factors[1].T
    act = {"reglu": lambda t: t.clamp(min=0), "swiglu": lambda t: t / (1 + torch.exp(-t))}
    act["geglu"] = lambda t: 0.5 * t * (1 + torch.tanh(0.7978845608 * (t + 0.044715 * t**3)))
    return (act[kind](a) * b) @ w_p.T


@pytest.mark.parametrize("kind", KINDS)
def test_mlp_forward_equals_independent_reference(kind):
    k = 3 if kind == "multilinear" else 2
    cfg = small_config(mlp=kind, mlp_order=k, d_model=16, n_head=2, mlp_hidden=24)
    model = randomise(GPT(cfg).double())
    mlp = model.blocks[1].mlp
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    expected = dense_mlp_reference(kind, mlp.order, mlp.c_fc.weight, mlp.c_proj.weight, x)
    torch.testing.assert_close(mlp(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_mlp_gradients_match_finite_differences(kind):
    cfg = small_config(
        mlp=kind, mlp_order=3 if kind == "multilinear" else 2, d_model=8, n_head=2, mlp_hidden=6
    )
    mlp = randomise(GPT(cfg).double()).blocks[0].mlp
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *w: mlp(x), (x, mlp.c_fc.weight, mlp.c_proj.weight))


def test_accessors_are_views_of_the_stacked_weight():
    model = randomise(GPT(small_config(mlp="multilinear", mlp_order=3)))
    w = model.blocks[0].mlp.c_fc.weight
    h = model.config.hidden
    ws = model.w_in(0)
    assert len(ws) == 3 and all(t.shape == (h, 32) for t in ws)
    for j, t in enumerate(ws):
        assert t.data_ptr() == w[j * h].data_ptr()
    torch.testing.assert_close(model.w_l(0), w[:h])
    torch.testing.assert_close(model.w_r(0), w[h : 2 * h])
    assert model.w_p(0).shape == (32, h)
    assert model.w_e.shape == model.w_u.shape == (97, 32)
    torch.testing.assert_close(model.mlp_norm_gain(0), torch.ones(32))
    with pytest.raises(ValueError, match="layer 0.*relu2"):
        GPT(small_config(mlp="relu2")).w_r(0)


@pytest.mark.parametrize("d", [768, 1024])
def test_parameter_counts_follow_the_width_convention(d):
    """Hidden widths keep MLP parameters equal to a 4d ReLU² MLP, up to rounding h to a multiple of 64."""
    counts = {}
    for kind in KINDS + ["multilinear4"]:
        k = 4 if kind == "multilinear4" else 3 if kind == "multilinear" else 2
        cfg = GPTConfig(vocab_size=64, n_layer=1, n_head=8, d_model=d, mlp=kind.rstrip("4"), mlp_order=k)
        mlp = GPT(cfg).blocks[0].mlp
        expected_h = 4 * d if kind in ("relu2", "gelu") else 64 * round(8 * d / (cfg.order + 1) / 64)
        assert mlp.hidden == expected_h
        counts[kind] = sum(p.numel() for p in mlp.parameters())
        assert counts[kind] == (cfg.order + 1) * expected_h * d
    for kind, n in counts.items():
        assert abs(n / counts["relu2"] - 1) < 0.03, kind
    assert GPTConfig(d_model=64, n_head=1, mlp="bilinear", mlp_hidden=100).hidden == 100


def test_hook_names_and_cache_shapes():
    model = randomise(GPT(small_config(n_layer=2)))
    tokens = torch.randint(0, 97, (2, 7))
    logits, cache = model.run_with_cache(tokens)
    h = model.config.hidden
    expected = {
        "blocks.1.hook_resid_pre": (2, 7, 32),
        "blocks.1.hook_resid_mid": (2, 7, 32),
        "blocks.1.hook_resid_post": (2, 7, 32),
        "blocks.1.attn.hook_pattern": (2, 2, 7, 7),
        "blocks.1.mlp.hook_pre": (2, 7, h),
        "blocks.1.mlp.hook_pre_linear": (2, 7, h),
        "blocks.1.mlp.hook_post": (2, 7, h),
        "blocks.1.hook_mlp_out": (2, 7, 32),
        "blocks.1.ln2.hook_normalized": (2, 7, 32),
    }
    for name, shape in expected.items():
        assert cache[name].shape == shape, name
    # the cached pieces are consistent with each other and with the model's output
    torch.testing.assert_close(
        cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_mid"] + cache["blocks.1.hook_mlp_out"]
    )
    torch.testing.assert_close(
        cache["blocks.1.mlp.hook_post"],
        cache["blocks.1.mlp.hook_pre"] * cache["blocks.1.mlp.hook_pre_linear"],
    )
    pattern = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 7))
    assert torch.all(pattern.triu(1) == 0)
    torch.testing.assert_close(
        logits, model(tokens), rtol=1e-5, atol=1e-5
    )  # explicit-attention path = SDPA path
    torch.testing.assert_close(model.unembed(cache["blocks.1.hook_resid_post"]), logits)


def test_names_filter_and_stop_at_layer():
    model = randomise(GPT(small_config(n_layer=3)))
    tokens = torch.randint(0, 97, (1, 6))
    resid, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("resid_pre"), stop_at_layer=2
    )
    assert set(cache) == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"}
    _, full = model.run_with_cache(tokens, names_filter=["blocks.2.hook_resid_pre"])
    torch.testing.assert_close(resid, full["blocks.2.hook_resid_pre"])
    with pytest.raises(KeyError, match="unknown hook point"):
        model.run_with_cache(tokens, names_filter=["blocks.9.hook_resid_pre"])


def test_run_with_hooks_edits_activations_and_cleans_up():
    model = randomise(GPT(small_config()))
    tokens = torch.randint(0, 97, (2, 5))
    clean = model(tokens)
    ablated = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: torch.zeros_like(x))]
    )
    assert not torch.allclose(clean, ablated)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_mid")
    torch.testing.assert_close(ablated, model.unembed(cache["blocks.1.hook_resid_mid"]))
    # a hook on the pre-activation changes the gated product; the hooks are gone afterwards
    doubled = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_pre", lambda x, hook: 2 * x)])
    assert not torch.allclose(clean, doubled)
    torch.testing.assert_close(model(tokens), clean)
    assert not any(h.fns for h in model.hook_dict.values())


def test_attention_is_causal_and_windowed():
    tokens = torch.randint(0, 97, (1, 12))
    changed = tokens.clone()
    changed[0, 0] = (tokens[0, 0] + 1) % 97
    model = randomise(GPT(small_config(n_layer=1)))
    a, b = model(tokens), model(changed)
    assert not torch.allclose(a[0, 5], b[0, 5])  # full attention: position 5 sees token 0
    changed_late = tokens.clone()
    changed_late[0, 8] = (tokens[0, 8] + 1) % 97
    torch.testing.assert_close(model(changed_late)[0, :8], a[0, :8])  # causal
    windowed = randomise(GPT(small_config(n_layer=1, window=4)))
    a, b = windowed(tokens), windowed(changed)
    torch.testing.assert_close(a[0, 4:], b[0, 4:])  # positions >= 4 no longer see token 0
    assert not torch.allclose(a[0, 3], b[0, 3])


@pytest.mark.parametrize("options", [dict(value_embeds=True), dict(unet_skips=True), dict(norm_gain=True)])
def test_options_change_the_function_and_get_gradients(options):
    plain = randomise(GPT(small_config(n_layer=4)))
    model = GPT(small_config(n_layer=4, **options))
    model.load_state_dict(plain.state_dict(), strict=False)
    new = {n: p for n, p in model.named_parameters() if n not in dict(plain.named_parameters())}
    assert new, "the option adds parameters"
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in new.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    tokens = torch.randint(0, 97, (2, 8))
    assert not torch.allclose(model(tokens), plain(tokens))
    model(tokens, tokens).backward()
    for name, p in new.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_initialised_head_predicts_uniformly():
    model = GPT(small_config(n_layer=2))
    tokens = torch.randint(0, 97, (2, 8))
    assert math.isclose(model(tokens, tokens).item(), math.log(97), rel_tol=1e-5)


def test_nested_hooks_keep_the_outer_hook():
    model = randomise(GPT(small_config()))
    tokens = torch.randint(0, 97, (1, 5))
    zero = [("blocks.1.hook_mlp_out", lambda x, hook: torch.zeros_like(x))]
    with model.hooks(zero):
        ablated = model(tokens)
        inner, _ = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
    torch.testing.assert_close(inner, ablated)  # the outer ablation still applied inside run_with_cache
    assert not torch.allclose(model(tokens), ablated)


def test_logit_softcap_bounds_logits():
    model = randomise(GPT(small_config(logit_softcap=2.0)))
    logits = model(torch.randint(0, 97, (1, 9)))
    assert logits.abs().max() < 2.0


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_head=3), "n_head=3 must divide d_model=32"),
        (dict(mlp="tanh"), "GPTConfig.mlp must be one of"),
        (dict(d_model=0), "d_model must be a positive integer"),
        (dict(mlp="multilinear", mlp_order=1), "mlp_order must be an integer >= 2"),
        (dict(mlp="bilinear", mlp_order=3), "only applies to mlp='multilinear'"),
        (dict(mlp_hidden=-4), "mlp_hidden must be a positive integer"),
    ],
)
def test_bad_configs_give_clear_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**kw)


def test_vocab_check():
    cfg = small_config()
    cfg.check_vocab(96)
    with pytest.raises(ConfigError, match="does not cover the data: it holds token id 97"):
        cfg.check_vocab(97)


def test_save_load_round_trip(tmp_path):
    model = randomise(GPT(small_config(mlp="swiglu", norm_gain=True)))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    tokens = torch.randint(0, 97, (2, 6))
    torch.testing.assert_close(loaded(tokens), model(tokens))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_corrupt_checkpoints_give_clear_errors(tmp_path):
    model = GPT(small_config())
    save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "m")
    weights.write_bytes(data)
    (tmp_path / "m" / "config.json").write_text('{"model": {"vocab_size": 97, "n_layer": 2, "n_head": 2}')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(
        '{"model": {"vocab_size": 97, "n_layer": 2, "n_head": 2, "d_model": 64, "mlp": "bilinear"}}'
    )
    with pytest.raises(CheckpointError, match="has shape .* config.json implies"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"model": {"vocab_size": 97, "n_heads": 2}}')
    with pytest.raises(CheckpointError, match="unknown GPTConfig field"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_model(tmp_path / "nope")


@pytest.mark.parametrize("kind", ["bilinear", "swiglu", "multilinear"])
def test_model_through_the_triton_kernels_matches_the_torch_path(kind):
    """The MLP product dispatch: the real Triton kernels (interpreted on CPU) inside the network."""
    import kernels

    model = randomise(GPT(small_config(mlp=kind, mlp_order=3 if kind == "multilinear" else 2)))
    tokens = torch.randint(0, 97, (2, 6))
    grads = {}
    for backend in ("torch", "triton"):
        model.zero_grad()
        with kernels.use_backend(backend):
            loss = model(tokens, tokens)
            loss.backward()
        grads[backend] = (loss.detach(), model.blocks[0].mlp.c_fc.weight.grad.clone())
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["triton"][1], grads["torch"][1], rtol=1e-4, atol=1e-6)
