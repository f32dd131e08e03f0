"""Orders of a weight diff (decomp.orders) against dense expansions written here, and the QK / OV circuit split
against dense products of the model's own weight slices (c_qkv.weight rows, c_proj.weight columns)."""

import copy
import math

import pytest
import torch

from decomp import (
    DecompError,
    cp_diff_orders,
    cp_diff_terms,
    cp_to_dense,
    layer_order_shares,
    make_cp,
    order_shares,
    ov_orders,
    ov_terms,
    qk_orders,
    qk_terms,
)
from model import GPT, GPTConfig

F64 = torch.float64


def rand(*shape, g):
    return torch.randn(*shape, generator=g, dtype=F64)


def dense(factors, weights=None):
    """Σ_r w_r Π_m A_m[i_m, r] by einsum (the reference; factors [I_m, R])."""
    letters = "abcdefg"[: len(factors)]
    w = torch.ones(factors[0].shape[1], dtype=F64) if weights is None else weights
    return torch.einsum(",".join(f"{c}r" for c in letters) + ",r->" + letters, *factors, w)


def random_pair(sizes, rank, scale, seed):
    """A base CP tensor with non-unit weights and a fine-tune moving every factor and the weights."""
    g = torch.Generator().manual_seed(seed)
    base = [rand(n, rank, g=g) for n in sizes]
    ft = [a + scale * rand(*a.shape, g=g) for a in base]
    w_base = 1 + 0.3 * rand(rank, g=g)
    w_ft = w_base + scale * rand(rank, g=g)
    return make_cp(w_base, base), make_cp(w_ft, ft)


def test_bilinear_orders_equal_the_dense_binomial_terms():
    d, h = 5, 4
    base, ft = random_pair([d, d, d], h, 0.4, seed=0)
    p, w, v = base.factors[0] * base.weights, base.factors[1], base.factors[2]
    dp = ft.factors[0] * ft.weights - p
    dw, dv = ft.factors[1] - w, ft.factors[2] - v
    expected = {
        1: dense([dp, w, v]) + dense([p, dw, v]) + dense([p, w, dv]),
        2: dense([dp, dw, v]) + dense([dp, w, dv]) + dense([p, dw, dv]),
        3: dense([dp, dw, dv]),
    }
    orders = cp_diff_orders(base, ft)
    assert sorted(orders) == [1, 2, 3]
    assert [orders[k].weights.shape[0] for k in (1, 2, 3)] == [3 * h, 3 * h, h]
    for k in (1, 2, 3):
        torch.testing.assert_close(cp_to_dense(orders[k]), expected[k], rtol=1e-12, atol=1e-12)
    diff = dense(ft.factors, ft.weights) - dense(base.factors, base.weights)
    torch.testing.assert_close(sum(cp_to_dense(t) for t in orders.values()), diff, rtol=1e-12, atol=1e-12)

    terms = cp_diff_terms(base, ft)
    torch.testing.assert_close(cp_to_dense(terms[(1,)]), dense([p, dw, v]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cp_to_dense(terms[(0, 2)]), dense([dp, w, dv]), rtol=1e-12, atol=1e-12)

    s = order_shares(base, ft)
    assert s.diff_norm == pytest.approx(float(diff.norm()), rel=1e-10)
    assert s.base_norm == pytest.approx(float(dense(base.factors, base.weights).norm()), rel=1e-10)
    assert s.residual_norm < 1e-7 * s.base_norm
    for k in (1, 2, 3):
        assert s.orders[k] == pytest.approx(float(expected[k].norm()), rel=1e-10)
        assert s.inner[k] == pytest.approx(float((expected[k] * diff).sum()), rel=1e-9)
        assert s.share(k) == pytest.approx(float(expected[k].norm() / diff.norm()), rel=1e-9)
    assert s.terms[(1,)] == pytest.approx(float(dense([p, dw, v]).norm()), rel=1e-10)
    assert sum(s.projected_share(k) for k in (1, 2, 3)) == pytest.approx(1.0, abs=1e-12)


def taylor_coefficients(base, ft, n):
    """Dense coefficients c_k of t ↦ [[A_m + t·dA_m]] (a degree-n polynomial), from n+1 values and a solve."""
    a = [base.factors[0] * base.weights] + list(base.factors[1:])
    b = [ft.factors[0] * ft.weights] + list(ft.factors[1:])
    ts = torch.arange(n + 1, dtype=F64)
    values = torch.stack([dense([x + t * (y - x) for x, y in zip(a, b, strict=True)]) for t in ts])
    vander = ts[:, None] ** torch.arange(n + 1, dtype=F64)[None, :]
    coeffs = torch.linalg.solve(vander, values.reshape(n + 1, -1))
    return coeffs.reshape(values.shape)


@pytest.mark.parametrize("sizes", [[4, 5, 5, 5], [3, 4, 5]], ids=["multilinear-order3", "bilinear-rect"])
def test_orders_are_the_homogeneous_parts_of_the_change(sizes):
    """Order k = the coefficient of t^k of the layer moved by t·dA: an independent characterisation."""
    n = len(sizes)
    base, ft = random_pair(sizes, 3, 0.5, seed=1)
    coeffs = taylor_coefficients(base, ft, n)
    orders = cp_diff_orders(base, ft)
    assert sorted(orders) == list(range(1, n + 1))
    s = order_shares(base, ft)
    diff = dense(ft.factors, ft.weights) - dense(base.factors, base.weights)
    for k in range(1, n + 1):
        assert orders[k].weights.shape[0] == math.comb(n, k) * 3
        torch.testing.assert_close(cp_to_dense(orders[k]), coeffs[k], rtol=1e-9, atol=1e-9)
        assert s.orders[k] == pytest.approx(float(coeffs[k].norm()), rel=1e-8)
    assert s.diff_norm == pytest.approx(float(diff.norm()), rel=1e-10)
    assert s.residual_norm < 1e-7 * s.base_norm
    assert sum(s.projected_share(k) for k in s.orders) == pytest.approx(1.0, abs=1e-12)


def null_vector(m, g):
    """A unit vector v with m v = 0 (m [h, d] with h < d)."""
    basis = torch.linalg.svd(m, full_matrices=True).Vh[m.shape[0] :]  # [d - h, d]
    v = basis.T @ rand(basis.shape[0], g=g)
    return v / v.norm()


def test_planted_rank1_steps_first_order_share_near_one_then_falls():
    """dW = ε u₁v₁ᵀ, dV = ε u₂v₂ᵀ, P unchanged: T_1 = O(ε), T_2 = O(ε²), T_3 = 0.

    With v₁ ⊥ rows(W) and v₂ ⊥ rows(V) the orders are orthogonal, so share(1) = 1/sqrt(1 + ε²β) falls strictly.
    """
    d, h = 6, 4
    g = torch.Generator().manual_seed(2)
    p, w, v = rand(d, h, g=g), rand(h, d, g=g), rand(h, d, g=g)
    u1, u2 = rand(h, g=g), rand(h, g=g)
    v1, v2 = null_vector(w, g), null_vector(v, g)
    base = make_cp(None, [p, w.T, v.T])
    b_dense = torch.einsum("ah,hi,hj->aij", p, w, v)
    eps = torch.logspace(-5, 1, 13, dtype=F64).tolist()
    shares = []
    for e in eps:
        w_ft, v_ft = w + e * torch.outer(u1, v1), v + e * torch.outer(u2, v2)
        s = order_shares(base, make_cp(None, [p, w_ft.T, v_ft.T]))
        diff = torch.einsum("ah,hi,hj->aij", p, w_ft, v_ft) - b_dense
        t1 = torch.einsum("ah,hi,hj->aij", p, w_ft - w, v) + torch.einsum("ah,hi,hj->aij", p, w, v_ft - v)
        t2 = torch.einsum("ah,hi,hj->aij", p, w_ft - w, v_ft - v)
        assert s.share(1) == pytest.approx(float(t1.norm() / diff.norm()), rel=1e-8)
        assert s.share(2) == pytest.approx(float(t2.norm() / diff.norm()), rel=1e-8)
        assert s.orders[3] == 0.0
        assert s.projected_share(1) == pytest.approx(s.share(1) ** 2, rel=1e-8)  # orthogonal orders
        shares.append(s.share(1))
    assert shares[0] > 1 - 1e-8
    assert all(a > b for a, b in zip(shares, shares[1:], strict=False))
    assert shares[-1] < 0.5


def test_generic_planted_steps_first_order_dominates_small_and_top_order_large():
    """All three factors moved by rank-1 steps in random directions: 1 − share(1) = O(ε), top order at large ε."""
    d, h = 5, 4
    g = torch.Generator().manual_seed(3)
    a = [rand(d, h, g=g) for _ in range(3)]
    da = [torch.outer(rand(d, g=g), rand(h, g=g)) for _ in range(3)]
    base = make_cp(None, a)
    gaps = []
    for e in (1e-6, 1e-5, 1e-4):
        s = order_shares(base, make_cp(None, [x + e * y for x, y in zip(a, da, strict=True)]))
        diff = dense([x + e * y for x, y in zip(a, da, strict=True)]) - dense(a)
        t1 = e * sum(dense([da[m] if m == j else a[m] for m in range(3)]) for j in range(3))
        assert s.share(1) == pytest.approx(float(t1.norm() / diff.norm()), rel=1e-7)
        gaps.append(abs(1 - s.share(1)))
    assert gaps[0] < 1e-4
    assert gaps[1] / gaps[0] == pytest.approx(10, rel=0.05) and gaps[2] / gaps[1] == pytest.approx(
        10, rel=0.05
    )
    big = order_shares(base, make_cp(None, [x + 1e3 * y for x, y in zip(a, da, strict=True)]))
    assert big.share(3) > 0.99 and big.share(1) < 0.05


def test_identical_tensors_give_a_zero_difference_with_nan_shares():
    base, _ = random_pair([4, 4, 4], 3, 0.1, seed=4)
    s = order_shares(base, base)
    assert s.is_zero and s.diff_norm == 0.0 and all(v == 0.0 for v in s.orders.values())
    assert math.isnan(s.share(1)) and math.isnan(s.projected_share(2))
    assert s.residual_norm < 1e-7 * s.base_norm


def test_mismatched_cp_tensors_are_refused():
    base, ft = random_pair([4, 4, 4], 3, 0.1, seed=5)
    wider, _ = random_pair([4, 4, 4], 5, 0.1, seed=5)
    with pytest.raises(DecompError, match="ranks 3 \\(base\\) and 5"):
        cp_diff_orders(base, wider)
    other, _ = random_pair([4, 4, 5], 3, 0.1, seed=5)
    with pytest.raises(DecompError, match="differ in shape"):
        order_shares(base, other)
    four, _ = random_pair([4, 4, 4, 4], 3, 0.1, seed=5)
    with pytest.raises(DecompError, match="3 \\(base\\) and 4 \\(fine-tuned\\) modes"):
        cp_diff_orders(base, four)
    with pytest.raises(DecompError, match="order 4"):
        order_shares(base, ft).share(4)


# ---- models ----

CFG = dict(vocab_size=32, n_layer=2, n_head=2, d_model=8, mlp="bilinear", mlp_hidden=6, norm_gain=True)


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**CFG, **kw})).to(F64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0, 0.5)
            elif p.ndim == 1 and name.endswith(".weight"):
                p.uniform_(0.5, 1.5)
    return model


def perturbed(model, names, scale=0.1, seed=1):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if any(name.endswith(n) for n in names):
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


def ref_heads(model, layer):
    """Per-head weight slices read straight from the parameters, gain of ln1 folded in: q, k, v [H, D, d], o [H, d, D]."""
    blk = model.blocks[layer]
    d, n_head = model.config.d_model, model.config.n_head
    dim = d // n_head
    qkv = blk.attn.c_qkv.weight.detach() * blk.ln1.weight.detach()[None, :]
    q, k, v = (qkv[j * d : (j + 1) * d].reshape(n_head, dim, d) for j in range(3))
    o = blk.attn.c_proj.weight.detach().reshape(d, n_head, dim).permute(1, 0, 2)
    return q, k, v, o


def test_attention_accessors_rebuild_the_attention_forward():
    model = tiny_gpt(qk_norm=False)
    attn = model.blocks[0].attn
    d = model.config.d_model
    assert model.w_q(0).data_ptr() == attn.c_qkv.weight.data_ptr()  # a view, not a copy
    torch.testing.assert_close(model.w_k(0), attn.c_qkv.weight[d : 2 * d])
    x = torch.randn(1, 7, d, dtype=F64, generator=torch.Generator().manual_seed(6))
    n_head, dim = model.config.n_head, model.config.head_dim
    q, k, v = (
        (x @ w.T).view(1, 7, n_head, dim) for w in (model.w_q(0), model.w_k(0), model.w_v(0))
    )  # [B, T, H, D]
    q, k = attn.rotary(q), attn.rotary(k)
    scores = torch.einsum("bthe,bshe->bhts", q, k) / math.sqrt(dim)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    y = torch.einsum("bhts,bshe->bthe", scores.masked_fill(~causal, -math.inf).softmax(-1), v)
    by_hand = y.reshape(1, 7, d) @ model.w_o(0).T
    torch.testing.assert_close(by_hand, attn(x), rtol=1e-10, atol=1e-10)
    # at equal positions rotary cancels: the score is x_tᵀ W_Q^hᵀ W_K^h x_t / sqrt(D) (the weight-level circuit)
    qk = qk_terms(model, model, 0, fold_norm=False)["base"]
    diag = torch.einsum("ti,hij,tj->ht", x[0], qk, x[0]) / math.sqrt(dim)
    # (rotary computes in float32, so only to float32 precision)
    torch.testing.assert_close(diag, scores[0].diagonal(dim1=-2, dim2=-1), rtol=1e-5, atol=1e-6)


def test_attention_accessors_refuse_layers_without_attention():
    model = tiny_gpt(no_attention=(1,))
    for acc in (model.w_q, model.w_k, model.w_v, model.w_o):
        with pytest.raises(ValueError, match="layer 1 has no attention"):
            acc(1)
    with pytest.raises(DecompError, match="base model: layer 1 has no attention"):
        qk_orders(model, model, 1)


@pytest.mark.parametrize("name", ["qk", "ov"])
def test_circuit_split_equals_the_dense_per_head_products(name):
    base = tiny_gpt()
    ft = perturbed(base, ["attn.c_qkv.weight", "attn.c_proj.weight", "ln1.weight"], scale=0.2)
    layer = 1
    q, k, v, o = ref_heads(base, layer)
    q2, k2, v2, o2 = ref_heads(ft, layer)
    if name == "qk":  # QK^h = W_Q^hᵀ W_K^h
        prod = lambda a, b: a.mT @ b  # noqa: E731
        x, y, x2, y2 = q, k, q2, k2
        terms, orders = qk_terms(base, ft, layer), qk_orders(base, ft, layer)
    else:  # OV^h = W_O^h W_V^h
        prod = lambda a, b: a @ b  # noqa: E731
        x, y, x2, y2 = o, v, o2, v2
        terms, orders = ov_terms(base, ft, layer), ov_orders(base, ft, layer)
    expected = {
        "base": prod(x, y),
        "diff": prod(x2, y2) - prod(x, y),
        "first_a": prod(x2 - x, y),
        "first_b": prod(x, y2 - y),
        "second": prod(x2 - x, y2 - y),
    }
    for key, ref in expected.items():
        torch.testing.assert_close(terms[key], ref, rtol=1e-12, atol=1e-12)
    assert orders.name == name and orders.layer == layer and orders.n_head == 2
    norm = lambda t: t.flatten(1).norm(dim=1)  # noqa: E731  per head
    for key in ("base", "diff", "first_a", "first_b", "second"):
        torch.testing.assert_close(getattr(orders, key), norm(expected[key]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        orders.first, norm(expected["first_a"] + expected["first_b"]), rtol=1e-10, atol=0
    )
    assert (orders.residual < 1e-7 * orders.base).all()
    diff = expected["diff"]
    for key in ("first_a", "first_b", "second"):
        assert orders.share(key) == pytest.approx(float(expected[key].norm() / diff.norm()), rel=1e-9)
        assert orders.projected_share(key) == pytest.approx(
            float((expected[key] * diff).sum() / diff.square().sum()), rel=1e-8
        )
        torch.testing.assert_close(
            orders.head_shares(key), norm(expected[key]) / norm(diff), rtol=1e-9, atol=0
        )
    assert sum(orders.projected_share(t) for t in ("first_a", "first_b", "second")) == pytest.approx(
        1, abs=1e-12
    )
    assert orders.projected_share("first") == pytest.approx(
        orders.projected_share("first_a") + orders.projected_share("first_b"), abs=1e-12
    )


def test_circuit_of_identical_models_is_zero_and_untouched_heads_are_nan():
    base = tiny_gpt()
    same = qk_orders(base, copy.deepcopy(base), 0)
    assert same.is_zero and math.isnan(same.share()) and torch.isnan(same.head_shares("second")).all()
    ft = copy.deepcopy(base)
    with torch.no_grad():  # move only head 1's keys: head 0's QK circuit is unchanged
        ft.blocks[0].attn.c_qkv.weight[8 + 4 : 16] += 0.1
    one = qk_orders(base, ft, 0)
    assert one.diff[0] == 0 and one.diff[1] > 0 and one.first_a[1] == 0 and one.second[1] == 0
    assert math.isnan(float(one.head_shares()[0])) and float(one.head_shares("first_b")[1]) == pytest.approx(
        1
    )


def ref_mlp_dense(model, layer, fold_norm=True):
    mlp, h = model.blocks[layer].mlp, model.config.hidden
    g = model.blocks[layer].ln2.weight.detach() if fold_norm else torch.ones(model.config.d_model, dtype=F64)
    w_in = [w * g[None, :] for w in mlp.c_fc.weight.detach().split(h)]
    p = mlp.c_proj.weight.detach()
    letters = "ijkl"[: len(w_in)]
    spec = "ah," + ",".join(f"h{c}" for c in letters) + "->a" + letters
    return torch.einsum(spec, p, *w_in)


def test_layer_order_shares_match_the_dense_layer_difference():
    base = tiny_gpt()
    ft = perturbed(base, ["mlp.c_fc.weight", "mlp.c_proj.weight", "ln2.weight"], scale=0.3)
    s = layer_order_shares(base, ft, -1)  # negative index: the last layer
    diff = ref_mlp_dense(ft, 1) - ref_mlp_dense(base, 1)
    assert s.diff_norm == pytest.approx(float(diff.norm()), rel=1e-10)
    assert s.base_norm == pytest.approx(float(ref_mlp_dense(base, 1).norm()), rel=1e-10)
    assert s.residual_norm < 1e-7 * s.base_norm and sorted(s.orders) == [1, 2, 3]
    assert sum(s.projected_share(k) for k in s.orders) == pytest.approx(1, abs=1e-12)


def test_a_gain_change_shows_up_in_the_folded_orders_only():
    """Only ln2's gain moves: with the gain folded, dW' = W·diag(dg), dV' = V·diag(dg), dP = 0, so T_3 = 0."""
    base = tiny_gpt()
    ft = perturbed(base, ["1.ln2.weight"], scale=0.2)
    s = layer_order_shares(base, ft, 1)
    diff = ref_mlp_dense(ft, 1) - ref_mlp_dense(base, 1)
    assert s.diff_norm == pytest.approx(float(diff.norm()), rel=1e-10) and s.diff_norm > 0
    mlp, h = base.blocks[1].mlp, base.config.hidden
    w, v = mlp.c_fc.weight.detach().split(h)
    dg = (ft.blocks[1].ln2.weight - base.blocks[1].ln2.weight).detach()
    p = mlp.c_proj.weight.detach()
    t2 = torch.einsum("ah,hi,hj->aij", p, w * dg, v * dg)
    assert s.orders[2] == pytest.approx(float(t2.norm()), rel=1e-9)
    assert s.orders[3] == 0.0 and s.terms[(0,)] == 0.0
    assert s.share(1) == pytest.approx(float((diff - t2).norm() / diff.norm()), rel=1e-9)
    unfolded = layer_order_shares(base, ft, 1, fold_norm=False)
    assert unfolded.is_zero and math.isnan(unfolded.share(1))
    assert layer_order_shares(base, ft, 0).is_zero  # layer 0 untouched


def test_multilinear_layer_orders_from_models():
    base = tiny_gpt(mlp="multilinear", mlp_order=3)
    ft = perturbed(base, ["0.mlp.c_fc.weight", "0.mlp.c_proj.weight", "0.ln2.weight"], scale=0.3)
    s = layer_order_shares(base, ft, 0)
    diff = ref_mlp_dense(ft, 0) - ref_mlp_dense(base, 0)
    assert sorted(s.orders) == [1, 2, 3, 4]
    assert s.diff_norm == pytest.approx(float(diff.norm()), rel=1e-10)
    assert s.residual_norm < 1e-7 * s.base_norm


def test_mismatched_models_are_refused_with_clear_messages():
    base = tiny_gpt()
    with pytest.raises(DecompError, match="layer index 2 is out of range for the base model"):
        layer_order_shares(base, base, 2)
    with pytest.raises(DecompError, match="differ in d_model: base 8, fine-tuned 16"):
        qk_orders(base, tiny_gpt(d_model=16, n_head=2), 0)
    with pytest.raises(DecompError, match="differ in n_layer"):
        layer_order_shares(base, tiny_gpt(n_layer=3), 0)
    with pytest.raises(DecompError, match="hidden widths differ \\(base 6, fine-tuned 10\\)"):
        layer_order_shares(base, tiny_gpt(mlp_hidden=10), 0)
    with pytest.raises(
        DecompError, match="base MLP has order 2 \\('bilinear'\\), fine-tuned order 3 \\('multilinear'\\)"
    ):
        layer_order_shares(base, tiny_gpt(mlp="multilinear", mlp_order=3), 0)
    with pytest.raises(DecompError, match="differ in n_head: base 2, fine-tuned 4"):
        ov_orders(base, tiny_gpt(n_head=4), 0)
    relu = tiny_gpt(mlp="relu2")
    with pytest.raises(DecompError, match="no exact CP form"):
        layer_order_shares(relu, relu, 0)
    with pytest.raises(DecompError, match="circuit term 'third'"):
        qk_orders(base, base, 0).share("third")


def test_rank1_lora_like_step_on_a_model_keeps_first_order_near_one():
    """A small rank-1 step on the stacked [W; V] of a layer (as LoRA on mlp_w + mlp_v): share(1) ≈ 1 − O(ε)."""
    base = tiny_gpt()
    g = torch.Generator().manual_seed(7)
    h, d = base.config.hidden, base.config.d_model
    step = torch.outer(rand(2 * h, g=g), rand(d, g=g))
    gaps = []
    for e in (1e-5, 1e-4):
        ft = copy.deepcopy(base)
        with torch.no_grad():
            ft.blocks[0].mlp.c_fc.weight += e * step
        s = layer_order_shares(base, ft, 0)
        diff = ref_mlp_dense(ft, 0) - ref_mlp_dense(base, 0)
        assert s.diff_norm == pytest.approx(float(diff.norm()), rel=1e-8)
        assert s.orders[3] == 0.0  # P did not move
        gaps.append(abs(1 - s.share(1)))
    assert gaps[1] < 1e-2 and gaps[1] / gaps[0] == pytest.approx(10, rel=0.05)
