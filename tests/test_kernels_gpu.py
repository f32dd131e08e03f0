"""GPU-only tests of ``kernels``: compiled Triton kernels at model-sized shapes (skipped without CUDA).

Shapes follow a GPT-2-small MLP: M = 8192 tokens, d = 768, h = 3072 (ReLU² / gelu width; the gated kinds
use their own parameter-matched widths where it matters). Speed is measured in
``bench/bench_mlp_kernels.py``, not here.
"""

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference

pytestmark = pytest.mark.gpu

M, D, H = 8192, 768, 3072
PRODUCTS = [
    ("identity", 2),
    ("relu", 2),
    ("gelu", 2),
    ("silu", 2),
    ("identity", 3),
    ("relu2", 1),
    ("gelu", 1),
]


@pytest.fixture(autouse=True)
def _auto_backend():
    torch.manual_seed(0)
    with kernels.use_backend("auto"):
        yield


def _bf16_ulps_apart(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|bit pattern difference| of two bf16 tensors (an ulp count where the signs agree)."""
    return (out.view(torch.int16).int() - ref.view(torch.int16).int()).abs()


@pytest.mark.parametrize(("act", "order"), PRODUCTS)
def test_gated_product_large_bf16_nearly_bit_exact(act, order):
    up = torch.randn(M, order * H, device="cuda", dtype=torch.bfloat16)
    out = kernels.gated_product(up, act, order)
    ref = reference.gated_product(up.float(), act, order).bfloat16()  # fp32 maths, one rounding: the kernel's
    differ = out != ref  # (+0 == -0)
    assert differ.float().mean() < 0.01
    if differ.any():
        assert _bf16_ulps_apart(out[differ], ref[differ]).max() <= 1


@pytest.mark.parametrize(("act", "order"), [("silu", 2), ("gelu", 2), ("relu2", 1)])
def test_gated_product_large_bf16_grad(act, order):
    up = torch.randn(M, order * H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
    (d_up,) = torch.autograd.grad(kernels.gated_product(up, act, order), up, grad)
    up_ref = up.detach().float().requires_grad_()
    (d_ref,) = torch.autograd.grad(reference.gated_product(up_ref, act, order), up_ref, grad.float())
    torch.testing.assert_close(d_up.float(), d_ref, rtol=2**-7, atol=1e-5 * d_ref.abs().max().item())


@pytest.mark.parametrize(
    ("act", "order", "recompute"),
    [(a, k, False) for a, k in [*PRODUCTS, ("identity", 4)]] + [("silu", 2, True), ("relu2", 1, True)],
)
def test_fused_up_product_large_bf16(act, order, recompute):
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(order * H, D, device="cuda") * D**-0.5).bfloat16().requires_grad_()
    out = kernels.fused_up_product(x, w, act, order, recompute=recompute)
    grad = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x_ref, w_ref = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x_ref, w_ref), grad.float())
    for got, want in ((out, ref.detach()), (dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@pytest.mark.parametrize(("setting", "rtol"), [("highest", 1e-4), ("high", 1e-2)])
@pytest.mark.parametrize(("act", "order"), [("silu", 2), ("relu2", 1), ("identity", 3)])
def test_fused_up_product_fp32_at_each_matmul_precision(setting, rtol, act, order):
    """'highest': exact fp32 factors (cuBLAS); 'high': tf32 in the Triton GEMM, on configs pruned to fit."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        x = torch.randn(M // 4, D, device="cuda", requires_grad=True)
        w = (torch.randn(order * H // 2, D, device="cuda") * D**-0.5).requires_grad_()
        out = kernels.fused_up_product(x, w, act, order)
        dx, dw = torch.autograd.grad(out.square().sum(), (x, w))
    finally:
        torch.set_float32_matmul_precision(previous)
    x_ref, w_ref = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    dx_ref, dw_ref = torch.autograd.grad(ref.square().sum(), (x_ref, w_ref))
    for got, want in ((out, ref.detach()), (dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * want.abs().max().item())


def test_autotuner_keeps_only_configs_that_fit_this_device():
    from kernels import triton_matmul as tm

    major, minor = torch.cuda.get_device_capability(0)
    capability, limit = 10 * major + minor, torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    for dtype in (torch.bfloat16, torch.float32):
        for act, order in [("relu2", 1), ("silu", 2), ("identity", 4)]:
            x = torch.empty(16, 16, device="cuda", dtype=dtype)
            configs = tm.configs_for(act, order)
            kept = tm._early_config_prune(configs, {"x_ptr": x}, ORDER=order, PRECISION="tf32")
            assert kept
            for c in kept:
                assert tm.shared_memory_bytes(c, x.element_size(), order, capability, "tf32") <= limit


def test_float64_runs_the_reference_under_auto():
    x = torch.randn(64, 32, device="cuda", dtype=torch.float64)
    w = torch.randn(48, 32, device="cuda", dtype=torch.float64)
    out = kernels.fused_up_product(x, w, "silu")
    torch.testing.assert_close(out, F.silu(x @ w[:24].t()) * (x @ w[24:].t()))
    with kernels.use_backend("triton"), pytest.raises(TypeError, match="got float64"):
        kernels.fused_up_product(x, w, "silu")


@pytest.mark.parametrize(("act", "order"), [("relu", 2), ("relu2", 1)])
def test_compiled_relu_propagates_nan_like_torch(act, order):
    """PTX max.f32 would drop the NaN of a NaN weight row; torch keeps it (forward and backward)."""
    x = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(order * 128, 128, device="cuda", dtype=torch.bfloat16) * 0.1
    w[5, 0] = float("nan")
    w.requires_grad_()
    out = kernels.fused_up_product(x, w, act, order)
    grad = torch.randn_like(out)
    got = (out, *torch.autograd.grad(out, (x, w), grad))
    x_ref, w_ref = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    want = (ref, *torch.autograd.grad(ref, (x_ref, w_ref), grad.float()))
    assert ref[:, 5].isnan().all()
    for g, r in zip(got, want, strict=True):
        atol = 2e-2 * r.nan_to_num().abs().max().item()
        torch.testing.assert_close(g.float(), r.detach(), equal_nan=True, rtol=2e-2, atol=atol)


@pytest.mark.parametrize(("m", "h", "d"), [(0, 64, 64), (64, 0, 64), (64, 64, 0)])
def test_empty_shapes_on_cuda(m, h, d):
    x = torch.randn(m, d, device="cuda", requires_grad=True)
    w = torch.randn(2 * h, d, device="cuda", requires_grad=True)
    out = kernels.fused_up_product(x, w, "gelu")
    dx, dw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
    assert out.shape == (m, h) and dx.shape == x.shape and dw.shape == w.shape
    assert not out.abs().sum() and not dx.abs().sum() and not dw.abs().sum()


def _extra_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    del result
    return extra


def test_fused_up_product_writes_factors_only_when_backward_needs_them():
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kernels.fused_up_product(x, w, "silu")  # autotuning allocates benchmark buffers: do it first
    out_bytes, up_bytes = M * H * 2, M * 2 * H * 2
    with torch.no_grad():
        no_grad = _extra_bytes(lambda: kernels.fused_up_product(x, w, "silu"))
    recompute = _extra_bytes(lambda: kernels.fused_up_product(x, w, "silu", recompute=True))
    save = _extra_bytes(lambda: kernels.fused_up_product(x, w, "silu"))
    assert no_grad <= out_bytes + (1 << 20)
    assert recompute <= out_bytes + (1 << 20)
    assert out_bytes + up_bytes <= save <= out_bytes + up_bytes + (1 << 20)


def test_compile_fullgraph_on_cuda():
    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc = torch.nn.Linear(256, 2 * 512, bias=False)
            self.c_proj = torch.nn.Linear(512, 256, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c_proj(kernels.fused_up_product(x, self.c_fc.weight, "silu"))

    model = MLP().cuda().bfloat16()
    x = torch.randn(4, 128, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.compile(model, fullgraph=True)(x)
    (gx,) = torch.autograd.grad(y.float().square().sum(), x)
    y_ref = model(x)
    (gx_ref,) = torch.autograd.grad(y_ref.float().square().sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=2e-2 * gx_ref.abs().max().item())
