"""GPU-only tests of ``kernels``: compiled Triton kernels at model-sized shapes (skipped without CUDA).

Shapes follow a GPT-2-small gated MLP: M = 8192 tokens, d = 768, h = 3072.
"""

import pytest
import torch

import kernels
from kernels import reference

pytestmark = pytest.mark.gpu

M, D, H = 8192, 768, 3072


@pytest.fixture(autouse=True)
def _auto_backend():
    torch.manual_seed(0)
    with kernels.use_backend("auto"):
        yield


def _bf16_ulps_apart(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|bit pattern difference| of two bf16 tensors (an ulp count where the signs agree)."""
    return (out.view(torch.int16).int() - ref.view(torch.int16).int()).abs()


@pytest.mark.parametrize(
    ("act", "order"), [("identity", 2), ("relu", 2), ("gelu", 2), ("silu", 2), ("identity", 3)]
)
def test_gated_product_large_bf16_nearly_bit_exact(act, order):
    up = torch.randn(M, order * H, device="cuda", dtype=torch.bfloat16)
    out = kernels.gated_product(up, act, order)
    ref = reference.gated_product(up.float(), act, order).bfloat16()  # fp32 maths, one rounding: the kernel's
    differ = out != ref  # (+0 == -0)
    assert differ.float().mean() < 0.01
    if differ.any():
        assert _bf16_ulps_apart(out[differ], ref[differ]).max() <= 1


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_gated_product_large_bf16_grad(act):
    up = torch.randn(M, 2 * H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
    (d_up,) = torch.autograd.grad(kernels.gated_product(up, act), up, grad)
    up_ref = up.detach().float().requires_grad_()
    (d_ref,) = torch.autograd.grad(reference.gated_product(up_ref, act), up_ref, grad.float())
    torch.testing.assert_close(d_up.float(), d_ref, rtol=2**-7, atol=1e-5 * d_ref.abs().max().item())


@pytest.mark.parametrize(("act", "order"), [("silu", 2), ("identity", 2), ("identity", 3)])
def test_fused_up_product_large_bf16(act, order):
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(order * H, D, device="cuda") * D**-0.5).bfloat16().requires_grad_()
    out = kernels.fused_up_product(x, w, act, order)
    grad = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x_ref, w_ref = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = reference.fused_up_product(x_ref, w_ref, act, order)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x_ref, w_ref), grad.float())
    for got, want in ((out, ref.detach()), (dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_fused_up_product_never_writes_the_intermediate():
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * H, D, device="cuda", dtype=torch.bfloat16)
    kernels.fused_up_product(x, w, "silu")  # autotuning allocates benchmark buffers: do it first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = kernels.fused_up_product(x, w, "silu")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= out.nbytes + (1 << 20), f"{extra} bytes allocated for a {out.nbytes}-byte output"


def _bench_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100)


def test_speed_against_eager_bf16():
    """The fused kernels must not be slower than eager torch (generous margins: this is a smoke test)."""
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * H, D, device="cuda", dtype=torch.bfloat16) * D**-0.5
    up = x @ w.t()
    fused = _bench_ms(lambda: kernels.fused_up_product(x, w, "silu"))
    eager_fused = _bench_ms(lambda: reference.fused_up_product(x, w, "silu"))
    gated = _bench_ms(lambda: kernels.gated_product(up, "silu"))
    eager_gated = _bench_ms(lambda: reference.gated_product(up, "silu"))
    print(
        f"fused {fused:.3f} ms vs eager {eager_fused:.3f} ms; gated {gated:.3f} ms vs eager {eager_gated:.3f} ms"
    )
    assert fused <= 1.25 * eager_fused
    assert gated <= 1.1 * eager_gated


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
