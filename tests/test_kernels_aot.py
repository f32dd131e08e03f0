"""Ahead-of-time checks of the Triton kernels for Hopper (sm_90) and Ampere (sm_80), on a machine without a GPU.

Every kernel variant the trainer can launch — the fused up-projection GEMM for each autotune config kept by
``prune_configs`` × bf16 / fp16 / fp32 × every MLP product the model builds (relu2, gelu, bilinear, reglu,
geglu, swiglu, multilinear k = 3, 4 at d = 768 and their parameter-matched widths), and the elementwise
kernels — is compiled once per session through Triton's compile API with an explicit ``GPUTarget`` and its
bundled ptxas (``kernels.aot``, in spawned workers: the root conftest turns the interpreter on). So are the
configs that pruning removes for one product per order on sm_90 (bf16; fp32 for k ≤ 2), to show each
removal was needed.
The compiled code is the oracle: shared memory from its metadata, registers and spills from ptxas -v.
"""

import importlib
import sys
from pathlib import Path

import pytest

from kernels import aot

triton = pytest.importorskip("triton")
try:
    from triton._C.libtriton import native_specialize_impl  # noqa: F401
except ImportError:  # pragma: no cover - older triton
    pytest.skip(
        "needs triton's native_specialize_impl (triton >= 3.5) to specialise like the JIT",
        allow_module_level=True,
    )

M = 8192  # tokens per launch: any multiple of 16 specialises the same way
D = 768


def _products() -> list[tuple[str, int, int]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        shapes = importlib.import_module("bench_mlp_kernels").mlp_shapes(D)
    finally:
        sys.path.pop(0)
    return [(s.act, s.order, s.hidden) for s in shapes]


@pytest.fixture(scope="module")
def results() -> list[aot.Result]:
    products = _products()
    launchable = aot.variants(products, M, D)
    one_per_order = list({order: (act, order, h) for act, order, h in products}.values())
    pruned = [
        v
        for v in aot.variants(one_per_order, M, D, capabilities=(90,), include_pruned=True)
        if v not in launchable and (v.dtype == "bfloat16" or (v.dtype == "float32" and v.order <= 2))
    ]
    assert pruned, "some configs are pruned at these shapes"
    return aot.compile_variants(launchable + pruned)


def _describe(r: aot.Result) -> str:
    v = r.variant
    return f"{v.kernel} {v.act} k={v.order} {v.dtype} {v.config} sm_{v.capability}"


def test_the_launchable_set_covers_every_mlp_dtype_and_target(results):
    seen = {(r.variant.act, r.variant.order, r.variant.dtype, r.variant.capability) for r in results}
    for act, order, _ in _products():
        for dtype in aot.DTYPES:
            for cap in aot.TARGETS:
                assert (act, order, dtype, cap) in seen
    kernels_seen = {r.variant.kernel for r in results}
    assert kernels_seen == {"fused_up", "gated_fwd", "gated_bwd"}


def test_every_variant_compiles(results):
    failed = [f"{_describe(r)}: {r.error}" for r in results if r.error]
    assert not failed, "\n".join(failed)


def test_shared_memory_within_the_target_limit(results):
    over = [
        f"{_describe(r)}: {r.shared} B > {aot.TARGETS[r.variant.capability][1]} B"
        for r in results
        if not r.pruned and r.shared > aot.TARGETS[r.variant.capability][1]
    ]
    assert not over, "\n".join(over)


def test_pruning_estimates_the_compiled_shared_memory_exactly(results):
    fused = [r for r in results if r.variant.kernel == "fused_up" and not r.error]
    wrong = [
        f"{_describe(r)}: estimate {r.estimated_shared}, compiled {r.shared}"
        for r in fused
        if r.estimated_shared != r.shared
    ]
    assert not wrong, "\n".join(wrong)


def test_every_pruned_config_would_not_fit(results):
    """A removed config needs more shared memory than the target has, or spills registers."""
    pruned = [r for r in results if r.pruned]
    assert pruned
    needless = [
        f"{_describe(r)}: {r.shared} B, {r.spills} B spilled"
        for r in pruned
        if r.shared <= aot.TARGETS[r.variant.capability][1] and r.spills == 0
    ]
    assert not needless, "\n".join(needless)


def test_no_register_spills_for_bf16_on_sm90(results):
    spilled = [
        f"{_describe(r)}: {r.spill_stores} B stores, {r.spill_loads} B loads ({r.registers} registers)"
        for r in results
        if not r.pruned and r.variant.dtype == "bfloat16" and r.variant.capability == 90 and r.spills
    ]
    assert not spilled, "\n".join(spilled)


def test_bf16_gemms_use_wgmma_on_sm90(results):
    gemms = [r for r in results if r.variant.kernel == "fused_up" and r.variant.capability == 90]
    assert gemms
    missing = [_describe(r) for r in gemms if r.variant.dtype == "bfloat16" and not r.wgmma]
    assert not missing, "\n".join(missing)
    assert not any(r.wgmma for r in results if r.variant.capability == 80)  # no wgmma before Hopper


def test_relu_kernels_keep_nan(results):
    """relu and relu² must not compile to PTX max.f32, which returns the non-NaN operand."""
    relu = [r for r in results if r.variant.act in ("relu", "relu2")]
    assert relu
    dropping = [_describe(r) for r in relu if r.nan_dropping_max]
    assert not dropping, "\n".join(dropping)


@pytest.mark.parametrize(
    ("ptx", "drops"),
    [
        ("max.f32 \t%f3, %f1, 0f00000000;", True),
        ("max.ftz.f32 %f3, %f1, %f2;", True),
        ("max.NaN.f32 %f3, %f1, %f2;", False),
        ("max.s32 %r3, %r1, %r2;", False),
        ("selp.f32 %f3, 0f00000000, %f1, %p1;", False),
    ],
)
def test_the_nan_dropping_max_detector(ptx, drops):
    assert (aot.NAN_DROPPING_MAX.search(ptx) is not None) == drops
