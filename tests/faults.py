"""Helpers for the reliability tests: a tiny corpus and run, entry points run in-process under the error policy,
file mutations, and a tiny tmpfs for full and read-only disks (imported by test modules)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from errors import run_cli
from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_args(corpus: dict, run_name: str, *extra: str) -> list[str]:
    """train.py flags for a 2×32 bilinear model that trains in well under a second per step on one thread."""
    return [
        "--train-files", corpus["train"], "--val-files", corpus["val"], "--out-root", str(corpus["root"] / "runs"),
        "--run-name", run_name, "--vocab", "compact", "--mlp", "bilinear", "--n-layer", "2", "--n-head", "2",
        "--d-model", "32", "--seq-len", "16", "--batch-size", "8", "--micro-batch", "8", "--steps", "8",
        "--val-tokens", "256", "--val-every", "0", "--untimed-warmup-steps", "1", "--sample-tokens", "0",
        "--compile", "off", "--threads", "1", "--max-train-seconds", "0", "--no-bigram-baseline", *extra,
    ]  # fmt: skip


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one line of stderr of a failed run, checked to be ``error: ...`` with no traceback."""
        lines = self.stderr.strip().splitlines()
        assert self.status != 0, f"expected a failure, got status 0; stderr: {self.stderr[-500:]}"
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: "), (
            f"not one error line: {self.stderr[-2000:]!r}"
        )
        return lines[0]


def run_entry(main, argv: list[str], **kw) -> Outcome:
    """``run_cli(main, argv)`` in this process with stdout and stderr captured (an unanticipated exception, a
    bug, propagates with its traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run_cli(main, argv, **kw)
    return Outcome(status, out.getvalue(), err.getvalue())


def run_subprocess(args: list[str], timeout: float = 120) -> Outcome:
    """``python <args>`` from the repository root, as a user would run it."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def tiny_model_and_optimizers(seed: int = 0, device: str = "cpu") -> tuple[GPT, list[torch.optim.Optimizer]]:
    """A 2×16 bilinear GPT with Adam and torch's Muon after one step, so the optimizers hold moments."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, mlp="bilinear", mlp_hidden=16))
    model = model.to(device)
    hidden = [p for p in model.blocks.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2 or all(p is not h for h in hidden)]
    optimizers = [
        torch.optim.Adam(others, lr=1e-3),
        torch.optim.Muon(hidden, lr=1e-2, adjust_lr_fn="original"),
    ]
    x = torch.randint(0, 64, (2, 8), device=device)
    model(x, x).backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, optimizers


def tiny_state(step: int) -> dict:
    return {
        "step": step,
        "total_steps": max(100, step),
        "train_time_ms": 12.5 * step,
        "loader": {"step": step, "micro_step": 0, "batch_size": 2, "world_size": 1, "grad_accum": 1},
        "world_size": 1,
    }


@contextlib.contextmanager
def tiny_tmpfs(root: Path, size: str = "2m"):
    """A tmpfs of ``size`` mounted at ``root/mnt`` (yielded), or None where mounting is not permitted."""
    mnt = root / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount(mnt: Path, mode: str) -> bool:
    """Remount a tmpfs ``ro`` or ``rw``; whether it worked."""
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], capture_output=True)
    return done.returncode == 0


def fill_disk(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` until ``leave`` bytes are free; the filler file."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(free - leave, 0))
    return filler
