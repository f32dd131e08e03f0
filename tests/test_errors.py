"""tnt's error policy: every entry point turns a bad file of each kind into one line naming it.

Per file kind (shard, model.safetensors, config.json, state.json, optimizer.pt, rng.safetensors, LATEST): bad
content, non-finite values (or their analogue), an incomplete checkpoint folder, and a full or read-only disk
(the checkpoint files' disk cases are in test_checkpoint_faults.py). Each runs the real entry points in this
process through ``errors.run_cli`` and checks stderr is exactly one ``error: <file>: ...`` line.
"""

import errno
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from faults import remount, run_entry, run_subprocess, tiny_args, tiny_tmpfs
from toy_data import write_corpus

import sample
import train
from analysis.commands import report_main
from data.__main__ import main as data_main
from data.shards import HEADER_BYTES
from decomp import cp_from_model
from decomp.io import load_cp, save_cp
from errors import StorageError, TntError, run_cli
from model import load_model

FAST = ["--val-tokens", "64", "--ranks", "2", "--ks", "1", "--noise-seeds", "1", "--n-tokens", "1",
        "--steer-sequences", "1", "--als-iters", "2", "--no-progress", "--no-readable"]  # fmt: skip


# ------------------------------------------------------------------ the policy itself


def _raise(exc):
    def main(argv=None):
        raise exc

    return main


def test_run_cli_prints_anticipated_failures_on_one_line_and_keeps_bugs_loud(capsys):
    assert run_cli(_raise(TntError("a.json: field 'x' must be an integer,\n got 'y'"))) == 1
    assert capsys.readouterr().err == "error: a.json: field 'x' must be an integer, got 'y'\n"
    assert run_cli(_raise(OSError(errno.ENOSPC, "No space left on device")), status=2) == 2
    assert capsys.readouterr().err == "error: no space left on device\n"
    assert run_cli(_raise(PermissionError(errno.EACCES, "Permission denied", "/x/y"))) == 1
    assert capsys.readouterr().err == "error: /x/y: permission denied\n"
    assert run_cli(_raise(SystemExit("no train shards match 'a*'"))) == 1
    assert capsys.readouterr().err == "error: no train shards match 'a*'\n"
    assert run_cli(_raise(SystemExit(143))) == 143
    assert run_cli(lambda argv=None: 0) == 0 and run_cli(lambda argv=None: {"a": 1}) == 0
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_cli(_raise(KeyError("micro_step")))
    with pytest.raises(OSError):  # an OSError about neither a file nor storage is not anticipated
        run_cli(_raise(OSError(errno.ECONNRESET, "Connection reset by peer")))


# ------------------------------------------------------------------ a trained run to break


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    corpus = write_corpus(root / "data")
    assert run_entry(train.main, tiny_args(corpus, "base", "--save-every", "4")).status == 0
    return {"corpus": corpus, "ckpt": corpus["root"] / "runs" / "base" / "ckpt_000004"}


@pytest.fixture
def run(base, tmp_path):
    """A copy of the base run's step-4 checkpoint in its own run folder (LATEST -> ckpt_000004)."""
    folder = tmp_path / "run"
    shutil.copytree(base["ckpt"], folder / "ckpt_000004")
    (folder / "LATEST").write_text("ckpt_000004\n")
    return folder


def resume(run, tmp_path):
    return train.main, [
        "--resume",
        str(run),
        "--out-root",
        str(tmp_path / "out"),
        "--run-name",
        "r",
        "--steps",
        "5",
    ]


def sampler(run, tmp_path):
    return sample.main, [str(run), "--tokens", "2"]


def analysis(run, tmp_path):
    return report_main, [str(run), "--out", str(tmp_path / "report"), *FAST]


MODEL_READERS = [resume, sampler, analysis]


def expect(entries, run, tmp_path, *fragments):
    """Each entry point fails with one error line holding every fragment."""
    for entry in entries:
        main, argv = entry(run, tmp_path)
        line = run_entry(main, argv).error_line()
        for fragment in fragments:
            assert str(fragment) in line, f"{entry.__name__}: {fragment!r} not in {line!r}"


def edit_json(path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def edit_tensors(path, change):
    tensors = safetensors.torch.load_file(str(path))
    change(tensors)
    safetensors.torch.save_file(tensors, str(path))


def ckpt(run):
    return run / "ckpt_000004"


# ------------------------------------------------------------------ shard


def shard_copy(base, tmp_path, data: bytes | None = None):
    src = base["corpus"]["root"] / "syn_train_000000.bin"
    dst = tmp_path / "shards" / "bad_train_000000.bin"
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(src.read_bytes() if data is None else data)
    return dst


def shard_readers(base, tmp_path, shard):
    corpus = {**base["corpus"], "root": tmp_path}
    return [
        (data_main, ["check", str(shard)]),
        (train.main, tiny_args(corpus, "fresh", "--train-files", str(shard), "--steps", "1")),
        (report_main, [str(base["ckpt"]), "--val-files", str(shard), "--out", str(tmp_path / "rep"), *FAST]),
    ]


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda b: b[:1000], "truncated header (1000 bytes"),
        (lambda b: b[:-7], "truncated: header says"),
        (lambda b: np.int32(7).tobytes() + b[4:], "wrong magic number 7"),
        (
            lambda b: b[:HEADER_BYTES] + np.array([60000], "<u2").tobytes() + b[HEADER_BYTES + 2 :],
            "token id 60000 at position 0 is outside the vocabulary",
        ),  # the analogue of a non-finite value
    ],  # fmt: skip
)
def test_bad_shards_are_named_by_every_reader(base, tmp_path, mutation, message):
    shard = shard_copy(base, tmp_path)
    shard.write_bytes(mutation(shard.read_bytes()))
    for main, argv in shard_readers(base, tmp_path, shard):
        line = run_entry(main, argv).error_line()
        assert f"{shard}: {message}" in line, (main.__module__, line)


def test_an_interrupted_shard_write_leaves_only_a_hidden_temporary_that_no_glob_picks(base, tmp_path):
    shard = shard_copy(base, tmp_path)
    shard.rename(shard.with_name(f".{shard.name}.x1y2.tmp"))  # what a kill -9 inside write_shard leaves
    corpus = {**base["corpus"], "root": tmp_path}
    argv = tiny_args(corpus, "fresh", "--train-files", str(shard.parent / "*_train_*.bin"))
    assert "no train shards match" in run_entry(train.main, argv).error_line()


def test_prepare_on_a_full_or_read_only_disk_fails_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    text = tmp_path / "doc.txt"
    text.write_text("To be, or not to be, that is the question. " * 50)
    out = tmp_path / "out"
    real_fsync = os.fsync

    def full(fd):  # the first shard's write meets a full disk
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    line = run_entry(
        data_main, ["prepare", str(text), "--out", str(out), "--name", "doc", "--quiet"]
    ).error_line()
    monkeypatch.undo()
    assert line.startswith(f"error: {out}/.doc-prepare-") and line.endswith(
        "doc_train_000000.bin: no space left on device"
    )
    assert list(out.iterdir()) == []  # the staging folder and its temporary file are gone
    with tiny_tmpfs(tmp_path) as mnt:
        if mnt is None:
            pytest.skip("mounting a tmpfs is not permitted here")
        assert remount(mnt, "ro")
        try:
            out = run_entry(data_main, ["prepare", str(text), "--out", str(mnt / "o"), "--quiet"])
        finally:
            remount(mnt, "rw")
        assert out.error_line() == f"error: {mnt / 'o'}: read-only file system"


# ------------------------------------------------------------------ model.safetensors


def test_bad_weights_are_named_by_every_reader(run, tmp_path):
    path = ckpt(run) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect(MODEL_READERS, run, tmp_path, f"{path}: not a readable safetensors file")
    path.write_bytes(data)
    edit_tensors(path, lambda t: t.update({"lm_head.weight": t["lm_head.weight"][:, :5].contiguous()}))
    expect(
        MODEL_READERS,
        run,
        tmp_path,
        f"{path}: tensor 'lm_head.weight' has shape (64, 5), config.json implies",
    )


def test_non_finite_weights_are_refused_by_every_reader_naming_the_tensor(run, tmp_path):
    path = ckpt(run) / "model.safetensors"
    edit_tensors(path, lambda t: t["blocks.1.attn.c_qkv.weight"].__setitem__((0, 0), float("nan")))
    expect(
        MODEL_READERS, run, tmp_path, f"{path}: tensor 'blocks.1.attn.c_qkv.weight' holds non-finite values"
    )


@pytest.mark.parametrize(
    "name", ["model.safetensors", "config.json", "optimizer.pt", "rng.safetensors", "state.json"]
)
def test_an_incomplete_checkpoint_folder_is_refused(run, tmp_path, name):
    (ckpt(run) / name).unlink()
    if name in ("model.safetensors", "config.json"):
        expect(MODEL_READERS, run, tmp_path, f"{ckpt(run)}: incomplete checkpoint folder (missing {name})")
    else:  # the trainer names the folder when it resolves it with CHECKPOINT_FILES, else the missing file
        main, argv = resume(run, tmp_path)
        line = run_entry(main, argv).error_line()
        assert (
            f"{ckpt(run)}: incomplete checkpoint folder (missing {name})" in line
            or f"{name}: file not found" in line
        )


# ------------------------------------------------------------------ config.json


def test_bad_model_fields_in_config_json_name_the_file(run, tmp_path):
    path = ckpt(run) / "config.json"
    edit_json(path, lambda c: c["model"].update(n_layer="1"))
    expect(MODEL_READERS, run, tmp_path, f"{path}: GPTConfig.n_layer must be a positive integer, got '1'")
    edit_json(path, lambda c: c["model"].update(n_layer=2, value_embeds="no"))
    expect(MODEL_READERS, run, tmp_path, f"{path}: GPTConfig.value_embeds must be true or false, got 'no'")


def test_out_of_range_vocabulary_ids_name_the_file(run, tmp_path):
    path = ckpt(run) / "config.json"
    edit_json(path, lambda c: c["vocab"]["token_ids"].__setitem__(3, 70000))
    expect(MODEL_READERS, run, tmp_path, f"{path}: field 'vocab.token_ids' holds ids outside the GPT-2 range")


def test_non_finite_or_binary_config_json_is_refused(run, tmp_path):
    path = ckpt(run) / "config.json"
    path.write_text(path.read_text().replace('"rope_base": 10000.0', '"rope_base": NaN'))
    expect(MODEL_READERS, run, tmp_path, f"{path}: not valid JSON (NaN is not a JSON number)")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    expect(MODEL_READERS, run, tmp_path, f"{path}: not a text file")


def test_wrong_types_in_the_saved_train_settings_are_refused_at_load_time(run, tmp_path):
    """Needs train.parse_args to read the settings with training.checkpoint.saved_train_settings."""
    path = ckpt(run) / "config.json"
    edit_json(path, lambda c: c["train"].update(seq_len="16"))
    expect([resume], run, tmp_path, f"{path}: field 'train.seq_len' must be an integer, got '16'")
    edit_json(path, lambda c: c["train"].update(seq_len=16, adam_betas=[0.9]))
    expect([resume], run, tmp_path, f"{path}: field 'train.adam_betas' must be a list of 2 values")


# ------------------------------------------------------------------ state.json


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(step=-1), "field 'step' must be >= 0, got -1"),
        (lambda s: s.update(step="4"), "field 'step' must be an integer, got '4'"),
        (lambda s: s["loader"].pop("micro_step"), "missing field 'loader.micro_step'"),
        (
            lambda s: s["loader"].update(grad_accum=True),
            "field 'loader.grad_accum' must be an integer, got True",
        ),
        (lambda s: s.update(total_steps=2), "field 'total_steps' must be >= 4, got 2"),
        (lambda s: s.update(loader=[4, 0]), "field 'loader' must be an object"),
    ],
)
def test_bad_state_json_is_refused_naming_the_field(run, tmp_path, change, message):
    path = ckpt(run) / "state.json"
    edit_json(path, change)
    expect([resume], run, tmp_path, f"{path}: {message}")


def test_non_finite_state_json_is_refused(run, tmp_path):
    path = ckpt(run) / "state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"train_time_ms": float("inf")}))
    expect([resume], run, tmp_path, f"{path}: not valid JSON (Infinity is not a JSON number)")


# ------------------------------------------------------------------ optimizer.pt


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if ever unpickled


def test_a_pickle_payload_in_optimizer_pt_is_refused_without_running_it(run, tmp_path):
    path, marker = ckpt(run) / "optimizer.pt", tmp_path / "pwned"
    torch.save(
        [{"state": {}, "param_groups": []}, _Payload(marker)], path, pickle_protocol=pickle.HIGHEST_PROTOCOL
    )
    main, argv = resume(run, tmp_path)
    line = run_entry(main, argv).error_line()
    assert line.startswith(f"error: {path}: refused: it holds Python objects other than tensors")
    assert "weights_only" not in line and not marker.exists()


def test_bad_optimizer_pt_is_refused_naming_the_parameter(run, tmp_path):
    path = ckpt(run) / "optimizer.pt"
    good = path.read_bytes()
    path.write_bytes(good[:200])
    expect([resume], run, tmp_path, f"{path}: unreadable optimizer state (truncated or corrupt")
    path.write_bytes(good)
    states = torch.load(path, weights_only=True)
    states[1]["state"][0]["momentum_buffer"] = torch.zeros(3, 3)  # Muon's first matrix, wrong shape
    torch.save(states, path)
    expect([resume], run, tmp_path, f"{path}: optimizer 1 (", "'momentum_buffer' of ", "has shape (3, 3)")
    path.write_bytes(good)
    states = torch.load(path, weights_only=True)
    states[0]["param_groups"][0]["lr"] = "fast"
    torch.save(states, path)
    expect([resume], run, tmp_path, f"{path}: optimizer 0 (Adam): parameter group 0: 'lr' is str")
    states[0]["param_groups"][0]["lr"] = 0.1
    next(iter(states[0]["state"].values()))["exp_avg_sq"][0, 0] = float("inf")
    torch.save(states, path)
    expect([resume], run, tmp_path, f"{path}: optimizer 0 (Adam): 'exp_avg_sq' of", "holds non-finite values")


# ------------------------------------------------------------------ rng.safetensors


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(cpu=t.pop("torch")), "missing tensor 'torch'"),
        (
            lambda t: t.update(torch=t["torch"].float()),
            "tensor 'torch' must be a uint8 vector, got torch.float32",
        ),
        (lambda t: t.update(torch=t["torch"][:10].clone()), "tensor 'torch' holds 10 bytes"),
    ],
)
def test_bad_rng_state_is_refused(run, tmp_path, change, message):
    path = ckpt(run) / "rng.safetensors"
    edit_tensors(path, change)
    expect([resume], run, tmp_path, f"{path}: {message}")


# ------------------------------------------------------------------ LATEST


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x9f\x92\x96ckpt", "not a text file (binary data"),
        (b"\n\n", "empty"),
        (b"ckpt_000004\nckpt_000008\n", "more than one line"),
        (b"../../etc\n", "'../../etc' is not a checkpoint folder name"),
        (b"ckpt_999999\n", "names 'ckpt_999999', which is not a checkpoint folder"),
    ],
)
def test_bad_latest_is_refused_by_every_reader(run, tmp_path, content, message):
    (run / "LATEST").write_bytes(content)
    expect(MODEL_READERS, run, tmp_path, f"{run / 'LATEST'}: {message}")


# ------------------------------------------------------------------ reports and exports on a full disk


def test_an_analysis_report_on_a_full_or_read_only_disk_fails_in_one_line(run, tmp_path, monkeypatch):
    out = tmp_path / "report"
    real_fsync = os.fsync

    def full(fd):
        if ".png." in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    line = run_entry(report_main, [str(run), "--out", str(out), *FAST]).error_line()
    monkeypatch.undo()
    assert line.startswith(f"error: {out / 'figures'}/") and line.endswith(".png: no space left on device")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    with tiny_tmpfs(tmp_path) as mnt:
        if mnt is None:
            pytest.skip("mounting a tmpfs is not permitted here")
        assert remount(mnt, "ro")
        try:
            line = run_entry(report_main, [str(run), "--out", str(mnt / "rep"), *FAST]).error_line()
        finally:
            remount(mnt, "rw")
        assert line.startswith(f"error: {mnt / 'rep'}") and line.endswith("read-only file system")


def test_a_decomposition_export_on_a_full_disk_leaves_the_previous_pair(base, tmp_path, monkeypatch):
    cp = cp_from_model(load_model(base["ckpt"]), layer=0)
    path = tmp_path / "layer0.safetensors"
    save_cp(path, cp, {"note": "first"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=f"^{path}: no space left on device$"):
        save_cp(path, cp, {"note": "second"})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_cp(path)[1] == {"note": "first"}


# ------------------------------------------------------------------ the real command lines


def test_the_command_lines_print_one_line_not_a_traceback(run, base, tmp_path):
    """Real processes: the ``__main__`` blocks use the policy (each run costs ~2 s of imports)."""
    (ckpt(run) / "rng.safetensors").write_bytes(b"garbage")
    out = run_subprocess(["train.py", "--resume", str(run), "--out-root", str(tmp_path), "--run-name", "x"])
    assert out.error_line().startswith(
        f"error: {ckpt(run) / 'rng.safetensors'}: not a readable safetensors file"
    )
    (run / "LATEST").write_bytes(b"\xff\xfe")
    assert "not a text file" in run_subprocess(["sample.py", str(run)]).error_line()
    out = run_subprocess(["-m", "analysis", str(run), "--out", str(tmp_path / "r")])
    assert out.status == 2 and f"{run / 'LATEST'}: not a text file" in out.error_line()
