"""The FP8 head (model.fp8) against its math written out with float8 casts, and against float32.

FP8 tolerance: e4m3 keeps 3 mantissa bits (relative rounding ≤ 2⁻⁴), e5m2 2 bits (≤ 2⁻³); a product of two
rounded operands summed over K terms has a relative error of a few per cent in norm.
"""

import pytest
import torch

from model import GPT, GPTConfig
from model.fp8 import GRAD_SCALE, W_SCALE, X_SCALE, fp8_linear, scaled_matmul

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def operands(seed: int = 0, m: int = 48, k: int = 64, n: int = 80):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.05  # head-like weights: s_w·w spans e4m3's range
    grad = torch.randn(m, n, generator=g) * 1e-4  # per-token loss gradients are small: s_g = 2^19
    return x, w, grad


def emulated(x, w, grad):
    """The record's FP8 math with explicit casts: quantise, multiply the FP8 values exactly, undo the scales."""
    x8 = (x * X_SCALE).to(E4M3).double()
    w8 = (w * W_SCALE).to(E4M3).double()
    g8 = (grad * GRAD_SCALE).to(E5M2).double()
    out = (x8 @ w8.T) / (X_SCALE * W_SCALE)
    grad_x = (g8 @ w8) / (GRAD_SCALE * W_SCALE)
    grad_w = (g8.T @ x8) / (GRAD_SCALE * X_SCALE)
    return out, grad_x, grad_w


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run_head(x, w, grad):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fp8_linear(x, w)
    out.backward(grad.to(out.dtype))
    return out, x.grad, w.grad


def test_fp8_head_equals_its_math_and_fp32_within_fp8_tolerance():
    x, w, grad = operands()
    out, grad_x, grad_w = run_head(x, w, grad)
    assert out.dtype == torch.bfloat16 and grad_x.dtype == x.dtype and grad_w.dtype == w.dtype
    ref_out, ref_gx, ref_gw = emulated(x, w, grad.bfloat16().float())
    # the same quantised values: equal up to bf16 rounding of the outputs
    torch.testing.assert_close(out.double(), ref_out, atol=0, rtol=2**-7)
    torch.testing.assert_close(grad_x.double(), ref_gx, atol=1e-12, rtol=2**-7)
    torch.testing.assert_close(grad_w.double(), ref_gw, atol=1e-12, rtol=1e-6)
    # against float32: FP8 rounding only
    assert rel(out, x @ w.T) < 0.06
    assert rel(grad_x, grad @ w) < 0.1
    assert rel(grad_w, grad.T @ x) < 0.1


def test_fp8_head_keeps_the_leading_shape_and_compiles():
    x, w, _ = operands(1)
    x3 = x.view(4, 12, 64)
    out = fp8_linear(x3, w)
    assert out.shape == (4, 12, 80)
    torch.testing.assert_close(out.view(48, 80), fp8_linear(x, w), atol=0, rtol=0)
    # a loss-like mean: the record's gradient scale 2^19 assumes per-logit gradients ≲ 0.1 (e5m2 tops at 57344)
    fn = torch.compile(
        lambda a, b: fp8_linear(a, b).float().logsumexp(-1).mean(), fullgraph=True, dynamic=False
    )
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    fn(a, w).backward()
    fp8_linear(b, w).float().logsumexp(-1).mean().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)


def test_scaled_mm_call_equals_the_float32_products():
    """The operand layout and scales of the torch._scaled_mm call (the CUDA path), where torch has it on CPU."""
    x, w, grad = operands(2)
    x8, w8, g8 = (x * X_SCALE).to(E4M3), (w * W_SCALE).to(E4M3), (grad * GRAD_SCALE).to(E5M2)
    cases = [
        (x8, w8, 1 / X_SCALE, 1 / W_SCALE, torch.bfloat16),
        (g8, w8.t().contiguous(), 1 / GRAD_SCALE, 1 / W_SCALE, torch.bfloat16),
        (x8.t().contiguous(), g8.t().contiguous(), 1 / X_SCALE, 1 / GRAD_SCALE, torch.float32),
    ]
    for a, b_t, sa, sb, dtype in cases:
        try:
            fast = scaled_matmul(a, b_t, sa, sb, dtype, use_scaled_mm=True)
        except (RuntimeError, NotImplementedError) as e:
            pytest.skip(f"torch._scaled_mm is not available on this CPU: {e}"[:200])
        slow = scaled_matmul(a, b_t, sa, sb, dtype, use_scaled_mm=False)
        ref = (a.double() @ b_t.double().T) * sa * sb
        torch.testing.assert_close(slow.double(), ref, atol=1e-12, rtol=2**-7)
        torch.testing.assert_close(fast.double(), ref, atol=1e-12, rtol=2**-7)


def test_head_fp8_applies_in_training_mode_only():
    cfg = dict(vocab_size=96, n_layer=1, n_head=2, d_model=32, mlp="relu2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg, head_fp8=True))
    plain = GPT(GPTConfig(**cfg))
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.05)
    plain.load_state_dict(model.state_dict())
    idx, y = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    model.eval(), plain.eval()
    torch.testing.assert_close(model(idx), plain(idx), atol=0, rtol=0)
    model.train(), plain.train()
    fp8_logits, fp32_logits = model(idx), plain(idx)
    assert not torch.equal(fp8_logits, fp32_logits)
    assert rel(fp8_logits, fp32_logits) < 0.06
    loss = model(idx, y)
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.wte.weight.grad is not None


@pytest.mark.gpu
def test_fp8_head_on_cuda_uses_scaled_mm_with_the_same_result():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("torch._scaled_mm needs FP8 tensor cores (compute capability 8.9+)")
    x, w, grad = (t.cuda() for t in operands(3, m=64, k=128, n=256))
    out, grad_x, grad_w = run_head(x, w, grad)
    ref_out, ref_gx, ref_gw = emulated(x, w, grad.bfloat16().float())
    torch.testing.assert_close(
        out.double(), ref_out, atol=1e-3, rtol=2**-6
    )  # fast accumulation in the forward
    torch.testing.assert_close(grad_x.double(), ref_gx, atol=1e-9, rtol=2**-7)
    torch.testing.assert_close(grad_w.double(), ref_gw, atol=1e-9, rtol=1e-5)
