"""Every analysis command line in one place: its argument parser and its ``main``.

    python -m analysis CHECKPOINT --out DIR            `report_parser` / `report_main` (analysis.report)
    python -m analysis.diff BASE FINETUNED --out DIR   `diff_parser` / `diff_main` (analysis.diff)
    python -m analysis.lab BASE FT [FT ...] --fact DIR --out DIR
                                                       `lab_parser` / `lab_main` (analysis.lab)

Each ``*_parser()`` builds the argparse parser (shared helpers in `analysis.cli`), each ``*_main(argv)`` turns
the arguments into the command's options dataclass, runs it and returns the exit status (2 on an
AnalysisError, printed as one line). The data commands live in ``data/__main__.py`` the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from analysis.cli import HelpFormatter, add_threads_argument, any_int_list, float_list, int_list
from analysis.diff import DiffOptions, build_diff_report
from analysis.diff_steering import DEFAULT_ALPHAS, STEER_KINDS
from analysis.errors import AnalysisError
from analysis.lab import LabOptions
from analysis.lab_report import build_lab_report
from analysis.readable import ReadableOptions
from analysis.report import DEFAULT_KS, DEFAULT_RANKS, ReportOptions, build_report


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description=(
            "Write an HTML report (DIR/index.html, DIR/report.md, DIR/summary.json, DIR/figures/*.png) on a tnt "
            "checkpoint with bilinear MLPs. Per bilinear layer: eigenvalue spectra of the interaction matrices "
            "Q(u) for chosen output tokens, token readouts of the leading eigenvectors, effective ranks, "
            "truncation curves, a CP-rank sweep with decomp's implicit ALS scored by relative error, KL against a "
            "noise floor and validation loss, and steering (measured vs predicted MLP change, saturation by the "
            "norm). Plus a logit lens over the residual stream. Non-bilinear layers are skipped with a note."
        ),
        epilog="Example: python -m analysis runs/demo --out runs/demo/report --tokens ' the' '\\n' ','",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="run folder (its LATEST file names the checkpoint) or checkpoint folder"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created; files are replaced)")
    p.add_argument(
        "--val-files",
        default=None,
        help="glob of validation shards (default: train.val_files of the checkpoint)",
    )
    p.add_argument(
        "--val-tokens", type=int, default=2048, help="validation tokens for KL, losses and the logit lens"
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument(
        "--tokens",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="output tokens to analyse, as text of one GPT-2 token each (escapes \\n \\t understood; "
        "mind leading spaces: ' the'); default: the --n-tokens most frequent validation tokens",
    )
    p.add_argument(
        "--n-tokens", type=int, default=4, help="number of most frequent tokens when --tokens is not given"
    )
    p.add_argument(
        "--ranks",
        type=int_list,
        default=",".join(map(str, DEFAULT_RANKS)),
        help="CP ranks of the ALS sweep (comma-separated)",
    )
    p.add_argument(
        "--ks",
        type=int_list,
        default=",".join(map(str, DEFAULT_KS)),
        help="eigencomponents per output direction for the whole-MLP top-k truncation (comma-separated)",
    )
    p.add_argument("--als-iters", type=int, default=40, help="maximum ALS iterations per rank")
    p.add_argument(
        "--noise-seeds", type=int, default=2, help="random perturbations averaged for the noise floor"
    )
    p.add_argument("--n-eigen", type=int, default=3, help="leading eigenvectors read out per token")
    p.add_argument("--top-k", type=int, default=6, help="tokens listed per readout and sign")
    p.add_argument("--layers", type=any_int_list, default=None, help="only these layers (comma-separated)")
    p.add_argument("--steer-sequences", type=int, default=4, help="validation sequences used for steering")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise floor")
    g = p.add_argument_group("readable eigenvectors: token frequencies, dashboards, data-weighted truncation")
    g.add_argument(
        "--min-count",
        type=int,
        default=20,
        help="readouts through W_E list only tokens seen at least this often in the training shards (0: all)",
    )
    g.add_argument(
        "--train-files",
        default=None,
        help="glob of the shards to count tokens in (default: train.train_files)",
    )
    g.add_argument("--count-tokens", type=int, default=20_000_000, help="training tokens counted at most")
    g.add_argument(
        "--act-tokens",
        type=int,
        default=None,
        help="validation tokens of the activation pass (dashboards, EV); default 32768 for the 4×128 demo, fewer "
        "for larger models (at most 2^24 cached values)",
    )
    g.add_argument("--dashboard-top", type=int, default=8, help="top contexts per dashboard")
    g.add_argument(
        "--dashboard-components", type=int, default=6, help="CP components with a dashboard per layer"
    )
    g.add_argument(
        "--context", type=any_int_list, default="12,4", help="tokens shown before,after each top context"
    )
    g.add_argument(
        "--trunc-tokens",
        type=int,
        default=None,
        help="most frequent tokens of the per-output-token truncation (one eigendecomposition each and layer; "
        "default 1024 at d = 128, fewer for larger d; 0: skip)",
    )
    g.add_argument(
        "--two-layer",
        type=any_int_list,
        default=None,
        help="first layers L of the pairs (L, L+1) analysed as two-layer tensors (default: every bilinear pair)",
    )
    g.add_argument(
        "--two-layer-ranks", type=int_list, default="16,64", help="CP ranks of the ALS of each order"
    )
    g.add_argument("--no-cache", action="store_true", help="recompute the activation pass (no DIR/cache/)")
    g.add_argument("--no-readable", action="store_true", help="skip all of these stages")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _context(values: tuple[int, ...]) -> tuple[int, int]:
    if len(values) != 2:
        raise SystemExit(f"error: --context takes two numbers BEFORE,AFTER, got {values}")
    return values[0], values[1]


def report_main(argv: list[str] | None = None) -> int:
    args = report_parser().parse_args(argv)
    opts = ReportOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        val_files=args.val_files,
        val_tokens=args.val_tokens,
        batch_size=args.batch_size,
        tokens=args.tokens,
        n_tokens=args.n_tokens,
        ranks=args.ranks,
        ks=args.ks,
        als_iters=args.als_iters,
        noise_seeds=args.noise_seeds,
        n_eigen=args.n_eigen,
        n_top=args.top_k,
        layers=list(args.layers) if args.layers is not None else None,
        steer_sequences=args.steer_sequences,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
        readable=None
        if args.no_readable
        else ReadableOptions(
            min_count=args.min_count,
            train_files=args.train_files,
            count_tokens=args.count_tokens,
            act_tokens=args.act_tokens,
            dashboard_top=args.dashboard_top,
            dashboard_components=args.dashboard_components,
            context=_context(args.context),
            trunc_tokens=args.trunc_tokens,
            two_layer=list(args.two_layer) if args.two_layer is not None else None,
            two_layer_ranks=args.two_layer_ranks,
            cache=not args.no_cache,
        ),
    )
    start = time.perf_counter()
    try:
        index = build_report(opts)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written in {time.perf_counter() - start:.1f} s")
    print(index)
    return 0


def diff_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.diff",
        description=(
            "Diff a fine-tuned checkpoint against its base and write DIR/index.html (+ report.md, figures/). "
            "(a) Weight-based: each bilinear/multilinear layer's B_ft − B_base, compressed with decomp's implicit "
            "CP-ALS, with token readouts of its largest terms. (b) Activation-based baseline: mean residual-stream "
            "difference on the first positions of validation text, its PCA and logit lens. Both checkpoints must "
            "share the architecture and vocabulary."
        ),
        epilog="Example: python -m analysis.diff runs/demo runs/comedies --out runs/comedies/diff",
        formatter_class=HelpFormatter,
    )
    p.add_argument("base", help="base run folder or checkpoint folder")
    p.add_argument("finetuned", help="fine-tuned run folder or checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--val-files", default=None, help="glob of validation shards (default: the base's train.val_files)"
    )
    p.add_argument("--val-tokens", type=int, default=4096, help="validation tokens (whole windows) to read")
    p.add_argument("--positions", type=int, default=32, help="first positions of each window used")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--rank", type=int, default=8, help="CP rank of the compressed weight difference")
    p.add_argument("--sweep", type=int_list, default="1,2,4,8,16", help="ranks of the error-vs-rank curve")
    p.add_argument("--components", type=int, default=4, help="largest terms read out per layer")
    p.add_argument("--top-k", type=int, default=8, help="tokens listed per readout and sign")
    p.add_argument("--als-iters", type=int, default=60, help="maximum ALS iterations")
    p.add_argument(
        "--pca-point", type=int, default=-1, help="lens point (index; -1 = after the last block) for PCA"
    )
    p.add_argument(
        "--act-tokens",
        type=int,
        default=16384,
        help="validation tokens of the dashboards' activation pass (0: none)",
    )
    p.add_argument("--dashboard-top", type=int, default=8, help="top contexts per dashboard")
    p.add_argument(
        "--min-count",
        type=int,
        default=20,
        help="readouts through W_E list only tokens seen at least this often in the training shards (0: all)",
    )
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def diff_main(argv: list[str] | None = None) -> int:
    args = diff_parser().parse_args(argv)
    opts = DiffOptions(
        base=args.base,
        finetuned=args.finetuned,
        out=args.out,
        val_files=args.val_files,
        val_tokens=args.val_tokens,
        positions=args.positions,
        batch_size=args.batch_size,
        rank=args.rank,
        sweep=args.sweep,
        n_components=args.components,
        top_k=args.top_k,
        als_iters=args.als_iters,
        pca_point=args.pca_point,
        act_tokens=args.act_tokens,
        dashboard_top=args.dashboard_top,
        min_count=args.min_count,
        threads=args.threads,
        progress=not args.no_progress,
    )
    try:
        index = build_diff_report(opts)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(index)
    return 0


def lab_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.lab",
        description=(
            "One report (DIR/index.html, DIR/report.md, DIR/figures/*.png) comparing several fine-tunes of one "
            "base: per fine-tune its recipe (full / LoRA rank, targets, mask; data mixing), how strongly it "
            "learned the planted fact (logit margins on the held-out prompts of FACT/prompts.json) against how "
            "much it disturbed validation text (KL, loss change), the orders (first / second / third) of its "
            "weight difference per MLP and per attention QK / OV circuit, and its activation difference "
            "(first-position dominance, PCA, logit lens). For one fine-tune: the CP weight difference read as "
            "tokens, and steering the base with its mean activation difference (KL towards the fine-tune, loss "
            "on its data, samples, the bilinear MLP's predicted vs measured response)."
        ),
        epilog="Example: python -m analysis.lab runs/demo runs/ff_full runs/ff_lora --fact runs/data/falsefact "
        "--out runs/lab",
        formatter_class=HelpFormatter,
    )
    p.add_argument("base", help="run or checkpoint folder of the base model")
    p.add_argument("finetunes", nargs="+", metavar="FT", help="run or checkpoint folders of its fine-tunes")
    p.add_argument(
        "--fact", type=Path, required=True, help="false-fact folder (prompts.json, falsefact_val_*.bin)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created; files are replaced)")
    p.add_argument("--names", default=None, help="comma-separated display names, one per fine-tune")
    p.add_argument(
        "--val-files", default=None, help="glob of validation shards (default: the base's train.val_files)"
    )
    p.add_argument(
        "--val-tokens", type=int, default=4096, help="validation tokens for KL and activation diffs"
    )
    p.add_argument(
        "--positions",
        type=int,
        default=None,
        help="positions per window of the activation diff (default: all)",
    )
    p.add_argument(
        "--fact-tokens", type=int, default=4096, help="false-fact validation tokens (loss on its data)"
    )
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts and controls scored at most")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    g = p.add_argument_group("weight diff read as tokens (one fine-tune)")
    g.add_argument("--weight-diff", type=int, default=0, help="index of the fine-tune (0-based)")
    g.add_argument("--rank", type=int, default=4, help="CP rank of the compressed difference")
    g.add_argument("--als-iters", type=int, default=20, help="maximum ALS iterations")
    g.add_argument("--components", type=int, default=3, help="terms read out per layer")
    g.add_argument("--top-k", type=int, default=6, help="tokens listed per readout and sign")
    g.add_argument(
        "--min-count",
        type=int,
        default=20,
        help="readouts through W_E list only tokens seen at least this often in the training shards (0: all)",
    )
    g = p.add_argument_group("steering the base with the difference (one fine-tune)")
    g.add_argument("--steer", type=int, default=0, help="index of the fine-tune (0-based)")
    g.add_argument(
        "--steer-layer", type=int, default=None, help="block of the steering point (default: n_layer // 2)"
    )
    g.add_argument(
        "--steer-point",
        choices=("resid_mid", "resid_post", "embed"),
        default="resid_mid",
        help="resid_mid: after the block's attention, right before its MLP; resid_post: after the block",
    )
    g.add_argument(
        "--steer-kind",
        choices=STEER_KINDS,
        default="mean",
        help="mean: mean difference over positions >= 1; first: position 0's, at position 0; pc1: its top PC",
    )
    g.add_argument(
        "--alphas", type=float_list, default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS), help="scales α"
    )
    g.add_argument("--steer-tokens", type=int, default=2048, help="validation (and fact) tokens per α")
    g.add_argument("--sample-tokens", type=int, default=40, help="greedy tokens per sample (0: none)")
    add_threads_argument(p)
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")
    return p


def lab_main(argv: list[str] | None = None) -> int:
    args = lab_parser().parse_args(argv)
    opts = LabOptions(
        base=args.base,
        finetunes=list(args.finetunes),
        fact=args.fact,
        out=args.out,
        names=[n.strip() for n in args.names.split(",")] if args.names is not None else None,
        val_files=args.val_files,
        val_tokens=args.val_tokens,
        positions=args.positions,
        fact_tokens=args.fact_tokens,
        max_prompts=args.prompts,
        batch_size=args.batch_size,
        weight_diff=args.weight_diff,
        rank=args.rank,
        als_iters=args.als_iters,
        n_components=args.components,
        top_k=args.top_k,
        min_count=args.min_count,
        steer=args.steer,
        steer_layer=args.steer_layer,
        steer_point=args.steer_point,
        steer_kind=args.steer_kind,
        alphas=args.alphas,
        steer_tokens=args.steer_tokens,
        sample_tokens=args.sample_tokens,
        threads=args.threads,
        progress=not args.quiet,
    )
    try:
        index = build_lab_report(opts)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(index)
    return 0
