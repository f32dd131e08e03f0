"""tnt's Muon against SVD references: per-projection polar factors, the Polar Express iteration, 2 ranks = 1,
state dicts (its own and torch.optim.Muon's), and the model's projection-block accessor."""

import io
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from toy_models import random_gpt

import training.muon as muon_mod
from training.muon import Muon, momentum_at, polar_express

# Published in modded-nanoGPT's train_gpt.py (Polar Express, num_iters=5, safety 2e-2): the reference's own copy.
PUBLISHED_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
BAND = (0.85, 1.15)  # the composed quintics map σ/‖G‖_F ∈ [1e-3, 1] into [0.859, 1.141]


def polar_via_svd(g: torch.Tensor) -> torch.Tensor:
    """What the iteration computes, exactly: U f(Σ/(1.02‖G‖_F + 1e-6)) Vᵀ in float64, f = the five quintics."""
    g = g.double()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    s = s / (1.02 * torch.linalg.matrix_norm(g) + 1e-6)
    for a, b, c in PUBLISHED_COEFFS:
        s = a * s + b * s**3 + c * s**5
    return u @ torch.diag(s) @ vh


def exact_polar(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return u @ vh


def with_spectrum(
    m: int, n: int, lo: float, hi: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random [m, n] matrix Q₁ diag(s) Q₂ᵀ with s uniform in [lo, hi], and its polar factor Q₁Q₂ᵀ."""
    k = min(m, n)
    q1 = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))[0]
    s = lo + (hi - lo) * torch.rand(k, generator=gen, dtype=torch.float64)
    return (q1 * s) @ q2.T, q1 @ q2.T


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.matrix_norm(a.double() - b.double()) / torch.linalg.matrix_norm(b.double())).item()


# ---------------------------------------------------------------- the iteration


@pytest.mark.parametrize("shape", [(64, 64), (48, 96), (96, 48), (3, 40, 24)])
def test_polar_express_is_the_quintic_composition_on_singular_values(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    out = polar_express(g, torch.float32)
    assert out.shape == g.shape and out.dtype == torch.float32
    for o, gi in zip(out.reshape(-1, *shape[-2:]), g.reshape(-1, *shape[-2:]), strict=True):
        assert rel(o, polar_via_svd(gi)) < 1e-4


def test_polar_express_approximates_the_exact_polar_factor_within_its_band():
    gen = torch.Generator().manual_seed(1)
    g, polar = with_spectrum(80, 48, 1e-3, 1.0, gen)  # singular values spread over three decades
    out = polar_express(g.float(), torch.float32)
    sv = torch.linalg.svdvals(out.double())
    assert BAND[0] < sv.min() and sv.max() < BAND[1]
    assert rel(out, polar) < BAND[1] - 1
    assert rel(g, polar) > 0.3  # the input itself is far from orthogonal


def test_polar_express_zero_matrix_stays_zero():
    assert torch.equal(polar_express(torch.zeros(2, 8, 4)), torch.zeros(2, 8, 4))


@pytest.mark.gpu
def test_polar_express_bf16_on_cuda_matches_fp32():
    torch.manual_seed(0)
    g = torch.randn(8, 256, 768, device="cuda")
    bf, fp = polar_express(g, torch.bfloat16), polar_express(g, torch.float32)
    assert bf.dtype == torch.bfloat16
    assert rel(bf.float().cpu()[0], fp.cpu()[0]) < 0.05


@pytest.mark.gpu
def test_cuda_parameters_step_in_bf16_within_the_band():
    gen = torch.Generator().manual_seed(4)
    g, polar = with_spectrum(768, 256, 0.2, 1.0, gen)
    p = torch.nn.Parameter(torch.zeros(768, 256, device="cuda"))
    p.grad = g.float().cuda()
    Muon([p], lr=1.0).step()  # default precision on CUDA: bf16
    u = -p.detach().double().cpu() / 3**0.5
    sv = torch.linalg.svdvals(u)
    assert BAND[0] - 0.05 < sv.min() and sv.max() < BAND[1] + 0.05
    assert rel(u, polar) < BAND[1] + 0.05 - 1


def test_momentum_warmup_is_linear_then_flat():
    for step in (0, 1, 150, 299, 300, 5000):
        frac = min(step / 300, 1)
        assert momentum_at(step) == pytest.approx((1 - frac) * 0.85 + frac * 0.95)
    assert momentum_at(10, warmup_steps=20, start=0.5, end=0.9) == pytest.approx(0.7)


# ---------------------------------------------------------------- per-projection updates

D, H = 32, 48


def stacked_params() -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "qkv": (torch.randn(3 * D, D), (D, D, D)),
        "c_fc": (torch.randn(2 * H, D), (H, H)),
        "c_proj": (torch.randn(D, H), (D,)),
    }


@pytest.mark.parametrize(("ns_dtype", "slack"), [(torch.float32, 0.0), (torch.bfloat16, 0.05)])
def test_each_projection_orthogonalised_separately_from_zero_momentum(ns_dtype, slack):
    gen = torch.Generator().manual_seed(2)
    params = stacked_params()
    scales = {"qkv": (1.0, 10.0, 0.1), "c_fc": (1.0, 0.05), "c_proj": (1.0,)}
    polars, stacked_polar_blocks = {}, {}
    ps = {}
    for name, (w, rows) in params.items():
        blocks = [with_spectrum(r, w.shape[1], 0.2, 1.0, gen) for r in rows]
        grad = torch.cat([g * s for (g, _), s in zip(blocks, scales[name], strict=True)]).float()
        polars[name] = [q for _, q in blocks]
        stacked_polar_blocks[name] = exact_polar(grad).split(rows)
        ps[name] = torch.nn.Parameter(w.clone())
        ps[name].grad = grad
    blocks = {ps[n]: params[n][1] for n in ps}
    opt = Muon(list(ps.values()), lr=1.0, momentum=0.95, blocks=blocks, ns_dtype=ns_dtype)
    opt.step()
    lo, hi = BAND[0] - slack, BAND[1] + slack  # bf16 rounding widens the band a little
    for name, (w, rows) in params.items():
        update = (w - ps[name].detach()).split(rows)
        for j, (u, polar) in enumerate(zip(update, polars[name], strict=True)):
            scale = max(1.0, u.shape[0] / u.shape[1]) ** 0.5  # record #21: per projection shape
            sv = torch.linalg.svdvals(u.double()) / scale
            assert lo < sv.min() and sv.max() < hi, (name, j, sv.aminmax())
            assert rel(u / scale, polar) < hi - 1, (name, j)
        if len(rows) > 1:  # one polar factor of the whole stack leaves its smaller blocks far from orthogonal
            sv_whole = [torch.linalg.svdvals(whole) for whole in stacked_polar_blocks[name]]
            assert any(sv.min() < BAND[0] for sv in sv_whole), name


def reference_steps(
    weights: list[torch.Tensor], blocks, grads_per_step, lr, momenta, wd, nesterov, buf=None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Muon in float64, one projection at a time, the iteration through its SVD form."""
    ws = [w.double().clone() for w in weights]
    bufs = [torch.zeros_like(w) for w in ws] if buf is None else [b.double().clone() for b in buf]
    for grads, mu in zip(grads_per_step, momenta, strict=True):
        for w, b, g, rows in zip(ws, bufs, grads, blocks, strict=True):
            g = g.double()
            b.mul_(mu).add_(g, alpha=1 - mu)
            u = (1 - mu) * g + mu * b if nesterov else b
            w.mul_(1 - lr * wd)
            r0 = 0
            for r in rows:
                u_j = u[r0 : r0 + r]
                w[r0 : r0 + r] -= lr * max(1.0, r / u.shape[1]) ** 0.5 * polar_via_svd(u_j)
                r0 += r
    return ws, bufs


def toy_workload(seed: int = 3, steps: int = 3):
    gen = torch.Generator().manual_seed(seed)
    params = stacked_params()
    weights = [w for w, _ in params.values()]
    blocks = [rows for _, rows in params.values()]
    grads = [[torch.randn(w.shape, generator=gen) for w in weights] for _ in range(steps)]
    return weights, blocks, grads


def run_muon(weights, blocks, grads, momenta, **kw) -> tuple[list[torch.Tensor], Muon]:
    ps = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Muon(ps, blocks=dict(zip(ps, blocks, strict=True)), **{"ns_dtype": torch.float32, **kw})
    for step_grads, mu in zip(grads, momenta, strict=True):
        for g in opt.param_groups:
            g["momentum"] = mu
        for p, g in zip(ps, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps], opt


@pytest.mark.parametrize("nesterov", [True, False])
def test_steps_match_a_float64_reference_with_momentum_warmup_and_weight_decay(nesterov):
    weights, blocks, grads = toy_workload()
    momenta = [momentum_at(s, warmup_steps=2) for s in range(3)]
    got, _ = run_muon(weights, blocks, grads, momenta, lr=0.05, weight_decay=0.1, nesterov=nesterov)
    want, _ = reference_steps(weights, blocks, grads, 0.05, momenta, 0.1, nesterov)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=2e-5)


def test_default_precision_follows_the_device():
    assert muon_mod.default_ns_dtype(torch.device("cuda")) == torch.bfloat16
    assert muon_mod.default_ns_dtype(torch.device("cpu")) == torch.float32
    weights, blocks, grads = toy_workload(steps=1)
    auto, _ = run_muon(weights, blocks, grads, [0.95], ns_dtype=None)
    pinned, _ = run_muon(weights, blocks, grads, [0.95], ns_dtype=torch.float32)
    for a, b in zip(auto, pinned, strict=True):
        assert torch.equal(a, b)


def test_bad_blocks_and_shapes_are_refused():
    w = torch.nn.Parameter(torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"row blocks \(2, 2\) of parameter 0 must .* sum to its 6 rows"):
        Muon([w], blocks={w: (2, 2)})
    with pytest.raises(ValueError, match="only 2-D"):
        Muon([torch.nn.Parameter(torch.randn(6))])
    with pytest.raises(ValueError, match="momentum"):
        Muon([w], momentum=1.0)


# ---------------------------------------------------------------- two ranks


def _rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        seen = []
        inner = muon_mod.polar_express

        def counting(x, dtype=None):
            seen.append(int((x.flatten(1).abs().sum(1) > 0).sum()))  # non-padding matrices this rank ran
            return inner(x, dtype)

        muon_mod.polar_express = counting
        weights, blocks, grads = toy_workload()  # identical (already averaged) grads on both ranks
        got, opt = run_muon(weights, blocks, grads, [0.9, 0.95, 0.95], lr=0.05, weight_decay=0.1)
        state = [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]
        torch.save({"params": got, "bufs": state, "seen": sum(seen)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_one_rank_update_and_split_the_work(tmp_path):
    from toy_data import free_port

    mp.spawn(_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    weights, blocks, grads = toy_workload()
    one, opt = run_muon(weights, blocks, grads, [0.9, 0.95, 0.95], lr=0.05, weight_decay=0.1)
    n_blocks = 3 * sum(len(rows) for rows in blocks)  # orthogonalisations over 3 steps, all ranks together
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r, res in enumerate(results):
        for a, b in zip(res["params"], one, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"rank {r}")
        for a, p in zip(res["bufs"], opt.param_groups[0]["params"], strict=True):
            torch.testing.assert_close(a, opt.state[p]["momentum_buffer"], rtol=0, atol=0)
        assert 0 < res["seen"] < n_blocks
    assert sum(r["seen"] for r in results) == n_blocks


# ---------------------------------------------------------------- state dicts


def round_trip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_continues_identically():
    weights, blocks, grads = toy_workload(steps=3)
    after2, opt = run_muon(weights, blocks, grads[:2], [0.9, 0.95], lr=0.05, weight_decay=0.1)
    for g in opt.param_groups:
        g["initial_lr"] = 0.05
    sd = round_trip(opt.state_dict())
    ps = [torch.nn.Parameter(w.clone()) for w in after2]
    fresh = Muon(ps, lr=1.0, momentum=0.5, blocks=dict(zip(ps, blocks, strict=True)), ns_dtype=torch.float32)
    fresh.load_state_dict(sd)
    group = fresh.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["initial_lr"]) == (
        0.05,
        0.95,
        0.1,
        0.05,
    )
    for p, g in zip(ps, grads[2], strict=True):
        p.grad = g.clone()
    fresh.step()
    want, _ = run_muon(weights, blocks, grads, [0.9, 0.95, 0.95], lr=0.05, weight_decay=0.1)
    for a, b in zip(ps, want, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def torch_muon_state(weights, grads, **kw) -> dict:
    ps = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = torch.optim.Muon(ps, adjust_lr_fn=kw.pop("adjust_lr_fn", "original"), **kw)
    opt.param_groups[0]["initial_lr"] = kw["lr"]
    for step_grads in grads:
        for p, g in zip(ps, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return round_trip(opt.state_dict())


def test_loads_a_torch_optim_muon_state_and_continues_from_its_momentum():
    weights, blocks, grads = toy_workload(steps=3)
    sd = torch_muon_state(weights, grads[:2], lr=0.02, momentum=0.9, weight_decay=0.01)
    ps = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Muon(ps, lr=1.0, momentum=0.5, blocks=dict(zip(ps, blocks, strict=True)), ns_dtype=torch.float32)
    opt.load_state_dict(sd)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["initial_lr"]) == (
        0.02,
        0.9,
        0.01,
        0.02,
    )
    assert group["blocks"] == blocks
    assert not set(muon_mod._TORCH_MUON_ONLY) & group.keys()
    bufs = [sd["state"][i]["momentum_buffer"].clone() for i in range(len(ps))]
    for p, b in zip(ps, bufs, strict=True):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], b, rtol=0, atol=0)
    for p, g in zip(ps, grads[2], strict=True):
        p.grad = g.clone()
    opt.step()
    want, _ = reference_steps(weights, blocks, [grads[2]], 0.02, [0.9], 0.01, True, buf=bufs)
    for p, w in zip(ps, want, strict=True):
        torch.testing.assert_close(p.detach().double(), w, rtol=0, atol=2e-5)


def fresh_muon() -> Muon:
    weights, blocks, _ = toy_workload()
    ps = [torch.nn.Parameter(w.clone()) for w in weights]
    return Muon(ps, blocks=dict(zip(ps, blocks, strict=True)))


def test_refuses_states_that_do_not_fit_with_one_line_messages():
    weights, _, grads = toy_workload(steps=1)
    other = [torch.randn(w.shape[0] + 1, w.shape[1]) for w in weights]  # same count, other shapes
    other_grads = [[torch.randn(w.shape) for w in other]]
    bad = {
        "momentum_buffer has shape \\(97, 32\\)": torch_muon_state(other, other_grads, lr=0.02),
        "adjust_lr_fn='match_rms_adamw'": torch_muon_state(
            weights, grads, lr=0.02, adjust_lr_fn="match_rms_adamw"
        ),
        "unexpected entries \\['exp_avg', 'exp_avg_sq', 'step'\\]": None,
        "has 2 param groups": None,
        "not an optimizer state dict": [1, 2],
    }
    ps = [torch.nn.Parameter(w.clone()) for w in weights]
    adam = torch.optim.Adam(ps)
    for p, g in zip(ps, grads[0], strict=True):
        p.grad = g
    adam.step()
    bad["unexpected entries \\['exp_avg', 'exp_avg_sq', 'step'\\]"] = round_trip(adam.state_dict())
    two = torch_muon_state(weights, grads, lr=0.02)
    two["param_groups"] = [two["param_groups"][0], {**two["param_groups"][0], "params": []}]
    bad["has 2 param groups"] = two
    for message, sd in bad.items():
        opt = fresh_muon()
        with pytest.raises(ValueError, match=message) as err:
            opt.load_state_dict(sd)
        assert "\n" not in str(err.value)
        assert not opt.state  # nothing half-loaded


# ---------------------------------------------------------------- the model's structure accessor


@pytest.mark.parametrize(("mlp", "order"), [("bilinear", 2), ("relu2", 2), ("multilinear", 3)])
def test_projection_blocks_match_the_weights_the_model_splits(mlp, order):
    model = random_gpt(mlp=mlp, mlp_order=order, mlp_hidden=8)
    blocks, params = model.projection_blocks(), dict(model.named_parameters())
    for layer in range(model.config.n_layer):
        fc = blocks[f"blocks.{layer}.mlp.c_fc.weight"]
        assert fc == tuple(w.shape[0] for w in model.w_in(layer))
        assert sum(fc) == params[f"blocks.{layer}.mlp.c_fc.weight"].shape[0]
    # attention: rows of block 0 (Q) and 1 (K) move the pattern; rows of block 2 (V) do not
    idx = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    name = "blocks.0.attn.hook_pattern"
    base = model.run_with_cache(idx, names_filter=name)[1][name]
    qkv = params["blocks.0.attn.c_qkv.weight"]
    r0 = 0
    for j, rows in enumerate(blocks["blocks.0.attn.c_qkv.weight"]):
        saved = qkv.detach().clone()
        with torch.no_grad():
            qkv[r0 : r0 + rows] += torch.randn(rows, qkv.shape[1])
        moved = model.run_with_cache(idx, names_filter=name)[1][name]
        with torch.no_grad():
            qkv.copy_(saved)
        assert torch.allclose(moved, base) == (j == 2), j
        r0 += rows
