"""Tests of ``kernels``: the Triton kernels (in Triton's interpreter on CPU) against the torch reference.

The reference, evaluated in fp32 on the same (already rounded) inputs, is the oracle. Tolerances are per dtype
and relative to the largest reference magnitude; bf16 allows a few ulp because the interpreter truncates
fp32 → bf16 instead of rounding. Shapes are ragged and tiles large, so each kernel launch is a few programs.
"""

import importlib

import pytest
import torch

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

FUSED_CASES = [(a, 2) for a in kernels.ACTIVATIONS] + [("identity", 3)]


def _fused_inputs(order: int, dtype: torch.dtype, lead: tuple = (37,), d: int = 48, h: int = 40):
    x = randn(*lead, d, dtype=dtype).requires_grad_()
    w = randn(order * h, d, dtype=dtype, scale=d**-0.5 * 2).requires_grad_()
    return x, w


@pytest.mark.parametrize(("act", "order"), FUSED_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_up_product_forward_and_grad(act, order, dtype):
    x, w = _fused_inputs(order, dtype)
    out = kernels.fused_up_product(x, w, act, order)
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


def test_fused_up_product_saves_only_inputs():
    x, w = _fused_inputs(2, torch.float32)
    x_in = x * 1.0
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kernels.fused_up_product(x_in, w, "silu")
    assert sorted(t.data_ptr() for t in saved) == sorted([x_in.data_ptr(), w.data_ptr()])


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


def test_opcheck_fused_ops():
    x = torch.randn(2, 7, 48, requires_grad=True)
    w = torch.randn(80, 48, requires_grad=True)
    torch.library.opcheck(ops.fused_up_product_op, (x, w, "silu", 2))
    grad = torch.randn(2, 7, 40)
    torch.library.opcheck(
        ops.fused_up_product_backward_op, (grad, x.detach(), w.detach(), "silu", 2, True, True)
    )
    torch.library.opcheck(
        ops.fused_up_product_backward_op, (grad, x.detach(), w.detach(), "relu", 2, False, True)
    )


class TinyMLP(torch.nn.Module):
    """P · gated_product(W x): the gated MLP as the model writes it, fused or unfused."""

    def __init__(self, d: int, h: int, act: str, order: int, fused: bool) -> None:
        super().__init__()
        self.c_fc = torch.nn.Linear(d, order * h, bias=False)
        self.c_proj = torch.nn.Linear(h, d, bias=False)
        self.act, self.order, self.fused = act, order, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            hidden = kernels.fused_up_product(x, self.c_fc.weight, self.act, self.order)
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
    ("act", "order", "fused"), [("gelu", 2, False), ("identity", 3, False), ("relu", 2, True)]
)
def test_compile_aot_fullgraph(act, order, fused):
    """Dynamo + AOTAutograd trace the fake and autograd registrations (no codegen, so cheap)."""
    torch._dynamo.reset()
    _compiled_matches_eager(TinyMLP(32, 40, act, order, fused), "aot_eager")


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
        ((4, 8), "identity", 1, ValueError, "order must be an int >= 2"),
        ((4, 8), "identity", 2.0, ValueError, "order must be an int >= 2"),
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
