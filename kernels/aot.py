"""Ahead-of-time compilation of the Triton kernels for a CUDA target, on a machine without a GPU.

``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", capability, 32))``
runs Triton's whole pipeline (TTIR → TTGIR → LLVM IR → PTX → cubin through its bundled ptxas) with no
driver. The signature and specialisation come from the arguments the launchers themselves build
(``triton_matmul.fused_launch``, ``triton_gated.gated_*_launch``) on CPU tensors of the model's shapes, put
through Triton's own rule (``native_specialize_impl``: ints equal to 1 become constexprs, ints divisible by
16 and 16-byte aligned pointers get ``tt.divisibility``), so each compile is what the JIT would build on
the GPU for those shapes. Registers and spills come from ptxas ``-v`` (``TRITON_DUMP_PTXAS_LOG``), shared
memory from the compiled metadata.

``TRITON_INTERPRET`` must be unset before triton is imported, so ``compile_variants`` compiles in spawned
worker processes whose initializer clears it (and points Triton's cache at a fresh folder, so ptxas runs)
before any kernel module is imported. Nothing here imports triton at module level.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import resource
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Opt-in shared memory per block (bytes) of the targets the trainer runs on.
TARGETS: dict[int, tuple[str, int]] = {90: ("H100 (sm_90)", 232_448), 80: ("A100 (sm_80)", 166_912)}
DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Variant:
    """One kernel launch the trainer can make: kernel, product, dtype, tile config and target.

    ``kernel`` is ``fused_up`` (the GEMM, one row per autotune config), ``gated_fwd`` or ``gated_bwd`` (the
    elementwise kernels, with the blocks their launcher picks for [m, h]). ``precision`` is the ``tl.dot``
    input precision of the fused kernel (``tf32``; ignored for 16-bit inputs), ``-`` for the elementwise
    kernels. x is [m, d]; the product has order·h factor columns.
    """

    kernel: str
    act: str
    order: int
    dtype: str
    precision: str
    config: str
    capability: int
    m: int
    d: int
    h: int


@dataclass(frozen=True)
class Result:
    """What compiling one ``Variant`` gave; ``error`` is None on success."""

    variant: Variant
    error: str | None
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared: int = 0
    wgmma: bool = False
    nan_dropping_max: bool = False  # PTX holds max.f32 (not max.NaN.f32): drops NaN
    pruned: bool = False  # prune_configs removes this config for the target's shared-memory limit
    estimated_shared: int = 0  # prune_configs' estimate (fused kernel only)
    cpu_seconds: float = 0.0  # of this process and its ptxas, for the compile alone

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


def variants(
    products: Iterable[tuple[str, int, int]],
    m: int,
    d: int,
    capabilities: Sequence[int] = (90, 80),
    include_pruned: bool = False,
) -> list[Variant]:
    """Every launchable variant for ``products`` = (act, order, h) at x [m, d].

    The fused GEMM: each autotune config that ``prune_configs`` keeps for the target (all of them with
    ``include_pruned``) × bf16 / fp16 / fp32 (tf32: at 'highest' precision cuBLAS computes fp32 factors) ×
    target. The elementwise kernels (backward; forward for hooks and fp32 at 'highest'): each dtype × target.
    """
    from kernels import triton_matmul as tm
    from kernels.triton_common import elementwise_blocks

    out = []
    for act, order, h in products:
        for cap in capabilities:
            for dtype in DTYPES:
                elem = 4 if dtype == "float32" else 2
                limits = {"elem_bytes": elem, "order": order, "precision": "tf32", "capability": cap}
                out += [
                    Variant("fused_up", act, order, dtype, "tf32", tm.config_name(c), cap, m, d, h)
                    for c in tm.configs_for(act, order)
                    if include_pruned or tm.config_fits(c, **limits, smem_limit=TARGETS[cap][1])
                ]
                bm, bn, warps = elementwise_blocks(m, h, interpreter=False)  # the launcher's choice on a GPU
                for kernel in ("gated_fwd", "gated_bwd"):
                    out.append(Variant(kernel, act, order, dtype, "-", f"{bm}x{bn} w{warps}", cap, m, d, h))
    return out


def _worker_init(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # ptxas must run (and print) for every variant


def compile_variants(items: Sequence[Variant], workers: int | None = None) -> list[Result]:
    """Compile every variant in a pool of spawned processes; results in the order of ``items``."""
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tnt-aot-") as cache:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_worker_init, initargs=(cache,)
        ) as pool:
            # Slow compiles (the GEMMs) first, so the pool does not end on a long tail.
            order = sorted(range(len(items)), key=lambda i: items[i].kernel != "fused_up")
            futures = {i: pool.submit(compile_variant, items[i]) for i in order}
            return [futures[i].result() for i in range(len(items))]


_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
NAN_DROPPING_MAX = re.compile(r"\bmax(\.ftz)?\.f32\b")


def compile_variant(v: Variant) -> Result:
    """Compile one variant for its target (in a process where TRITON_INTERPRET is unset)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import triton_gated as tg
    from kernels import triton_matmul as tm

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("kernels.aot.compile_variant needs TRITON_INTERPRET unset (use compile_variants)")
    dtype = getattr(torch, v.dtype)
    target = GPUTarget("cuda", v.capability, 32)
    x = torch.empty(v.m, v.d, dtype=dtype)
    up = torch.empty(v.m, v.order * v.h, dtype=dtype)
    out = torch.empty(v.m, v.h, dtype=dtype)
    pruned, estimate = False, 0
    if v.kernel == "fused_up":
        config = next(c for c in tm.configs_for(v.act, v.order) if tm.config_name(c) == v.config)
        w = torch.empty(v.order * v.h, v.d, dtype=dtype)
        args, meta = tm.fused_launch(x, w, out, up, v.act, v.order)
        meta = {**meta, "PRECISION": v.precision, **config.kwargs}
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        fn = tm._fused_up_kernel
        elem = x.element_size()
        estimate = tm.shared_memory_bytes(config, elem, v.order, v.capability, v.precision)
        fits = {"elem_bytes": elem, "order": v.order, "precision": v.precision, "capability": v.capability}
        pruned = not tm.config_fits(config, **fits, smem_limit=TARGETS[v.capability][1])
    else:
        if v.kernel == "gated_fwd":
            fn, _, args, meta = tg.gated_fwd_launch(up, out, v.act, v.order)
        else:
            fn, _, args, meta = tg.gated_bwd_launch(out, up, torch.empty_like(up), v.act, v.order)
        options = {"num_warps": meta.pop("num_warps")}
        assert f"{meta['BLOCK_M']}x{meta['BLOCK_N']} w{options['num_warps']}" == v.config, (meta, v.config)
    signature, constexprs, attrs = _specialise(fn, args, meta, target)
    log = io.StringIO()
    start = _cpu_seconds()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs, attrs), target=target, options=options
            )
    except Exception as e:  # a failed compile is a result to report, not a crash of the pool
        return Result(v, f"{type(e).__name__}: {str(e)[:2000]}", pruned=pruned, estimated_shared=estimate)
    cpu = _cpu_seconds() - start
    text = log.getvalue()
    regs, spills = _REGS.search(text), _SPILLS.search(text)
    if regs is None or spills is None:
        return Result(
            v, f"no ptxas -v output captured:\n{text[:2000]}", pruned=pruned, estimated_shared=estimate
        )
    ptx = compiled.asm["ptx"]
    return Result(
        v,
        None,
        registers=int(regs.group(1)),
        spill_stores=int(spills.group(1)),
        spill_loads=int(spills.group(2)),
        shared=int(compiled.metadata.shared),
        wgmma="wgmma" in ptx,
        nan_dropping_max=NAN_DROPPING_MAX.search(ptx) is not None,
        pruned=pruned,
        estimated_shared=estimate,
        cpu_seconds=cpu,
    )


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _specialise(fn, args: tuple, meta: dict, target) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ``fn`` called as fn[grid](*args, **meta), as Triton's JIT would."""
    from triton._C.libtriton import native_specialize_impl
    from triton.compiler.compiler import make_backend

    backend = make_backend(target)
    signature, constexprs, attrs = {}, {}, {}
    positional = iter(args)
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[(i,)] = meta[p.name]
            continue
        ty, spec = native_specialize_impl(
            backend,
            next(positional),
            getattr(p, "is_const", False),
            not p.do_not_specialize,
            not p.do_not_specialize_on_alignment,
        )
        signature[p.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = spec
        elif isinstance(spec, str) and spec:
            attrs[(i,)] = backend.parse_attr(spec)
    return signature, constexprs, attrs
