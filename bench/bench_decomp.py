"""Benchmark: implicit CP-ALS (decomp.cp_als) vs tensorly's parafac on the dense tensor of a bilinear layer.

Both start from the same random rank-r factors and run the same number of sweeps with tol=0 (every sweep
runs). The layer is random: W, V [h, d] and P [d, h] with N(0, 1/d) entries, h = 4d by default.

What is measured, each method in its own fresh subprocess (so peaks do not mix):
  * build s      - time to materialise the target: the dense d³ tensor for parafac (blocked einsum);
                   nothing for the implicit ALS, which reads the layer's factors directly.
  * s/iter       - (t(iters sweeps) − t(1 sweep)) / (iters − 1): whole calls, each the fastest of at least
                   --repeats calls, repeated for at least --min-seconds (the machine may be shared);
                   differencing removes each method's one-time work.
                   A tiny warm-up call runs first in each subprocess.
  * once s       - that one-time work: t(1 sweep) − s/iter (‖T‖ from the dense tensor or from the factor
                   Grams, init copies).
  * peak ΔRSS    - VmHWM during the call minus VmRSS just before it, read from /proc/self/status after
                   resetting the high-water mark (echo 5 > /proc/self/clear_refs). It counts every resident
                   page the call adds (torch CPU allocations included), not the target already in memory.
  * target MiB   - memory of the target representation itself (dense tensor, or the three factors).
  * rel. error   - relative reconstruction error after the last sweep, as each method computes it.
  * max Δ factor - largest relative difference between the two methods' final factors (same init).

Example: python bench/bench_decomp.py --sizes 128,256,512 --implicit-only 768 --iters 5 --rank 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    """One measurement (runs in a subprocess): spec has method, d, h, rank, iters, seed, dense_dtype, out."""
    sys.path.insert(0, str(REPO))
    import tensorly as tl
    import torch
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import parafac

    from decomp import bilinear_cp, cp_als, save_cp

    d, h, rank, iters = spec["d"], spec["h"], spec["rank"], spec["iters"]
    f64 = torch.float64
    g = torch.Generator().manual_seed(spec["seed"])
    w, v = (torch.randn(h, d, generator=g, dtype=f64) / d**0.5 for _ in range(2))
    p = torch.randn(d, h, generator=g, dtype=f64) / h**0.5
    target = bilinear_cp(w, v, p)
    init = CPTensor(
        (torch.ones(rank, dtype=f64), [torch.rand(d, rank, generator=g, dtype=f64) for _ in range(3)])
    )
    torch.set_num_threads(spec["threads"])
    result = {**spec}
    warm_up(spec["method"], spec["dense_dtype"])

    if spec["method"] == "parafac":
        dtype = getattr(torch, spec["dense_dtype"])
        t0 = time.perf_counter()
        dense = dense_tensor(target, dtype)
        result["build_s"] = time.perf_counter() - t0
        result["target_mib"] = dense.numel() * dense.element_size() / 2**20
        init = CPTensor((init.weights.to(dtype), [f.to(dtype) for f in init.factors]))

        def run(n_iter):
            with tl.backend_context("pytorch"):
                cp, errors = parafac(dense, rank, n_iter_max=n_iter, init=init, tol=0, return_errors=True)
            return cp, float(errors[-1])
    else:
        result["build_s"] = 0.0
        result["target_mib"] = sum(f.numel() * f.element_size() for f in target.factors) / 2**20

        def run(n_iter):
            res = cp_als(target, rank, n_iter_max=n_iter, init=init, tol=0)
            return res.cp, res.rel_error

    one, full, peaks = [], [], []
    started = time.perf_counter()
    while len(full) < spec["repeats"] or (
        time.perf_counter() - started < spec["min_seconds"] and len(full) < 500
    ):
        t0 = time.perf_counter()
        run(1)
        one.append(time.perf_counter() - t0)
        rss0, ok = read_status_mib("VmRSS"), reset_peak_rss()
        t0 = time.perf_counter()
        cp, rel_error = run(iters)
        full.append(time.perf_counter() - t0)
        peaks.append(read_status_mib("VmHWM") - rss0 if ok else float("nan"))
    result["calls"] = len(full)
    # The machine may be shared: the fastest repeat is the least disturbed one. Differencing a 1-sweep and
    # an n-sweep call cancels each method's one-time work (norms, init copies) out of the per-sweep time.
    wall_1, wall_n = min(one), min(full)
    result["s_per_iter"] = (wall_n - wall_1) / (iters - 1)
    result["once_s"] = max(wall_1 - result["s_per_iter"], 0.0)
    result["wall_s"] = wall_n
    result["peak_mib"] = max(peaks)
    result["rel_error"] = rel_error
    save_cp(spec["out"], CPTensor((cp.weights.to(f64), [f.to(f64) for f in cp.factors])))
    return result


def warm_up(method: str, dense_dtype: str) -> None:
    """Run the method once on a tiny problem so lazy initialisation (BLAS, LAPACK, imports) is not timed."""
    import tensorly as tl
    import torch
    from tensorly.decomposition import parafac

    from decomp import bilinear_cp, cp_als

    g = torch.Generator().manual_seed(123)
    small = bilinear_cp(
        *(torch.randn(*s, generator=g, dtype=torch.float64) for s in [(16, 8), (16, 8), (8, 16)])
    )
    if method == "parafac":
        with tl.backend_context("pytorch"):
            dense = dense_tensor(small, getattr(torch, dense_dtype))
            parafac(dense, 4, n_iter_max=2, init="random", tol=0, return_errors=True)
    else:
        cp_als(small, 4, n_iter_max=2, init="random", tol=0)


def dense_tensor(cp, dtype, block: int = 16):
    """T[a, i, j] = Σ_h P[a, h] W[h, i] V[h, j], built `block` output rows at a time."""
    import torch

    p, wt, vt = cp.factors
    d_out, d_in = p.shape[0], wt.shape[0]
    out = torch.empty(d_out, d_in, d_in, dtype=dtype)
    for a in range(0, d_out, block):
        rows = p[a : a + block]  # [b, h]
        out[a : a + block] = ((wt[None] * rows[:, None, :]) @ vt.T).to(dtype)
    return out


def run_worker(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['method']} d={spec['d']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def factor_difference(path_a: str, path_b: str) -> float:
    sys.path.insert(0, str(REPO))
    from decomp import load_cp

    a, _ = load_cp(path_a)
    b, _ = load_cp(path_b)
    return max(float((fa - fb).norm() / fb.norm()) for fa, fb in zip(a.factors, b.factors, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="128,256,512", help="d values for parafac vs implicit (comma list)"
    )
    parser.add_argument(
        "--implicit-only", default="768", help="d values for the implicit ALS alone ('' = none)"
    )
    parser.add_argument("--hidden-mult", type=int, default=4, help="h = hidden_mult · d (default 4)")
    parser.add_argument("--iters", type=int, default=5, help="ALS sweeps per run, ≥ 2 (tol=0: all run)")
    parser.add_argument("--rank", type=int, default=64, help="target CP rank r")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (at least)")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="repeat fast calls until this much time has passed"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the same for both methods)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.iters < 2:
        parser.error("--iters must be at least 2 (the per-sweep time is a difference of 1 and n sweeps)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    solo = [int(s) for s in args.implicit_only.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in sizes + solo:
            methods = ["implicit"] if d in solo else ["parafac", "implicit"]
            got = {}
            for method in methods:
                spec = {
                    "method": method,
                    "d": d,
                    "h": args.hidden_mult * d,
                    "rank": args.rank,
                    "iters": args.iters,
                    "seed": args.seed,
                    "repeats": args.repeats,
                    "min_seconds": args.min_seconds,
                    "threads": args.threads,
                    "dense_dtype": args.dense_dtype,
                    "out": os.path.join(tmp, f"{method}_{d}.safetensors"),
                }
                got[method] = run_worker(spec)
                print(f"done {method} d={d}: {got[method]['s_per_iter']:.4g} s/iter", file=sys.stderr)
            if "parafac" in got:
                delta = factor_difference(got["implicit"]["out"], got["parafac"]["out"])
                speedup = got["parafac"]["s_per_iter"] / got["implicit"]["s_per_iter"]
                got["implicit"]["speedup"] = f"{speedup:.0f}×"
                for r in got.values():
                    r["delta"] = f"{delta:.1e}"
            rows.extend(got.values())

    header = (
        "| d | h | r | method | iters | target MiB | build s | once s | s/iter | peak ΔRSS MiB | rel. error "
        "| max Δ factor | speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        name = (
            "tensorly parafac (dense " + args.dense_dtype + ")"
            if r["method"] == "parafac"
            else "implicit cp_als"
        )
        lines.append(
            f"| {r['d']} | {r['h']} | {r['rank']} | {name} | {r['iters']} | {r['target_mib']:.1f} | "
            f"{r['build_s']:.2f} | {r['once_s']:.3f} | {r['s_per_iter']:.4f} | {r['peak_mib']:.0f} | "
            f"{r['rel_error']:.10f} | {r.get('delta', '-')} | {r.get('speedup', '-')} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
