"""Checkpoints under faults: kill -9 while saving and pruning, a full or read-only disk, divergence before a save,
and resuming from non-finite state. Every check reads the files back independently of the code that wrote them."""

import errno
import json
import os
import signal
import time

import numpy as np
import pytest
import safetensors.torch
import torch
from faults import (
    fill_disk,
    remount,
    run_entry,
    tiny_args,
    tiny_model_and_optimizers,
    tiny_state,
    tiny_tmpfs,
)
from torch.optim.optimizer import register_optimizer_step_post_hook
from toy_data import write_corpus

import train
from errors import StorageError
from model import load_model
from model.io import CheckpointError
from training import checkpoint as ck
from training.checkpoint import (
    CHECKPOINT_FILES,
    NonFiniteError,
    clean_run_dir,
    last_finite_checkpoint,
    load_training_state,
    save_checkpoint,
)

CONFIG = {"train": {"seq_len": 8}, "vocab": {"tokenizer": "gpt2", "token_ids": None}}


def ckpt_dirs(run):
    return sorted(p.name for p in run.iterdir() if p.is_dir() and p.name.startswith("ckpt_"))


def assert_run_dir_consistent(run):
    """Every ckpt_* folder holds all five files and LATEST (if any) names one of them, whose files parse."""
    for name in ckpt_dirs(run):
        present = sorted(f.name for f in (run / name).iterdir())
        assert present == sorted(CHECKPOINT_FILES), f"{name} is incomplete: {present}"
    if (run / "LATEST").exists():
        latest = (run / "LATEST").read_text().strip()
        assert latest in ckpt_dirs(run), f"LATEST names {latest!r}, folders {ckpt_dirs(run)}"
        folder = run / latest
        json.loads((folder / "state.json").read_text())  # independent readers: json, safetensors, torch
        safetensors.torch.load_file(str(folder / "model.safetensors"))
        torch.load(folder / "optimizer.pt", weights_only=True)


def _saver_child(run, model, opts, die_in: str | None, seed: int) -> None:
    """In a forked child: save checkpoints with keep=2 forever; optionally SIGKILL itself inside ``die_in``."""
    try:
        torch.set_num_threads(1)
        rng = np.random.default_rng(seed)
        if die_in is not None:
            real = {"rmtree": ck.shutil.rmtree, "atomic_write_bytes": ck.atomic_write_bytes}
            budget = {"n": int(rng.integers(0, 4))}

            def dying(*args, **kw):
                budget["n"] -= 1
                if budget["n"] < 0:
                    if die_in == "rmtree" and args[0].is_dir():  # delete part of the folder, die mid-deletion
                        files = sorted(args[0].iterdir())
                        for f in files[: len(files) // 2]:
                            f.unlink()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real[die_in](*args, **kw)

            setattr(ck.shutil if die_in == "rmtree" else ck, die_in, dying)
        steps = [int(p[5:]) for p in ckpt_dirs(run)]
        step = max(steps, default=0)
        while True:
            step += 1
            save_checkpoint(run, model, opts, tiny_state(step), CONFIG, keep=2)
    finally:
        os._exit(3)


def _wait(pid: int, timeout: float) -> int:
    """The wait status of child ``pid``; it is killed (and the test fails) if it outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the saving child did not die within {timeout} s")


def test_kill_9_while_saving_and_pruning_never_leaves_an_incomplete_checkpoint(tmp_path):
    run = tmp_path / "run"
    model, opts = tiny_model_and_optimizers()
    for step in (1, 2):
        save_checkpoint(run, model, opts, tiny_state(step), CONFIG, keep=2)
    rng = np.random.default_rng(20240520)
    kinds = ["rmtree", "atomic_write_bytes"] * 6 + [
        None
    ] * 12  # deterministic deaths in each phase, then random
    seen_stale = 0
    for i, die_in in enumerate(kinds):
        pid = os.fork()
        if pid == 0:
            _saver_child(run, model, opts, die_in, seed=i)
        if die_in is None:
            time.sleep(float(rng.uniform(0.005, 0.25)))
            os.kill(pid, signal.SIGKILL)
        status = _wait(pid, timeout=30)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        seen_stale += any(p.name.startswith(".") for p in run.iterdir())
        assert_run_dir_consistent(run)
    assert seen_stale > 0  # some kills did land mid-save or mid-prune
    clean_run_dir(run)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    latest = run / (run / "LATEST").read_text().strip()
    step = int(latest.name[5:]) + 1
    save_checkpoint(run, model, opts, tiny_state(step), CONFIG, keep=2)  # an uninterrupted save prunes to 2
    assert ckpt_dirs(run)[-1] == f"ckpt_{step:06d}" and len(ckpt_dirs(run)) == 2
    latest = run / (run / "LATEST").read_text().strip()
    m2, o2 = tiny_model_and_optimizers(seed=1)
    state = load_training_state(latest, o2, model=m2)
    assert state["step"] == int(latest.name[5:])


def test_clean_run_dir_removes_leftovers_and_restores_a_set_aside_checkpoint(tmp_path):
    run = tmp_path / "run"
    model, opts = tiny_model_and_optimizers()
    for step in (1, 2):
        save_checkpoint(run, model, opts, tiny_state(step), CONFIG, keep=3)
    (run / ".ckpt_000003.tmp").mkdir()
    (run / ".ckpt_000003.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".trash_ckpt_000000").mkdir()
    (run / ".LATEST.x1y2.tmp").write_text("ckpt_0000")
    os.replace(run / "ckpt_000002", run / ".ckpt_000002.old")  # killed while re-using the name ckpt_000002
    removed = {p.name for p in clean_run_dir(run)}
    assert removed == {".ckpt_000003.tmp", ".trash_ckpt_000000", ".LATEST.x1y2.tmp"}
    assert sorted(p.name for p in run.iterdir()) == ["LATEST", "ckpt_000001", "ckpt_000002"]
    assert_run_dir_consistent(run)


# ------------------------------------------------------------------ full and read-only disks


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("failing", [*CHECKPOINT_FILES, "LATEST"])
def test_a_full_disk_while_writing_any_file_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    """ENOSPC simulated at the write of each file in turn (the tmpfs test below does it for real)."""
    run = tmp_path / "run"
    model, opts = tiny_model_and_optimizers()
    save_checkpoint(run, model, opts, tiny_state(1), CONFIG, keep=2)
    before, latest = _snapshot(run / "ckpt_000001"), (run / "LATEST").read_bytes()
    real_fsync = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(name).startswith(f".{failing}.") and name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError) as info:
        save_checkpoint(run, model, opts, tiny_state(2), CONFIG, keep=2)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        f"{run / 'ckpt_000002'}: not saved: no space left on device"
    )
    assert f"{failing}" in message and f"LATEST still names {run / 'ckpt_000001'}" in message
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["LATEST", "ckpt_000001"]  # no temp folder or file left
    assert (run / "LATEST").read_bytes() == latest and _snapshot(run / "ckpt_000001") == before


def test_training_on_a_real_full_tmpfs_fails_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    with tiny_tmpfs(tmp_path, size="2m") as mnt:
        if mnt is None:
            pytest.skip("mounting a tmpfs is not permitted here; the simulated ENOSPC tests cover the logic")
        run = mnt / "full"
        calls = {"n": 0}

        def fill_after_first_checkpoint(opt, args, kwargs):
            if isinstance(opt, torch.optim.Adam):
                calls["n"] += 1
                if calls["n"] == 1 + 5:  # warm-up step, then 5 steps: ckpt_000004 is on disk
                    fill_disk(mnt, leave=150_000)  # room for model.safetensors, not for a whole checkpoint

        handle = register_optimizer_step_post_hook(fill_after_first_checkpoint)
        try:
            out = run_entry(
                train.main, tiny_args(corpus, "full", "--out-root", str(mnt), "--save-every", "4")
            )
        finally:
            handle.remove()
        line = out.error_line()
        assert line.startswith(
            f"error: {run / 'ckpt_000008'}: not saved: no space left on device (writing {run}/"
        )
        assert line.endswith(f"LATEST still names {run / 'ckpt_000004'}")
        assert sorted(p.name for p in run.iterdir()) == ["LATEST", "ckpt_000004", "log.txt"]
        assert_run_dir_consistent(run)
        (mnt / "filler").unlink()
        resumed = run_entry(train.main, ["--resume", str(run)])
        assert resumed.status == 0, resumed.stderr
        assert (run / "LATEST").read_text() == "ckpt_000008\n"


def test_a_read_only_run_folder_fails_in_one_line(tmp_path):
    model, opts = tiny_model_and_optimizers()
    with tiny_tmpfs(tmp_path, size="1m") as mnt:
        if mnt is not None:
            run = mnt / "run"
            save_checkpoint(run, model, opts, tiny_state(1), CONFIG, keep=2)
            assert remount(mnt, "ro")
            expected = "read-only file system"
        elif os.geteuid() != 0:  # chmod only stops non-root users
            run = tmp_path / "run"
            save_checkpoint(run, model, opts, tiny_state(1), CONFIG, keep=2)
            run.chmod(0o555)
            expected = "permission denied"
        else:
            pytest.skip("running as root without mount: neither a read-only tmpfs nor chmod can block writes")
        try:
            with pytest.raises(StorageError) as info:
                save_checkpoint(run, model, opts, tiny_state(2), CONFIG, keep=2)
        finally:
            if mnt is not None:
                remount(mnt, "rw")
            else:
                run.chmod(0o755)
        assert str(info.value).startswith(f"{run / 'ckpt_000002'}: not saved: {expected} (writing {run}")
        assert sorted(p.name for p in run.iterdir()) == ["LATEST", "ckpt_000001"]


# ------------------------------------------------------------------ divergence


def test_save_refuses_non_finite_weights_and_moments(tmp_path):
    run = tmp_path / "run"
    model, opts = tiny_model_and_optimizers()
    save_checkpoint(run, model, opts, tiny_state(1), CONFIG, keep=2)
    with torch.no_grad():
        model.blocks[1].mlp.c_fc.weight[3, 2] = float("inf")
    with pytest.raises(
        NonFiniteError,
        match=r"ckpt_000002: not saved: parameter 'blocks.1.mlp.c_fc.weight' holds "
        r"non-finite values \(1 inf of 512 values\) at step 2.*Last good checkpoint: .*ckpt_000001",
    ):
        save_checkpoint(run, model, opts, tiny_state(2), CONFIG, keep=2)  # fmt: skip
    model, opts = tiny_model_and_optimizers()
    opts[0].state[model.lm_head.weight]["exp_avg_sq"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"optimizer 0 \(Adam\) state 'exp_avg_sq' of 'lm_head.weight'"):
        save_checkpoint(run, model, opts, tiny_state(2), CONFIG, keep=2)
    assert ckpt_dirs(run) == ["ckpt_000001"] and (run / "LATEST").read_text() == "ckpt_000001\n"


def test_last_finite_checkpoint_skips_tampered_ones(tmp_path):
    run = tmp_path / "run"
    model, opts = tiny_model_and_optimizers()
    for step in (1, 2, 3):
        save_checkpoint(run, model, opts, tiny_state(step), CONFIG, keep=3)
    assert last_finite_checkpoint(run) == run / "ckpt_000003"
    weights = safetensors.torch.load_file(str(run / "ckpt_000003" / "model.safetensors"))
    weights["wte.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(weights, str(run / "ckpt_000003" / "model.safetensors"))
    states = torch.load(run / "ckpt_000002" / "optimizer.pt", weights_only=True)
    next(iter(states[0]["state"].values()))["exp_avg"].fill_(float("inf"))
    torch.save(states, run / "ckpt_000002" / "optimizer.pt")
    assert last_finite_checkpoint(run) == run / "ckpt_000001"


def test_divergence_with_save_every_1_names_a_finite_checkpoint_that_resumes(corpus):
    """The step that blows the weights up has a finite loss; the save right after it must refuse, and the named
    last good checkpoint must hold finite weights and resume."""
    calls = {"n": 0}

    def blow_up(opt, args, kwargs):
        if isinstance(opt, torch.optim.Adam):
            calls["n"] += 1
            if calls["n"] == 1 + 5:  # one untimed warm-up step, then the 5th real step
                with torch.no_grad():
                    opt.param_groups[0]["params"][0].mul_(float("inf"))

    handle = register_optimizer_step_post_hook(blow_up)
    try:
        out = run_entry(train.main, tiny_args(corpus, "div", "--save-every", "1"))
    finally:
        handle.remove()
    line = out.error_line()
    run = corpus["root"] / "runs" / "div"
    assert "non-finite" in line and "diverged" in line, line
    named = line.split("Last good checkpoint: ")[1].split(". ")[0]
    assert named == str(run / "ckpt_000004"), line
    for name in ckpt_dirs(run):  # nothing non-finite was ever written
        weights = safetensors.torch.load_file(str(run / name / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), name
    resumed = run_entry(train.main, ["--resume", named, "--run-name", "div2"])
    assert resumed.status == 0, resumed.stderr
    assert all(
        torch.isfinite(p).all()
        for p in load_model(corpus["root"] / "runs" / "div2" / "ckpt_000008").parameters()
    )


def test_resume_refuses_non_finite_weights_and_moments_naming_the_tensor(corpus):
    assert run_entry(train.main, tiny_args(corpus, "nf", "--save-every", "4")).status == 0
    ckpt = corpus["root"] / "runs" / "nf" / "ckpt_000004"
    weights = safetensors.torch.load_file(str(ckpt / "model.safetensors"))
    original = {k: v.clone() for k, v in weights.items()}
    weights["blocks.0.mlp.c_proj.weight"][1, 1] = float("-inf")
    safetensors.torch.save_file(weights, str(ckpt / "model.safetensors"))
    line = run_entry(train.main, ["--resume", str(ckpt), "--run-name", "nf2"]).error_line()
    assert (
        f"{ckpt / 'model.safetensors'}: tensor 'blocks.0.mlp.c_proj.weight' holds non-finite values" in line
    )
    safetensors.torch.save_file(original, str(ckpt / "model.safetensors"))

    states = torch.load(ckpt / "optimizer.pt", weights_only=True)
    next(iter(states[0]["state"].values()))["exp_avg"][0, 0] = float("nan")
    torch.save(states, ckpt / "optimizer.pt")
    line = run_entry(train.main, ["--resume", str(ckpt), "--run-name", "nf3"]).error_line()
    assert f"{ckpt / 'optimizer.pt'}: optimizer 0 (Adam): 'exp_avg' of " in line and "non-finite" in line
    model = load_model(ckpt)
    optimizers = train.build_optimizers(model, train.parse_config(["--resume", str(ckpt)]))
    with pytest.raises(
        CheckpointError, match=r"'exp_avg' of 'wte.weight' holds non-finite values \(1 nan of"
    ):
        load_training_state(ckpt, optimizers, model=model)  # with the model, the parameter is named


@pytest.mark.gpu
def test_a_cuda_run_round_trips_its_cuda_rng_and_refuses_non_finite_cuda_tensors(tmp_path):
    run = tmp_path / "run"
    model, opts = tiny_model_and_optimizers(device="cuda")
    save_checkpoint(run, model, opts, tiny_state(1), CONFIG, keep=2)
    saved_rng = safetensors.torch.load_file(str(run / "ckpt_000001" / "rng.safetensors"))
    assert set(saved_rng) == {"torch", "cuda"}
    torch.cuda.manual_seed(123)  # move the generator on, then resume
    fresh, fresh_opts = tiny_model_and_optimizers(seed=1, device="cuda")
    load_training_state(run / "ckpt_000001", fresh_opts, model=fresh)
    assert torch.equal(torch.cuda.get_rng_state(), saved_rng["cuda"])
    moment = fresh_opts[0].state[fresh.lm_head.weight]["exp_avg"]
    assert moment.is_cuda and torch.equal(moment.cpu(), opts[0].state[model.lm_head.weight]["exp_avg"].cpu())
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="parameter 'lm_head.weight' holds non-finite values"):
        save_checkpoint(run, model, opts, tiny_state(2), CONFIG, keep=2)
