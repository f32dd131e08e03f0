"""Registers, spills and shared memory of every Triton kernel variant, compiled ahead of time for sm_90 and sm_80.

Compiles (``kernels.aot``, no GPU needed) the fused up-projection GEMM for every autotune config — kept
or pruned — × bf16 / fp16 / fp32 × every MLP product the model builds at d = 768 (the products of
``bench_mlp_kernels.mlp_shapes``), and the elementwise kernels, for H100 (sm_90) and A100 (sm_80). Prints
two markdown tables (also to ``--out``): the GEMMs, one row per product × config × dtype with both
targets side by side, and the elementwise kernels.

    .venv/bin/python bench/aot_report.py --out aot.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_mlp_kernels import mlp_shapes  # noqa: E402

from kernels import aot  # noqa: E402

M, D = 8192, 768


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "unknown CPU"
    )


def _cell(r: aot.Result | None) -> str:
    if r is None:
        return "— | — | —"
    if r.error:
        return "error | — | —"
    return f"{r.registers} | {r.spill_stores}/{r.spill_loads} | {r.shared:,}"


def _status(results: list[aot.Result]) -> str:
    pruned = [f"sm_{r.variant.capability}" for r in results if r.pruned]
    return "pruned on " + ", ".join(pruned) if pruned else "kept"


def gemm_table(results: list[aot.Result]) -> list[str]:
    rows = [
        "| product | config | dtype | sm_90 regs | spills (B st/ld) | shared (B) "
        "| sm_80 regs | spills (B st/ld) | shared (B) | autotuner |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    groups: dict[tuple, dict[int, aot.Result]] = {}
    for r in results:
        v = r.variant
        if v.kernel == "fused_up":
            groups.setdefault((v.act, v.order, v.config, v.dtype), {})[v.capability] = r
    for (act, order, config, dtype), by_cap in groups.items():
        cells = " | ".join(_cell(by_cap.get(cap)) for cap in (90, 80))
        rows.append(f"| {act} k={order} | {config} | {dtype} | {cells} | {_status(list(by_cap.values()))} |")
    return rows


def elementwise_table(results: list[aot.Result]) -> list[str]:
    heads = [f"{dt} sm_{cap}" for dt in aot.DTYPES for cap in (90, 80)]
    rows = [
        "| kernel | product | blocks | " + " | ".join(f"{h} regs (spill B)" for h in heads) + " |",
        "|---|---|---|" + "---:|" * len(heads),
    ]
    groups: dict[tuple, dict[tuple, aot.Result]] = {}
    for r in results:
        v = r.variant
        if v.kernel != "fused_up":
            groups.setdefault((v.kernel, v.act, v.order, v.config), {})[(v.dtype, v.capability)] = r
    for (kernel, act, order, config), by in groups.items():
        cells = [by.get((dt, cap)) for dt in aot.DTYPES for cap in (90, 80)]
        text = " | ".join("—" if r is None or r.error else f"{r.registers} ({r.spills})" for r in cells)
        rows.append(f"| {kernel} | {act} k={order} | {config} | {text} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: all cores)")
    args = parser.parse_args(argv)
    import triton

    products = [(s.act, s.order, s.hidden) for s in mlp_shapes(D)]
    items = aot.variants(products, M, D, include_pruned=True)
    start = datetime.datetime.now(datetime.UTC)
    wall = time.perf_counter()
    results = aot.compile_variants(items, args.workers)
    wall = time.perf_counter() - wall
    failed = [r for r in results if r.error]
    lines = [
        f"{len(results)} variants compiled with triton {triton.__version__} for sm_90 and sm_80 on "
        f"{_cpu_model()} ({len(os.sched_getaffinity(0))} cores, no GPU), "
        f"{start:%Y-%m-%d %H:%M} UTC: {wall:.0f} s wall, "
        f"{sum(r.cpu_seconds for r in results):.0f} s CPU in the compiles; {len(failed)} failed. "
        f"x is [{M}, {D}]; shared memory is per program (limits: H100 {aot.TARGETS[90][1]:,} B, "
        f"A100 {aot.TARGETS[80][1]:,} B).",
        "",
        *gemm_table(results),
        "",
        *elementwise_table(results),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    for r in failed:
        print(f"FAILED {r.variant}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
