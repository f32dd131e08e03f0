"""LoRA adapters (model.lora): which weights change, ΔW = (α/r)·B A, the separator mask, gradients, I/O, compile.

References are independent of model.lora: the row ranges each target owns are written out here from the
weight layout (c_qkv = [W_Q; W_K; W_V], c_fc = [W_1; …; W_k]), ΔW is recomputed with a plain matmul, and the
masked model is compared with the untouched base model and with a plain GPT loaded with the merged weights.
"""

import copy
import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from model import GPT, CheckpointError, ConfigError, GPTConfig, load_model, save_model
from model.config import RECORD21
from model.lora import (
    LORA_TARGETS,
    LoRAConfig,
    adapter_state_dict,
    apply_lora,
    lora_config,
    lora_parameters,
    merged_state_dict,
    parse_lora_targets,
)

SEP = 3  # the separator token of the mask tests
T = 16


def config(kind: str = "bilinear", **kw) -> GPTConfig:
    base = dict(vocab_size=64, n_layer=2, n_head=2, d_model=16, mlp=kind, mlp_hidden=8)
    if kind == "multilinear":
        base["mlp_order"] = 3
    return GPTConfig(**{**base, **kw})


def record_config() -> GPTConfig:
    """Record #21's 12-layer wiring (no attention in layer 7, value embeddings, U-net, doc mask) at toy width."""
    small = dict(vocab_size=64, n_head=2, d_model=16, eot_token=5, attn_block=8, window_blocks=2)
    return GPTConfig(**{**RECORD21, **small})


CONFIGS = {"bilinear": config, "multilinear": lambda: config("multilinear"), "relu2": lambda: config("relu2")}
CONFIGS["record21"] = record_config


def randomised(cfg: GPTConfig, seed: int = 0) -> GPT:
    """Every weight random (zero-initialised projections too), eval mode."""
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.25)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model


def randomise_adapters(model: GPT, seed: int = 1) -> None:
    """Nonzero B (and embedding A): otherwise ΔW = 0 and every check below would pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def tokens(batch: int = 3, seed: int = 0, vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (batch, T), generator=g)
    return torch.where(idx == SEP, SEP + 1, idx)


def adapted(cfg: GPTConfig, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """bool row masks [rows] of the weights each target set may change (the layout, written out here)."""
    d, h, k = cfg.d_model, cfg.hidden, cfg.order
    rows = {
        "q": ("attn.c_qkv", 0, d),
        "k": ("attn.c_qkv", d, 2 * d),
        "v": ("attn.c_qkv", 2 * d, 3 * d),
        "o": ("attn.c_proj", 0, d),
        "mlp_w": ("mlp.c_fc", 0, h),
        "mlp_v": ("mlp.c_fc", h, k * h),
        "mlp_p": ("mlp.c_proj", 0, d),
    }
    shapes = {n: p.shape[0] for n, p in GPT(cfg).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for t in targets:
        if t in ("head", "embed"):
            name = "lm_head.weight" if t == "head" else "wte.weight"
            out[name] = torch.ones(shapes[name], dtype=torch.bool)
            continue
        module, start, stop = rows[t]
        for i in range(cfg.n_layer):
            name = f"blocks.{i}.{module}.weight"
            if name in shapes:  # layers without attention have no attn weights
                out.setdefault(name, torch.zeros(shapes[name], dtype=torch.bool))[start:stop] = True
    return out


def expected_delta(model: GPT, name: str, cfg: GPTConfig, lora: LoRAConfig) -> torch.Tensor:
    """ΔW of weight ``name`` from the adapter parameters, by plain matmuls: (α/r)·B A per adapted row block."""
    params = dict(model.named_parameters())
    prefix = name.removesuffix(".weight")
    s = (lora.alpha or lora.rank) / lora.rank
    if name == "wte.weight":
        return s * params["wte.lora_A.w"] @ params["wte.lora_B.w"]
    delta = torch.zeros_like(params[name])
    if name.endswith("c_qkv.weight"):
        blocks = [("q", 0), ("k", 1), ("v", 2)]
        size = cfg.d_model
    elif name.endswith("c_fc.weight"):
        blocks, size = [(f"w{j + 1}", j) for j in range(cfg.order)], cfg.hidden
    else:
        blocks, size = [("w", 0)], delta.shape[0]
    for label, j in blocks:
        if f"{prefix}.lora_A.{label}" in params:
            a, b = params[f"{prefix}.lora_A.{label}"], params[f"{prefix}.lora_B.{label}"]
            delta[j * size : (j + 1) * size] = s * b @ a
    return delta


def adam_steps(model: GPT, n: int = 2) -> None:
    opt = torch.optim.Adam(lora_parameters(model), lr=1e-2)
    for step in range(n):
        idx = tokens(2, seed=10 + step)
        loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


SUBSETS = [*((t,) for t in LORA_TARGETS), "all,-k", "all,head,embed"]  # "k" alone is ("k",)
CASES = [("bilinear", s) for s in SUBSETS] + [
    ("multilinear", "mlp_v"),
    ("multilinear", "all,head,embed"),
    ("relu2", "mlp"),
    ("relu2", "all,head,embed"),
    ("record21", "all,head,embed"),
    ("record21", "q,o,mlp_p"),
]


@pytest.mark.parametrize(
    "kind,targets", CASES, ids=[f"{k}-{t if isinstance(t, str) else t[0]}" for k, t in CASES]
)
def test_merged_weights_differ_from_the_base_only_in_the_targets(kind, targets):
    cfg = CONFIGS[kind]()
    names = parse_lora_targets(
        ",".join(targets) if isinstance(targets, tuple) else targets, mlp_order=cfg.order
    )
    lora = LoRAConfig(rank=2, targets=names, alpha=3.0)
    base = randomised(cfg)
    model = copy.deepcopy(base)
    apply_lora(model, lora, torch.Generator().manual_seed(0))
    randomise_adapters(model)
    adam_steps(model)
    model.eval()
    before = base.state_dict()
    after = {n: t for n, t in model.state_dict().items() if n in before}
    assert all(torch.equal(after[n], before[n]) for n in before)  # training moved no base weight
    merged = merged_state_dict(model)
    assert list(merged) == list(before)  # a plain GPT's keys, in its order
    changes = adapted(cfg, names)
    assert changes, "the target set selects weights"
    for name, w in before.items():
        rows = changes.get(name, torch.zeros(w.shape[0] if w.ndim else 1, dtype=torch.bool))
        diff = (merged[name] - w).reshape(w.shape[0], -1) if w.ndim else merged[name] - w
        if w.ndim:
            assert torch.equal(merged[name][~rows], w[~rows]), name
            assert (diff[rows].abs().amax(-1) > 0).all(), f"{name}: an adapted row did not change"
            if rows.any():
                want = expected_delta(model, name, cfg, lora)
                torch.testing.assert_close(merged[name] - w, want, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(merged[name], w), name
    plain = GPT(cfg).eval()
    plain.load_state_dict(merged)
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(plain(idx), model(idx), rtol=1e-5, atol=1e-5)


def test_parameter_names_of_the_base_are_unchanged_and_frozen():
    cfg = config()
    model = randomised(cfg)
    names = [n for n, _ in model.named_parameters()]
    adapters = apply_lora(model, LoRAConfig(2, parse_lora_targets("all,head,embed")))
    after = dict(model.named_parameters())
    assert names == [n for n in after if ".lora_" not in n]
    assert all(not after[n].requires_grad for n in names)
    assert [id(p) for p in adapters] == [id(p) for n, p in after.items() if ".lora_" in n]
    assert all(p.requires_grad for p in adapters)
    assert "blocks.0.attn.c_qkv.lora_A.k" in after and "blocks.1.mlp.c_fc.lora_B.w2" in after


@pytest.mark.parametrize("kind", ["bilinear", "relu2", "record21"])
def test_step_zero_leaves_the_function_unchanged_and_only_adapters_get_gradients(kind):
    cfg = CONFIGS[kind]()
    base = randomised(cfg)
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(4, parse_lora_targets("all,head,embed", cfg.order), mask_token=SEP))
    idx = tokens()
    idx[0, 5] = SEP
    assert torch.equal(model(idx), base(idx))
    model.train()
    model(idx[:, :-1], idx[:, 1:]).backward()
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    grads_b = [p.grad for n, p in model.named_parameters() if ".lora_B." in n and not n.startswith("wte")]
    assert all(g.abs().max() > 0 for g in grads_b)  # B = 0 but its gradient is not


def separated(seed: int = 0) -> torch.Tensor:
    """Row 0: separator at 4 (and again at 9); row 1: at 0; row 2: none."""
    idx = tokens(3, seed)
    idx[0, 4] = idx[0, 9] = SEP
    idx[1, 0] = SEP
    return idx


FIRST_SEP = [4, 0, None]


@pytest.mark.parametrize(
    "kind,bf16", [("bilinear", False), ("multilinear", False), ("record21", False), ("bilinear", True)]
)
def test_mask_leaves_positions_up_to_the_separator_exactly_unchanged(kind, bf16):
    cfg = CONFIGS[kind]()
    base = randomised(cfg)
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(2, parse_lora_targets("all,head,embed", cfg.order), mask_token=SEP))
    randomise_adapters(model)
    idx = separated()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        want, got = base(idx), model(idx)
    for row, s in enumerate(FIRST_SEP):
        stop = T if s is None else s + 1
        assert torch.equal(got[row, :stop], want[row, :stop]), (
            f"row {row}: a position up to the separator changed"
        )
        if s is not None:
            changed = (got[row, stop:] - want[row, stop:]).abs().amax(-1)
            assert (changed > 0).all(), f"row {row}: a position after the separator is the base model's"


def test_gradients_reach_the_adapters_only_through_positions_after_the_separator():
    cfg = config()
    model = copy.deepcopy(randomised(cfg))
    apply_lora(model, LoRAConfig(2, parse_lora_targets("all,head,embed"), mask_token=SEP))
    randomise_adapters(model)
    idx = separated()
    after = torch.zeros(idx.shape, dtype=torch.bool)
    for row, s in enumerate(FIRST_SEP):
        if s is not None:
            after[row, s + 1 :] = True
    weights = torch.randn(*idx.shape, cfg.vocab_size, generator=torch.Generator().manual_seed(3))

    def grads(where: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logits = model(idx)
        (logits * weights * where[..., None]).sum().backward()
        return [p.grad.clone() for p in lora_parameters(model)]

    before = grads(~after)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in before)
    post, full = grads(after), grads(torch.ones_like(after))
    assert all(g.abs().max() > 0 for g in post)
    for a, b in zip(post, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mask_follows_idx_in_every_call_and_in_a_deep_copy():
    cfg = config()
    base = randomised(cfg)
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(2, ("q", "mlp_w", "head"), mask_token=SEP))
    randomise_adapters(model)
    idx = separated()
    twin = copy.deepcopy(model)
    moved = idx.clone()
    moved[0, 4], moved[0, 9], moved[0, 12] = 7, 7, SEP
    with torch.no_grad():
        first = model(idx)
        got = twin(moved)  # the copy computes its own mask (its hook is bound to its own state)
        assert torch.equal(got[0, :13], base(moved)[0, :13])
        assert (got[0, 13:] - base(moved)[0, 13:]).abs().amax(-1).gt(0).all()
        assert torch.equal(model(moved), got)
        assert torch.equal(model(idx), first)


def test_compiled_model_gives_the_eager_loss_with_the_mask():
    """torch.compile (as the cpu-demo trains): the mask is traced from idx, not baked in (≈6 s to compile)."""
    cfg = config(n_layer=1)
    model = copy.deepcopy(randomised(cfg))
    apply_lora(model, LoRAConfig(2, parse_lora_targets("all,head,embed"), mask_token=SEP))
    randomise_adapters(model)
    compiled = torch.compile(model)
    idx = separated()
    moved = idx.clone()
    moved[0, 4], moved[1, 0], moved[2, 6] = 7, 8, SEP
    with torch.no_grad():
        for batch in (idx, moved):
            x, y = batch[:, :-1], batch[:, 1:]
            torch.testing.assert_close(compiled(x, y), model(x, y), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(idx[:, :-1], idx[:, 1:]), model(moved[:, :-1], moved[:, 1:]))


# ---------------------------------------------------------------- checkpoints


def saved_lora_model(tmp_path, kind: str = "bilinear") -> tuple[GPT, LoRAConfig]:
    cfg = CONFIGS[kind]()
    model = copy.deepcopy(randomised(cfg))
    lora = LoRAConfig(2, parse_lora_targets("all,-k,embed", cfg.order), alpha=4.0, mask_token=SEP)
    apply_lora(model, lora)
    randomise_adapters(model)
    save_model(model, tmp_path, extra_config={"train": {"steps": 1}})
    return model, lora


@pytest.mark.parametrize("kind", ["bilinear", "record21"])
def test_save_and_load_round_trip(tmp_path, kind):
    model, lora = saved_lora_model(tmp_path, kind)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "lora.safetensors", "config.json"} <= files
    plain = load_model(tmp_path)
    assert lora_config(plain) is None and not any(".lora_" in n for n in plain.state_dict())
    merged = merged_state_dict(model)
    assert all(torch.equal(t, merged[n]) for n, t in plain.state_dict().items())
    again = load_model(tmp_path, adapters=True).eval()
    assert lora_config(again) == lora
    want = adapter_state_dict(model)
    got = adapter_state_dict(again)
    assert list(got) == list(want) and all(torch.equal(got[n], want[n]) for n in want)
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in again.state_dict().items())
    idx = separated()
    with torch.no_grad():
        assert torch.equal(again(idx), model(idx))  # the same function, mask included


def test_saving_a_plain_model_removes_a_stale_adapter_file(tmp_path):
    saved_lora_model(tmp_path)
    save_model(randomised(config()), tmp_path)
    assert not (tmp_path / "lora.safetensors").exists()


def one_line_error(tmp_path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(tmp_path, adapters=True)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_or_corrupt_adapter_file_is_a_one_line_error(tmp_path):
    saved_lora_model(tmp_path)
    path = tmp_path / "lora.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path, r"lora\.safetensors: not a readable safetensors file")
    load_model(tmp_path)  # the plain model does not need the adapters
    path.unlink()
    one_line_error(tmp_path, r"lora\.safetensors: file not found")


def rewrite_adapters(tmp_path, edit) -> None:
    path = tmp_path / "lora.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    edit(tensors)
    path.write_bytes(safetensors.torch.save(tensors))


def test_wrong_missing_or_nonfinite_adapters_are_one_line_errors(tmp_path):
    saved_lora_model(tmp_path)
    original = (tmp_path / "lora.safetensors").read_bytes()
    cases = [
        (lambda t: t.update({"blocks.0.attn.c_qkv.lora_A.q": torch.zeros(3, 16)}), r"'blocks\.0\.attn\.c_qkv\.lora_A\.q' has shape \(3, 16\)"),
        (lambda t: t.pop("wte.lora_B.w"), r"missing \['wte\.lora_B\.w'\]"),
        (lambda t: t.update({"blocks.0.attn.c_qkv.lora_A.k": torch.zeros(2, 16)}), r"unexpected \['blocks\.0\.attn\.c_qkv\.lora_A\.k'\]"),
        (lambda t: t["blocks.1.mlp.c_proj.lora_B.w"].__setitem__((0, 0), float("nan")), "non-finite values"),
        (lambda t: t["blocks.1.mlp.c_proj.weight"].mul_(2), "do not give model.safetensors's 'blocks.1.mlp.c_proj.weight'"),
    ]  # fmt: skip
    for edit, match in cases:
        (tmp_path / "lora.safetensors").write_bytes(original)
        rewrite_adapters(tmp_path, edit)
        one_line_error(tmp_path, r"lora\.safetensors: .*" + match)


def test_bad_lora_entries_in_config_json_are_one_line_errors(tmp_path):
    import json

    saved_lora_model(tmp_path)
    path = tmp_path / "config.json"
    obj = json.loads(path.read_text())
    for lora, match in [
        ({**obj["lora"], "targets": ["q", "x"]}, "unknown target"),
        ({**obj["lora"], "rank": 0}, "rank must be an integer >= 1"),
        ({**obj["lora"], "mask_token": 64}, r"mask_token=64 is outside the vocabulary \[0, 64\)"),
        ({**obj["lora"], "dropout": 0.1}, "unknown LoRAConfig field"),
    ]:
        path.write_text(json.dumps({**obj, "lora": lora}))
        one_line_error(tmp_path, r"config\.json: .*" + match)
    path.write_text(json.dumps({k: v for k, v in obj.items() if k != "lora"}))
    one_line_error(tmp_path, "not a LoRA checkpoint")


# ---------------------------------------------------------------- targets and config


def test_parse_lora_targets_aliases():
    assert parse_lora_targets("attn") == ("q", "k", "v", "o")
    assert parse_lora_targets("mlp") == ("mlp_w", "mlp_v", "mlp_p")
    assert parse_lora_targets("all") == ("q", "k", "v", "o", "mlp_w", "mlp_v", "mlp_p")
    assert parse_lora_targets("all,-k") == ("q", "v", "o", "mlp_w", "mlp_v", "mlp_p")
    assert parse_lora_targets("-k, all") == parse_lora_targets("all,-k")  # drops apply after additions
    assert parse_lora_targets("k") == ("k",)
    assert parse_lora_targets("embed, all,head") == LORA_TARGETS
    assert parse_lora_targets("mlp,-mlp_v,q") == ("q", "mlp_w", "mlp_p")
    assert parse_lora_targets("all", mlp_order=1) == ("q", "k", "v", "o", "mlp_w", "mlp_p")


@pytest.mark.parametrize(
    "text,match",
    [("qq", "unknown target 'qq'"), ("q,,k", "empty item"), ("", "empty item"), ("k,-k", "select no weight")],
)
def test_parse_lora_targets_errors(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_lora_targets(text)
    assert "\n" not in str(e.value)


def test_lora_config_and_apply_errors():
    with pytest.raises(ConfigError, match="mlp_v adapts W_2..W_k"):
        parse_lora_targets("mlp_v", mlp_order=1)
    with pytest.raises(ConfigError, match="mlp_v adapts W_2..W_k, but mlp='relu2'"):
        apply_lora(GPT(config("relu2")), LoRAConfig(2, ("mlp_v",)))
    with pytest.raises(ConfigError, match="rank must be an integer >= 1"):
        LoRAConfig(0, ("q",))
    with pytest.raises(ConfigError, match="unknown target"):
        LoRAConfig(1, ("q", "x"))
    with pytest.raises(ConfigError, match="alpha"):
        LoRAConfig(1, ("q",), alpha=float("nan"))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        apply_lora(GPT(config()), LoRAConfig(1, ("q",), mask_token=64))
    model = GPT(config())
    apply_lora(model, LoRAConfig(1, ("q",)))
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig(1, ("k",)))
    with pytest.raises(ConfigError, match="lora.json: unknown LoRAConfig field"):
        LoRAConfig.from_dict({"rank": 1, "targets": ["q"], "r": 2}, "lora.json")
    cfg = LoRAConfig(3, ("q", "head"), alpha=6, mask_token=5)
    assert LoRAConfig.from_dict(cfg.to_dict()) == cfg and cfg.scale == 2.0
    assert LoRAConfig(4, ("q",)).scale == 1.0


def test_adapter_on_layers_without_attention_is_skipped():
    cfg = record_config()
    model = GPT(cfg)
    apply_lora(model, LoRAConfig(1, ("q", "o")))
    names = [n for n, _ in model.named_parameters() if ".lora_" in n]
    assert not any(n.startswith("blocks.7.") for n in names)
    assert sum(n.startswith("blocks.6.") for n in names) == 4  # A and B of q and of o


def test_adapted_mlp_takes_the_explicit_path_with_the_reference_function():
    """The fused up-projection reads c_fc.weight only: the adapter must reach the MLP's output."""
    cfg = config("swiglu")
    model = randomised(cfg)
    apply_lora(model, LoRAConfig(2, ("mlp_w", "mlp_v")))
    randomise_adapters(model)
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, cfg.d_model, generator=torch.Generator().manual_seed(0))
    w = merged_state_dict(model)["blocks.0.mlp.c_fc.weight"]
    a, b = (x @ w.T).chunk(2, dim=-1)
    want = (F.silu(a) * b) @ mlp.c_proj.weight.T
    torch.testing.assert_close(mlp(x), want, rtol=1e-5, atol=1e-5)


def test_adapted_fp8_head_takes_the_module_call_in_training_mode():
    """With head_fp8 the training-mode head reads lm_head.weight in FP8: an adapter there needs the module call."""
    cfg = record_config()
    model = copy.deepcopy(randomised(cfg))
    apply_lora(model, LoRAConfig(2, ("head",)))
    randomise_adapters(model)
    plain = GPT(cfg).eval()
    plain.load_state_dict(merged_state_dict(model))
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.train()(idx), plain(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_mask_on_the_fused_cuda_path_under_autocast_and_compile():
    """On CUDA the base MLP runs the fused Triton GEMM while an adapted c_fc is called (cuBLAS + gated kernel):
    positions up to the separator match the base model to bf16 rounding, and bitwise the same adapted model
    with B = 0; the compiled loss matches the eager one."""
    cfg = config(d_model=64, mlp_hidden=128, n_head=4, vocab_size=128)
    base = randomised(cfg).cuda()
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(4, parse_lora_targets("all,head,embed"), mask_token=SEP))
    randomise_adapters(model)
    zero = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in zero.named_parameters():
            if ".lora_B." in n or n == "wte.lora_A.w":
                p.zero_()
    idx = separated().cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got, same, want = model(idx), zero(idx), base(idx)
        compiled = torch.compile(model)
        for batch in (idx, idx.roll(3, dims=1)):
            x, y = batch[:, :-1], batch[:, 1:]
            torch.testing.assert_close(compiled(x, y), model(x, y), rtol=2e-2, atol=2e-2)
    for row, s in enumerate(FIRST_SEP):
        stop = T if s is None else s + 1
        assert torch.equal(got[row, :stop], same[row, :stop])
        torch.testing.assert_close(got[row, :stop], want[row, :stop], rtol=3e-2, atol=3e-2)
        if s is not None:
            assert (got[row, stop:] - same[row, stop:]).abs().amax(-1).gt(0).all()
