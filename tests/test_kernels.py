"""Tests of ``kernels``: the Triton kernels (in Triton's interpreter on CPU) against the torch reference.

The reference, evaluated in fp32 on the same (already rounded) inputs, is the oracle. Tolerances are per dtype
and relative to the largest reference magnitude; bf16 allows a few ulp because the interpreter truncates
fp32 → bf16 instead of rounding. Shapes are ragged and tiles large, so each kernel launch is a few programs.
Compiled-code properties (shared memory, spills, PTX) are checked ahead of time in ``test_kernels_aot.py``.
"""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import backend, ops, reference
from kernels.triton_common import rows_2d

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (rtol, atol as a fraction of max |reference|) for results of one rounding, and for GEMM-backed gradients.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
GRAD_TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (5e-3, 5e-3), torch.bfloat16: (5e-2, 3e-2)}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, tol: dict = TOL) -> None:
    rtol, atol = tol[dtype]
    assert out.dtype == dtype
    assert out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref, rtol=rtol, atol=atol * ref.abs().max().item() + 1e-12)


def randn(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape)).to(dtype)


def fp32_leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().requires_grad_()


@pytest.fixture(autouse=True)
def _seed_and_backend():
    torch.manual_seed(0)
    with kernels.use_backend("triton"):
        yield


# --- gated_product --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5, 257), (17, 1000)])
@pytest.mark.parametrize("act", kernels.ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_product_forward(shape, act, dtype):
    up = randn(*shape[:-1], 2 * shape[-1], dtype=dtype, scale=2.0)
    out = kernels.gated_product(up, act)
    assert_close(out, reference.gated_product(up.float(), act), dtype)


@pytest.mark.parametrize(
    ("dtype", "act", "order"), [(torch.float32, "gelu", 2), (torch.float16, "identity", 3)]
)
def test_gated_product_large_ragged(dtype, act, order):
    up = randn(6, 42, 123, order * 431, dtype=dtype)
    out = kernels.gated_product(up, act, order)
    assert out.shape == (6, 42, 123, 431)
    assert_close(out, reference.gated_product(up.float(), act, order), dtype)


@pytest.mark.parametrize("shape", [(3, 5, 257), (17, 1000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_multilinear_order3_forward(shape, dtype):
    up = randn(*shape[:-1], 3 * shape[-1], dtype=dtype, scale=1.5)
    out = kernels.gated_product(up, "identity", order=3)
    assert_close(out, reference.gated_product(up.float(), "identity", 3), dtype)


@pytest.mark.parametrize(
    ("act", "order"), [(a, 2) for a in kernels.ACTIVATIONS] + [("identity", 3), ("identity", 4)]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_product_grad(act, order, dtype):
    up = randn(3, 5, order * 257, dtype=dtype, scale=2.0).requires_grad_()
    grad = randn(3, 5, 257, dtype=dtype)
    (d_up,) = torch.autograd.grad(kernels.gated_product(up, act, order), up, grad)
    up_ref = fp32_leaf(up)
    (d_ref,) = torch.autograd.grad(reference.gated_product(up_ref, act, order), up_ref, grad.float())
    assert_close(d_up, d_ref, dtype)


def test_gated_product_on_halves_of_one_buffer():
    """Factors read through strides from a slice of a wider buffer; gradients land in the buffer."""
    m, n = 37, 123
    buf = torch.randn(m, 2 * n + 11, requires_grad=True)
    up = buf[:, 5 : 5 + 2 * n]  # row stride 2n+11: not contiguous
    assert not up.is_contiguous() and rows_2d(up).data_ptr() == up.data_ptr()  # no copy
    grad = torch.randn(m, n)
    out = kernels.gated_product(up, "silu")
    (d_buf,) = torch.autograd.grad(out, buf, grad)
    buf_ref = fp32_leaf(buf)
    ref = reference.gated_product(buf_ref[:, 5 : 5 + 2 * n], "silu")
    (d_ref,) = torch.autograd.grad(ref, buf_ref, grad)
    assert_close(out, ref.detach(), torch.float32)
    assert_close(d_buf, d_ref, torch.float32)
    assert d_buf[:, :5].abs().max() == 0 and d_buf[:, 5 + 2 * n :].abs().max() == 0


def test_gated_product_non_collapsible_leading_dims():
    up = torch.randn(5, 3, 2 * 65).transpose(0, 1)  # [3, 5, 130], leading dims cannot be merged as a view
    assert_close(kernels.gated_product(up, "relu"), reference.gated_product(up, "relu"), torch.float32)


def test_gated_product_saves_only_up():
    up = torch.randn(4, 2 * 33, requires_grad=True)
    x = up * 1.0
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kernels.gated_product(x, "gelu")
    assert [t.data_ptr() for t in saved] == [x.data_ptr()]


def test_gated_product_empty():
    up = torch.randn(0, 2 * 8, requires_grad=True)
    out = kernels.gated_product(up, "silu")
    assert out.shape == (0, 8)
    out.sum().backward()
    assert up.grad.shape == up.shape


# --- fused_up_product -------------------------------------------------------------------------------------------

FUSED_CASES = [(a, 2) for a in kernels.ACTIVATIONS] + [
    ("relu2", 1),
    ("gelu", 1),
    ("identity", 3),
    ("identity", 4),
]


def _fused_inputs(order: int, dtype: torch.dtype, lead: tuple = (37,), d: int = 48, h: int = 40):
    x = randn(*lead, d, dtype=dtype).requires_grad_()
    w = randn(order * h, d, dtype=dtype, scale=d**-0.5 * 2).requires_grad_()
    return x, w


@pytest.mark.parametrize(("act", "order"), FUSED_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recompute", [False, True], ids=["save", "recompute"])
def test_fused_up_product_forward_and_grad(act, order, dtype, recompute):
    x, w = _fused_inputs(order, dtype)
    out = kernels.fused_up_product(x, w, act, order, recompute=recompute)
    grad = randn(*out.shape, dtype=dtype)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x_ref, w_ref = fp32_leaf(x), fp32_leaf(w)
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x_ref, w_ref), grad.float())
    assert_close(out, ref.detach(), dtype)
    assert_close(dx, dx_ref, dtype, GRAD_TOL)
    assert_close(dw, dw_ref, dtype, GRAD_TOL)


@pytest.mark.parametrize(("act", "order"), [("silu", 2), ("identity", 3)])
def test_fused_up_product_several_tiles_and_k_steps(act, order):
    """Shapes beyond one interpreter tile (128): 3×2 programs, 3 K-steps, ragged edges on every axis."""
    x, w = _fused_inputs(order, torch.float32, lead=(300,), d=300, h=200)
    out = kernels.fused_up_product(x, w, act, order)
    ref = reference.fused_up_product(fp32_leaf(x), fp32_leaf(w), act, order)
    assert_close(out, ref.detach(), torch.float32)


def test_fused_up_product_strided_3d_input():
    """x is a slice of a wider activation buffer, with two leading dims; w_up is a row slice of a bigger weight."""
    big = torch.randn(2, 19, 60, requires_grad=True)
    x = big[..., 4:52]
    w_all = torch.randn(100, 48) / 7
    w = w_all[10:90].requires_grad_()  # still row-major; an offset view
    out = kernels.fused_up_product(x, w, "gelu")
    dx, dw = torch.autograd.grad(out.square().sum(), (big, w))
    big_ref, w_ref = fp32_leaf(big), fp32_leaf(w)
    ref = reference.fused_up_product(big_ref[..., 4:52], w_ref, "gelu")
    dx_ref, dw_ref = torch.autograd.grad(ref.square().sum(), (big_ref, w_ref))
    assert out.shape == (2, 19, 40)
    assert_close(out, ref.detach(), torch.float32)
    assert_close(dx, dx_ref, torch.float32, GRAD_TOL)
    assert_close(dw, dw_ref, torch.float32, GRAD_TOL)


def test_fused_up_product_transposed_weight_view():
    """w_up given as the transpose of a [d, 2h] matrix (column-major): the kernel reads it through strides."""
    x = torch.randn(21, 48)
    w = (torch.randn(48, 80) / 7).t()
    assert not w.is_contiguous()
    assert_close(
        kernels.fused_up_product(x, w, "silu"), reference.fused_up_product(x, w, "silu"), torch.float32
    )


@pytest.mark.parametrize("frozen", ["x", "w"])
def test_fused_up_product_partial_grad(frozen):
    x, w = _fused_inputs(2, torch.float32)
    (x if frozen == "x" else w).requires_grad_(False)
    live = w if frozen == "x" else x
    (g,) = torch.autograd.grad(kernels.fused_up_product(x, w, "relu").sum(), live)
    x_ref, w_ref = x.detach().clone(), w.detach().clone()
    live_ref = (w_ref if frozen == "x" else x_ref).requires_grad_()
    (g_ref,) = torch.autograd.grad(reference.fused_up_product(x_ref, w_ref, "relu").sum(), live_ref)
    assert_close(g, g_ref, torch.float32, GRAD_TOL)


def _saved_by(fn) -> list[torch.Tensor]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize(("act", "order"), [("silu", 2), ("relu2", 1), ("identity", 3)])
def test_fused_up_product_saves_its_factors_by_default(act, order):
    """Default: x, w_up and the factors x w_upᵀ [M, k·h], written by the forward GEMM, are saved."""
    x, w = _fused_inputs(order, torch.float32, lead=(3, 7))
    x_in = x * 1.0
    saved = _saved_by(lambda: kernels.fused_up_product(x_in, w, act, order))
    assert len(saved) == 3
    assert {t.data_ptr() for t in saved[:2]} == {x_in.data_ptr(), w.data_ptr()}
    assert saved[2].shape == (21, order * 40)
    assert_close(saved[2], F.linear(x_in, w).detach().reshape(21, -1), torch.float32)


@pytest.mark.parametrize("how", ["argument", "setting"])
def test_fused_up_product_recompute_saves_only_inputs(how):
    x, w = _fused_inputs(2, torch.float32)
    x_in = x * 1.0
    if how == "argument":
        saved = _saved_by(lambda: kernels.fused_up_product(x_in, w, "silu", recompute=True))
    else:
        kernels.set_recompute(True)
        try:
            assert kernels.get_recompute()
            saved = _saved_by(lambda: kernels.fused_up_product(x_in, w, "silu"))
        finally:
            kernels.set_recompute(False)
    assert sorted(t.data_ptr() for t in saved) == sorted([x_in.data_ptr(), w.data_ptr()])


def test_fused_up_product_without_grad_writes_no_factors():
    x, w = torch.randn(9, 48), torch.randn(80, 48)
    out, up = ops.fused_up_product_op(x, w, "silu", 2, False)
    assert up.numel() == 0
    assert_close(out, reference.fused_up_product(x, w, "silu"), torch.float32)
    with torch.no_grad():
        assert _saved_by(lambda: kernels.fused_up_product(x.requires_grad_(), w, "silu")) == []


def test_recompute_setting_is_checked(monkeypatch):
    with pytest.raises(TypeError, match="takes a bool"):
        kernels.set_recompute(1)
    with pytest.raises(TypeError, match="recompute must be a bool"):
        kernels.fused_up_product(torch.randn(2, 8), torch.randn(8, 8), "silu", recompute="yes")
    try:
        monkeypatch.setenv(backend.RECOMPUTE_ENV_VAR, "1")
        importlib.reload(backend)
        assert backend.get_recompute()
        monkeypatch.setenv(backend.RECOMPUTE_ENV_VAR, "maybe")
        with pytest.raises(ValueError, match="TNT_KERNEL_RECOMPUTE"):
            importlib.reload(backend)
    finally:
        monkeypatch.delenv(backend.RECOMPUTE_ENV_VAR)
        importlib.reload(backend)
        backend.set_backend("triton")
    assert not kernels.get_recompute()


def test_fused_up_product_autocast_casts_operands():
    x, w = _fused_inputs(2, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.fused_up_product(x, w, "silu")
    ref = reference.fused_up_product(x.detach().bfloat16().float(), w.detach().bfloat16().float(), "silu")
    assert_close(out, ref, torch.bfloat16)


# --- custom ops, torch.compile ---------------------------------------------------------------------------------


def test_opcheck_gated_ops():
    up = torch.randn(3, 5, 2 * 24, requires_grad=True)
    torch.library.opcheck(ops.gated_product_op, (up, "gelu", 2))
    torch.library.opcheck(ops.gated_product_op, (torch.randn(7, 3 * 16, requires_grad=True), "identity", 3))
    torch.library.opcheck(ops.gated_product_backward_op, (torch.randn(3, 5, 24), up.detach(), "silu", 2))


@pytest.mark.parametrize("save_up", [True, False])
def test_opcheck_fused_ops(save_up):
    x = torch.randn(2, 7, 48, requires_grad=True)
    w = torch.randn(80, 48, requires_grad=True)
    torch.library.opcheck(ops.fused_up_product_op, (x, w, "silu", 2, save_up))
    torch.library.opcheck(ops.fused_up_product_op, (x, torch.randn(40, 48), "relu2", 1, save_up))
    grad = torch.randn(2, 7, 40)
    up = F.linear(x, w).detach().reshape(14, 80) if save_up else None
    torch.library.opcheck(
        ops.fused_up_product_backward_op, (grad, x.detach(), w.detach(), up, "silu", 2, True, True)
    )
    torch.library.opcheck(
        ops.fused_up_product_backward_op, (grad, x.detach(), w.detach(), up, "relu", 2, False, True)
    )


class TinyMLP(torch.nn.Module):
    """P · gated_product(W x): the gated MLP as the model writes it, fused or unfused."""

    def __init__(self, d: int, h: int, act: str, order: int, fused: bool, recompute: bool = False) -> None:
        super().__init__()
        self.c_fc = torch.nn.Linear(d, order * h, bias=False)
        self.c_proj = torch.nn.Linear(h, d, bias=False)
        self.act, self.order, self.fused, self.recompute = act, order, fused, recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            hidden = kernels.fused_up_product(
                x, self.c_fc.weight, self.act, self.order, recompute=self.recompute
            )
        else:
            hidden = kernels.gated_product(self.c_fc(x), self.act, self.order)
        return self.c_proj(hidden)


def _compiled_matches_eager(model: torch.nn.Module, backend_name: str) -> None:
    x = torch.randn(2, 9, 32, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend_name)
    y = compiled(x)
    gx, gw = torch.autograd.grad(y.square().sum(), (x, model.c_fc.weight))
    y_ref = model(x)
    gx_ref, gw_ref = torch.autograd.grad(y_ref.square().sum(), (x, model.c_fc.weight))
    assert_close(y.detach(), y_ref.detach(), torch.float32)
    assert_close(gx, gx_ref, torch.float32, GRAD_TOL)
    assert_close(gw, gw_ref, torch.float32, GRAD_TOL)


def test_compile_inductor_fullgraph_fused_mlp():
    """Inductor compiles a model calling the Triton custom ops (interpreted on CPU): ~13 s cold."""
    torch._dynamo.reset()
    _compiled_matches_eager(TinyMLP(32, 40, "silu", 2, fused=True), "inductor")


@pytest.mark.parametrize(
    ("act", "order", "fused"),
    [
        ("gelu", 2, False),
        ("identity", 3, False),
        ("relu", 2, True),
        ("relu2", 1, True),
        ("identity", 4, True),
    ],
)
@pytest.mark.parametrize("recompute", [False, True], ids=["save", "recompute"])
def test_compile_aot_fullgraph(act, order, fused, recompute):
    """Dynamo + AOTAutograd trace the fake and autograd registrations (no codegen, so cheap)."""
    if recompute and not fused:
        pytest.skip("recompute applies to the fused op only")
    torch._dynamo.reset()
    _compiled_matches_eager(TinyMLP(32, 40, act, order, fused, recompute), "aot_eager")


# --- backend selection -----------------------------------------------------------------------------------------


def _is_custom_op_output(t: torch.Tensor) -> bool:
    return "tnt" in type(t.grad_fn).__name__


def test_auto_backend_uses_reference_on_cpu():
    up = torch.randn(4, 16, requires_grad=True)
    x, w = _fused_inputs(2, torch.float32)
    with kernels.use_backend("auto"):
        assert kernels.get_backend() == "auto"
        assert not _is_custom_op_output(kernels.gated_product(up, "silu"))
        assert not _is_custom_op_output(kernels.fused_up_product(x, w, "silu"))
    assert kernels.get_backend() == "triton"  # restored by the context manager


def test_forced_backends():
    up = torch.randn(4, 16, requires_grad=True)
    assert _is_custom_op_output(kernels.gated_product(up, "silu"))
    kernels.set_backend("torch")
    try:
        assert kernels.get_backend() == "torch"
        assert not _is_custom_op_output(kernels.gated_product(up, "silu"))
    finally:
        kernels.set_backend("triton")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.set_backend("cuda")


def test_backend_from_environment(monkeypatch):
    try:
        monkeypatch.setenv(backend.ENV_VAR, "torch")
        importlib.reload(backend)
        assert kernels.get_backend() == "torch"
        monkeypatch.setenv(backend.ENV_VAR, "nope")
        with pytest.raises(ValueError, match="unknown kernel backend"):
            importlib.reload(backend)
    finally:
        monkeypatch.delenv(backend.ENV_VAR)
        importlib.reload(backend)
        backend.set_backend("triton")
    assert kernels.get_backend() == "triton"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="interpreter mode"):
        backend.prepare_triton(torch.zeros(1))


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "act", "order", "error", "match"),
    [
        ((4, 9), "silu", 2, ValueError, "not divisible by order 2"),
        ((4, 12), "identity", 5, ValueError, "not divisible by order 5"),
        ((4, 8), "tanh", 2, ValueError, "unknown activation 'tanh'"),
        ((4, 9), "silu", 3, ValueError, "act must be 'identity'"),
        ((4, 8), "identity", 0, ValueError, "order must be an int >= 1"),
        ((4, 8), "identity", 2.0, ValueError, "order must be an int >= 1"),
    ],
)
@pytest.mark.parametrize("name", ["triton", "torch"])
def test_gated_product_bad_input(shape, act, order, error, match, name):
    with kernels.use_backend(name), pytest.raises(error, match=match):
        kernels.gated_product(torch.randn(*shape), act, order)


def test_fused_up_product_bad_input():
    x = torch.randn(5, 16)
    with pytest.raises(ValueError, match="w_up must be"):
        kernels.fused_up_product(x, torch.randn(8, 15), "silu")
    with pytest.raises(ValueError, match="not divisible by order 2"):
        kernels.fused_up_product(x, torch.randn(9, 16), "silu")
    with pytest.raises(ValueError, match="act must be 'identity'"):
        kernels.fused_up_product(x, torch.randn(9, 16), "gelu", 3)
    with pytest.raises(TypeError, match="same dtype"):
        kernels.fused_up_product(x, torch.randn(8, 16, dtype=torch.float64), "silu")
    with pytest.raises(TypeError, match="floating-point"):
        kernels.gated_product(torch.ones(3, 4, dtype=torch.int64), "relu")


# --- dtypes: fp64 is refused on the Triton path ------------------------------------------------------------------


def test_float64_is_refused_by_the_triton_backend():
    x, w = torch.randn(5, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="x: .*got float64"):
        kernels.fused_up_product(x, w, "silu")
    with pytest.raises(TypeError, match="up: .*got float64"):
        kernels.gated_product(x, "silu")
    with pytest.raises(TypeError, match="got float64"):  # the custom ops check too
        ops.fused_up_product_op(x, w, "silu", 2, False)
    with pytest.raises(TypeError, match="got float64"):
        ops.gated_product_op(x, "silu", 2)


def test_float64_runs_the_reference_under_auto_and_torch():
    x = torch.randn(5, 16, dtype=torch.float64)
    w = torch.randn(8, 16, dtype=torch.float64)
    for name in ("auto", "torch"):
        with kernels.use_backend(name):
            out = kernels.fused_up_product(x, w, "silu")
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, F.silu(x @ w[:4].t()) * (x @ w[4:].t()), rtol=1e-12, atol=1e-12)


# --- NaN propagation as in torch ---------------------------------------------------------------------------------

NAN = float("nan")


def _nan_factors(order: int) -> torch.Tensor:
    """[2, order·6] with a NaN in the first factor (at a > 0 and a < 0 neighbours) and NaNs in the others."""
    a = torch.tensor([[1.5, -1.0, NAN, -2.0, 3.0, 0.0], [NAN, 2.0, -0.5, 1.0, -3.0, NAN]])
    rest = [torch.tensor([[2.0, NAN, 1.0, NAN, -1.0, 2.0], [1.0, 1.0, NAN, 2.0, NAN, 1.0]])] * (order - 1)
    return torch.cat([a, *rest], dim=-1)


@pytest.mark.parametrize(
    ("act", "order"), [("relu", 2), ("relu2", 2), ("relu2", 1), ("relu", 1), ("silu", 2)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_product_nan_matches_torch_autograd(act, order, dtype):
    up = _nan_factors(order).to(dtype).requires_grad_()
    grad = torch.tensor([[1.0, 2.0, 1.0, NAN, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0, NAN]]).to(dtype)
    (d_up,) = torch.autograd.grad(out := kernels.gated_product(up, act, order), up, grad)
    up_ref = fp32_leaf(up)
    ref = reference.gated_product(up_ref, act, order)
    (d_ref,) = torch.autograd.grad(ref, up_ref, grad.float())
    rtol, atol = TOL[dtype]  # values here are at most ~10
    torch.testing.assert_close(out.float(), ref.detach(), equal_nan=True, rtol=rtol, atol=10 * atol)
    torch.testing.assert_close(d_up.float(), d_ref, equal_nan=True, rtol=rtol, atol=10 * atol)


@pytest.mark.parametrize(("act", "order"), [("relu", 2), ("relu2", 1)])
def test_fused_up_product_nan_in_one_factor_matches_torch(act, order):
    """A NaN weight row of W₁ makes one column of the activated factor NaN; the others stay finite."""
    x = torch.randn(5, 16, requires_grad=True)
    w = torch.randn(order * 8, 16)
    w[3, 0] = NAN
    w.requires_grad_()
    out = kernels.fused_up_product(x, w, act, order)
    grad = torch.randn(*out.shape)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x_ref, w_ref = fp32_leaf(x), fp32_leaf(w)
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x_ref, w_ref), grad)
    assert ref[:, 3].isnan().all()
    for got, want in ((out, ref.detach()), (dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-5, atol=1e-5)


# --- empty shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "h"), [(0, 8), (4, 0), (0, 0)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_gated_product_empty_shapes_match_torch(m, h, order):
    act = "identity" if order > 2 else "silu"
    up = torch.randn(m, 2, order * h, requires_grad=True)
    out = kernels.gated_product(up, act, order)
    (d_up,) = torch.autograd.grad(out, up, torch.ones_like(out))
    up_ref = fp32_leaf(up)
    ref = reference.gated_product(up_ref, act, order)
    (d_ref,) = torch.autograd.grad(ref, up_ref, torch.ones_like(ref))
    assert out.shape == ref.shape and d_up.shape == d_ref.shape
    torch.testing.assert_close(d_up, d_ref)


@pytest.mark.parametrize(("m", "h", "d"), [(0, 8, 16), (4, 0, 16), (4, 8, 0), (0, 0, 0)])
@pytest.mark.parametrize(("act", "order"), [("gelu", 2), ("relu2", 1), ("identity", 3)])
@pytest.mark.parametrize("recompute", [False, True], ids=["save", "recompute"])
def test_fused_up_product_empty_shapes_match_torch(m, h, d, act, order, recompute):
    x = torch.randn(m, 3, d, requires_grad=True)
    w = torch.randn(order * h, d, requires_grad=True)
    out = kernels.fused_up_product(x, w, act, order, recompute=recompute)
    dx, dw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
    x_ref, w_ref = fp32_leaf(x), fp32_leaf(w)
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x_ref, w_ref), torch.ones_like(ref))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(dx, dx_ref)
    torch.testing.assert_close(dw, dw_ref)


# --- autotune pruning and matmul precision (the launch logic; compiled sizes are checked in test_kernels_aot) ---


def _spec(c) -> tuple[int, int, int, int, int]:
    k = c.kwargs
    return k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], c.num_stages, c.num_warps


def _smem_model(bm, bn, bk, stages, warps, elem, order, capability, mma) -> int:
    """Operand buffers of the software pipeline, written out independently of the kernel module."""
    buffers = stages if (capability >= 90 and mma) else stages - 1
    return buffers * (bm * bk + (2 if order == 2 else 1) * bk * bn) * elem


H100_SMEM, A100_SMEM = 232_448, 166_912


@pytest.mark.parametrize(
    ("elem", "precision", "capability", "limit"),
    [
        (2, "tf32", 90, H100_SMEM),
        (4, "tf32", 90, H100_SMEM),
        (4, "tf32", 80, A100_SMEM),
        (4, "ieee", 90, H100_SMEM),
    ],
)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_prune_configs_keeps_what_fits(elem, precision, capability, limit, order):
    from kernels import triton_matmul as tm

    configs = tm.configs_for("relu2" if order == 1 else "identity", order)
    kept = tm.prune_configs(
        configs, elem_bytes=elem, order=order, precision=precision, capability=capability, smem_limit=limit
    )
    mma = elem == 2 or precision == "tf32"
    want = [  # k fp32 accumulator tiles, at most 128 values per thread
        _spec(c)
        for c in configs
        if _smem_model(*_spec(c), elem, order, capability, mma) <= limit
        and order * _spec(c)[0] * _spec(c)[1] <= 128 * 32 * _spec(c)[4]
    ]
    assert want, "every case here has a config that fits"
    assert [_spec(c) for c in kept] == want


def test_fp32_on_h100_prunes_oversized_configs():
    """The issue's finding: with fp32 operands most tiles need more than an H100's 232,448 B per block."""
    from kernels import triton_matmul as tm

    kept = tm.prune_configs(
        tm.GPU_CONFIGS, elem_bytes=4, order=2, precision="tf32", capability=90, smem_limit=H100_SMEM
    )
    assert 0 < len(kept) < len(tm.GPU_CONFIGS)
    for c in kept:
        assert _smem_model(*_spec(c), 4, 2, 90, True) <= H100_SMEM


def test_prune_configs_never_returns_nothing():
    from kernels import triton_matmul as tm

    kept = tm.prune_configs(
        tm.GPU_CONFIGS, elem_bytes=4, order=2, precision="ieee", capability=90, smem_limit=1
    )
    assert len(kept) == 1
    assert kept[0] == min(tm.GPU_CONFIGS, key=lambda c: _smem_model(*_spec(c), 4, 2, 90, False))


def test_autotuner_prunes_for_the_device_of_its_input(monkeypatch):
    """The autotuner's early prune reads dtype from x_ptr and the limits of x's device."""
    from kernels import triton_matmul as tm

    seen = []

    def limits(index: int) -> tuple[int, int]:
        seen.append(index)
        return 90, H100_SMEM

    monkeypatch.setattr(tm, "_device_limits", limits)
    tuner = tm._autotuned_kernel(tm.GPU_CONFIGS)
    tuner.nargs = {"x_ptr": torch.empty(2, 2, dtype=torch.float32)}
    try:
        kept = tuner.prune_configs({"ORDER": 2, "PRECISION": "tf32", "ACT": 3})
    finally:
        tuner.nargs = None
    want = tm.prune_configs(
        tm.GPU_CONFIGS, elem_bytes=4, order=2, precision="tf32", capability=90, smem_limit=H100_SMEM
    )
    assert seen == [0] and kept == want and len(kept) < len(tm.GPU_CONFIGS)


@pytest.mark.parametrize(("setting", "want"), [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_fp32_uses_tf32_where_torch_allows_it(setting, want):
    from kernels import triton_matmul as tm

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        assert tm.matmul_precision(torch.float32) == want
        assert tm.matmul_precision(torch.bfloat16) == "tf32"  # ignored by tl.dot for 16-bit inputs
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("recompute", [False, True], ids=["save", "recompute"])
def test_fp32_at_highest_precision_runs_cublas_then_the_product_kernel(monkeypatch, recompute):
    """On a GPU, exact fp32 factors come from torch.mm (cuBLAS); the Triton GEMM is not launched."""
    from kernels import triton_matmul as tm

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the Triton GEMM was launched")

    monkeypatch.setattr(tm, "interpreting", lambda: False)  # the GPU branch, on CPU tensors
    monkeypatch.setattr(tm, "_fused_up_kernel", NoLaunch())
    monkeypatch.setattr(tm, "_autotuned_kernel", lambda configs: NoLaunch())
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        x, w = _fused_inputs(2, torch.float32)
        out = kernels.fused_up_product(x, w, "gelu", recompute=recompute)
        grad = torch.randn(*out.shape)
        dx, dw = torch.autograd.grad(out, (x, w), grad)
    finally:
        torch.set_float32_matmul_precision(previous)
    x_ref, w_ref = fp32_leaf(x), fp32_leaf(w)
    ref = reference.fused_up_product(x_ref, w_ref, "gelu")
    dx_ref, dw_ref = torch.autograd.grad(ref, (x_ref, w_ref), grad)
    assert_close(out, ref.detach(), torch.float32)
    assert_close(dx, dx_ref, torch.float32, GRAD_TOL)
    assert_close(dw, dw_ref, torch.float32, GRAD_TOL)


# --- the model's MLPs go through the fused op ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["relu2", "gelu", "bilinear"])
def test_model_mlp_routes_through_the_fused_op(kind):
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, n_layer=1, n_head=2, d_model=32, mlp=kind)
    mlp = GPT(cfg).blocks[0].mlp
    torch.nn.init.normal_(mlp.c_proj.weight, std=0.1)  # zero-initialised in the model
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = mlp(x)
    ops_seen = set()
    stack = [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None:
            continue
        ops_seen.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    assert any("tnt_fused_up_product" in name for name in ops_seen), ops_seen
    with kernels.use_backend("torch"):
        y_ref = mlp(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    assert_close(y.detach(), y_ref.detach(), torch.float32)
    assert_close(gx, gx_ref, torch.float32, GRAD_TOL)


# --- bench/bench_mlp_kernels.py: its CPU-testable logic ---------------------------------------------------------


def _bench_module():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        return importlib.import_module("bench_mlp_kernels")
    finally:
        sys.path.pop(0)


def test_bench_mlp_kernels_shapes_are_the_models():
    from model import GPTConfig

    bench = _bench_module()
    shapes = bench.mlp_shapes(768)
    assert [s.kind for s in shapes] == [
        "relu2",
        "gelu",
        "bilinear",
        "reglu",
        "geglu",
        "swiglu",
        "multilinear k=3",
        "multilinear k=4",
    ]
    for s in shapes:
        kind, _, k = s.kind.partition(" k=")
        cfg = GPTConfig(d_model=768, mlp=kind, mlp_order=int(k) if k else 2)
        assert (s.order, s.hidden) == (cfg.order, cfg.hidden)
        # parameter-matched: up- and down-projections hold (k + 1)·h·d, relu2's 8d² up to rounding h to 64
        assert abs((s.order + 1) * s.hidden - 8 * 768) <= 32 * (s.order + 1)


def test_bench_mlp_kernels_table_and_args(tmp_path):
    bench = _bench_module()
    args = bench.parse_args(["--tokens", "2048", "--out", str(tmp_path / "k.md")])
    assert args.tokens == 2048 and args.d == 768 and args.out == tmp_path / "k.md"
    with pytest.raises(SystemExit):
        bench.parse_args(["--tokens", "0"])
    shapes = bench.mlp_shapes(768)[:2]
    rows = [
        bench.Row(shapes[0], {"triton": 1.5, "inductor": 2.0}),
        bench.Row(shapes[1], {"triton": 3.0, "inductor": 2.0}),
    ]
    table = bench.markdown_table(rows, header="H")
    lines = table.splitlines()
    assert lines[0] == "H"
    assert lines[2].startswith("| MLP |") and "Triton" in lines[2]
    assert lines[4].startswith("| relu2 | 1 | 3072 |") and "1.500" in lines[4] and "0.75×" in lines[4]
    assert "1.50×" in lines[5]


def test_bench_mlp_kernels_without_gpu_says_so(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the bench would run for real")
    bench = _bench_module()
    assert bench.main(["--out", str(tmp_path / "k.md")]) == 0
    assert "no GPU: skipped" in capsys.readouterr().out
    assert "no GPU: skipped" in (tmp_path / "k.md").read_text()
