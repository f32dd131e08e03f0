"""The trainer end to end on a tiny synthetic corpus: resume, DDP equivalence, NaN stop, signals, errors."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from toy_data import free_port

import train
from data.shards import write_shard
from data.vocab import VocabError
from model import GPT, CheckpointError, ConfigError, load_model

REPO = Path(__file__).resolve().parents[1]


def tiny_args(corpus, run_name: str, *extra: str) -> list[str]:
    return [
        "--train-files", corpus["train"], "--val-files", corpus["val"], "--out-root", str(corpus["root"] / "runs"),
        "--run-name", run_name, "--vocab", "compact", "--n-layer", "2", "--n-head", "2", "--d-model", "32",
        "--seq-len", "16", "--batch-size", "8", "--micro-batch", "8", "--steps", "8", "--val-tokens", "256",
        "--val-every", "4", "--untimed-warmup-steps", "1", "--sample-tokens", "0", "--compile", "off",
        "--threads", "1", "--max-train-seconds", "0", *extra,
    ]  # fmt: skip


def test_training_lowers_the_loss_and_logs_in_speedrun_format(corpus, capsys):
    result = train.main(
        tiny_args(corpus, "learn", "--steps", "30", "--val-every", "10", "--sample-tokens", "5")
    )
    first_val, last_val = result["val"][0][1], result["val"][-1][1]
    assert first_val == pytest.approx(np.log(64), rel=1e-3)  # compact vocab of 41 ids padded to 64; zero head
    assert last_val < first_val - 0.5
    out = capsys.readouterr().out
    assert "step:30/30 val_loss:" in out and "train_time:" in out and "step_avg:" in out and "val_bpb:" in out
    assert (
        " train_time:0ms " in out.split("step:0/30 val_loss:")[1].splitlines()[0]
    )  # set-up and warm-up untimed
    assert "sample: " in out
    assert f"val_loss {last_val:.4f} vs interpolated bigram {result['bigram_val_loss']:.4f}" in out
    assert 1.0 < result["bigram_val_loss"] < np.log(40)  # 3 successors per state: ln 3 ≈ 1.1 is the floor
    log = (corpus["root"] / "runs" / "learn" / "log.txt").read_text()
    assert log.startswith("==> train.py\n") and "==> model/gpt.py" in log and "torch 2." in log


def test_resume_equals_uninterrupted(corpus):
    full = train.main(tiny_args(corpus, "full", "--save-every", "4"))
    resumed = train.main(
        tiny_args(corpus, "part", "--resume", str(corpus["root"] / "runs" / "full" / "ckpt_000004"))
    )
    assert resumed["train_loss"] == full["train_loss"][4:]  # step for step, bit for bit on CPU
    a = load_model(corpus["root"] / "runs" / "full" / "ckpt_000008")
    b = load_model(corpus["root"] / "runs" / "part" / "ckpt_000008")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_wall_clock_budget_becomes_a_step_count(corpus, capsys):
    result = train.main(tiny_args(corpus, "budget", "--steps", "40", "--max-train-seconds", "0.001"))
    n = train.CALIBRATION_SKIP + train.CALIBRATION_STEPS
    assert result["step"] == n  # the budget is spent by the calibration steps
    assert f"step:{n}/{n} val_loss:" in capsys.readouterr().out
    run = corpus["root"] / "runs" / "budget"
    state = json.loads(
        (run / "LATEST").parent.joinpath((run / "LATEST").read_text().strip(), "state.json").read_text()
    )
    assert state["total_steps"] == n


def test_keeps_only_the_newest_checkpoints(corpus):
    train.main(tiny_args(corpus, "keep", "--save-every", "2", "--keep-checkpoints", "2"))
    run = corpus["root"] / "runs" / "keep"
    assert sorted(p.name for p in run.glob("ckpt_*")) == ["ckpt_000006", "ckpt_000008"]
    assert (run / "LATEST").read_text().strip() == "ckpt_000008"
    assert not list(run.glob(".*tmp*"))


def _ddp_worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train.main(argv)


def test_two_process_gloo_equals_one_process_with_accumulation(corpus):
    one = train.main(tiny_args(corpus, "accum", "--micro-batch", "4"))
    argv = tiny_args(corpus, "ddp", "--micro-batch", "4")
    mp.spawn(_ddp_worker, args=(2, free_port(), argv), nprocs=2, join=True)
    a = load_model(corpus["root"] / "runs" / "accum" / "ckpt_000008")
    b = load_model(corpus["root"] / "runs" / "ddp" / "ckpt_000008")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    log = (corpus["root"] / "runs" / "ddp" / "log.txt").read_text()
    assert "2 rank(s) × 1 accumulation step(s)" in log
    ddp_final_val = float(log.split("step:8/8 val_loss:")[1].split()[0])
    assert ddp_final_val == pytest.approx(one["val_loss"], abs=1e-3)


def test_nan_loss_stops_with_last_good_checkpoint_intact(corpus, monkeypatch):
    calls = {"n": 0}
    forward = GPT.forward

    def poisoned(self, idx, targets=None, **kw):
        out = forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 6:  # 1 untimed warm-up step + 5 real steps, then NaN
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(train.TrainingDiverged, match="non-finite training loss .* at step 5.*ckpt_000004"):
        train.main(tiny_args(corpus, "nan", "--save-every", "2"))
    model = load_model(corpus["root"] / "runs" / "nan" / "ckpt_000004")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sigterm_saves_a_checkpoint_that_resumes(corpus, monkeypatch):
    calls = {"n": 0}
    forward = GPT.forward

    def interrupted(self, idx, targets=None, **kw):
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 4:  # during step 3 (after one warm-up step)
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, idx, targets, **kw)

    monkeypatch.setattr(GPT, "forward", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_args(corpus, "sig"))
    assert exit_info.value.code == 128 + signal.SIGTERM
    run = corpus["root"] / "runs" / "sig"
    assert (run / "LATEST").read_text().strip() == "ckpt_000003"
    monkeypatch.setattr(GPT, "forward", forward)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    full = train.main(tiny_args(corpus, "sig_ref"))
    resumed = train.main(["--resume", str(run)])
    assert resumed["train_loss"] == full["train_loss"][3:]


def test_corrupt_checkpoints_give_clear_errors(corpus):
    train.main(tiny_args(corpus, "c", "--save-every", "4"))
    ckpt = corpus["root"] / "runs" / "c" / "ckpt_000004"
    opt = ckpt / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="optimizer.pt: unreadable optimizer state"):
        train.main(tiny_args(corpus, "c2", "--resume", str(ckpt)))
    (ckpt / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="state.json: missing field 'step'"):
        train.main(tiny_args(corpus, "c2", "--resume", str(ckpt)))
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        train.main(tiny_args(corpus, "c2", "--resume", str(corpus["root"])))


def test_bad_arguments_give_clear_errors(corpus):
    with pytest.raises(ConfigError, match="n_head=3 must divide d_model=32"):
        train.main(tiny_args(corpus, "bad", "--n-head", "3"))
    with pytest.raises(SystemExit, match="must be a multiple of --micro-batch"):
        train.main(tiny_args(corpus, "bad", "--batch-size", "12"))
    with pytest.raises(SystemExit, match="no train shards match"):
        train.main(tiny_args(corpus, "bad", "--train-files", str(corpus["root"] / "missing_*.bin")))
    bad_flags = {
        ("--micro-batch", "0"): "--micro-batch must be >= 1, got 0",
        ("--threads", "-1"): "--threads must be >= 0, got -1",
        ("--kernels", "x"): "--kernels must be one of auto, triton, torch, got 'x'",
        ("--cooldown-frac", "0.9", "--warmup-frac", "0.2"): "--warmup-frac \\+ --cooldown-frac must be <= 1",
    }
    for flags, message in bad_flags.items():
        with pytest.raises(ConfigError, match=message):
            train.main(tiny_args(corpus, "bad", *flags))
    run = subprocess.run(
        [sys.executable, "train.py", *tiny_args(corpus, "bad", "--micro-batch", "0")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 1 and run.stderr == "error: --micro-batch must be >= 1, got 0\n"


def test_compact_vocabulary_must_cover_finetuning_data(corpus):
    train.main(tiny_args(corpus, "v"))
    other = corpus["root"] / "other_train_000000.bin"
    write_shard(other, np.arange(2000, 2100))
    with pytest.raises(
        VocabError, match="other_train_000000.bin: holds 100 token id.* outside the vocabulary of"
    ):
        train.main(
            tiny_args(
                corpus, "v2", "--init-from", str(corpus["root"] / "runs" / "v"), "--train-files", str(other)
            )
        )


def test_init_from_finetunes_with_a_fresh_optimizer(corpus):
    train.main(tiny_args(corpus, "base"))
    result = train.main(
        tiny_args(corpus, "ft", "--init-from", str(corpus["root"] / "runs" / "base"), "--steps", "2")
    )
    base = json.loads((corpus["root"] / "runs" / "base" / "ckpt_000008" / "config.json").read_text())
    ft = json.loads((corpus["root"] / "runs" / "ft" / "ckpt_000002" / "config.json").read_text())
    assert ft["vocab"] == base["vocab"] and result["step"] == 2
    assert result["val"][0][1] < np.log(64) - 0.1  # starts from the trained weights, not from scratch


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for flag in (
        "--mlp",
        "--preset",
        "--resume",
        "--init-from",
        "--max-train-seconds",
        "--wandb",
        "--mlp-order",
    ):
        assert flag in out.stdout


def test_sample_cli_continues_the_prompt(corpus):
    train.main(tiny_args(corpus, "s", "--steps", "2"))
    # the corpus holds GPT-2 ids 1000..1039; a prompt made of them survives the compact vocabulary
    from data.tokenizer import get_encoding

    prompt = get_encoding().decode([1000, 1001])
    out = subprocess.run(
        [sys.executable, "sample.py", str(corpus["root"] / "runs" / "s"), "--prompt", prompt, "--tokens", "5"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.startswith(prompt) and len(out.stdout) > len(prompt)
    bad = subprocess.run(
        [sys.executable, "sample.py", str(corpus["root"])], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "no checkpoint here" in bad.stderr


def test_muon_momentum_warmup_follows_record_21s_ramp(corpus):
    train.main(tiny_args(corpus, "mom", "--muon-momentum-warmup", "100", "--muon-momentum-start", "0.85"))
    saved = torch.load(corpus["root"] / "runs" / "mom" / "ckpt_000008" / "optimizer.pt", weights_only=True)
    (group,) = saved[1]["param_groups"]  # [adam, muon]
    assert group["momentum"] == pytest.approx(0.85 + (0.95 - 0.85) * 7 / 100)  # set before step 7 (0-based)
    assert group["blocks"] and all(len(b) in (1, 2, 3) for b in group["blocks"])
