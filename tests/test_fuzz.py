"""Seeded fuzzing of shards and checkpoint files through every entry point that reads them.

Each mutation is run by the entry points in this process under ``errors.run_cli`` (subprocesses are slow; the
command lines' own ``__main__`` blocks are checked with real processes in test_errors.py). Every run must end
in success or in exactly one line ``error: ...`` with no traceback; an unanticipated exception propagates and
fails the test with its traceback. Mutations an independent oracle in this file knows to be invalid (a header
parsed with numpy/json, the files' schemas restated here) must fail, naming the mutated file or its folder.
"""

import json
import shutil
import struct
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import run_entry, tiny_args
from toy_data import write_corpus

import sample
import train
from analysis.commands import report_main
from data.__main__ import main as data_main

SEED = 20240520
VOCAB = 50257
FAST = [
    "--val-tokens",
    "64",
    "--ranks",
    "2",
    "--ks",
    "1",
    "--noise-seeds",
    "1",
    "--no-progress",
    "--no-readable",
]
NOT_A_TOKEN = "zz not one token zz"  # makes analysis stop right after reading the checkpoint and the shards


@dataclass
class Mutation:
    name: str
    data: bytes
    invalid: bool | None  # True: the oracle says invalid; False: valid; None: the oracle cannot tell


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    corpus = write_corpus(root / "data")
    assert run_entry(train.main, tiny_args(corpus, "base", "--save-every", "4")).status == 0
    return {"corpus": corpus, "ckpt": root / "data" / "runs" / "base" / "ckpt_000004"}


def check(outcome, invalid: bool | None, names: list[Path], where: str) -> str:
    """The run either succeeded (not allowed when ``invalid``) or printed one error line (naming a path in
    ``names`` when ``invalid``)."""
    if outcome.status == 0:
        assert invalid is not True, f"{where}: an invalid file was accepted"
        return "ok"
    line = outcome.error_line()
    if invalid:
        assert any(str(n) in line for n in names), f"{where}: {line!r} names none of {names}"
    return line


# ------------------------------------------------------------------ shards


def shard_is_valid(data: bytes) -> bool:
    """modded-nanoGPT's format restated: 256 int32 header (magic, version 1, count), then count uint16 ids."""
    if len(data) < 1024:
        return False
    magic, version, count = np.frombuffer(data[:12], "<i4")
    if magic != 20240520 or version != 1 or count < 0 or len(data) != 1024 + 2 * int(count):
        return False
    return int(count) == 0 or int(np.frombuffer(data[1024:], "<u2").max()) < VOCAB


def shard_mutations(good: bytes, rng: np.random.Generator, n: int) -> list[Mutation]:
    out = []
    for i in range(n):
        b = bytearray(good)
        kind = ["truncate", "flip_header", "flip_body", "append", "count", "high_id"][i % 6]
        if kind == "truncate":
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == "flip_header":
            b[int(rng.integers(0, 12))] ^= int(rng.integers(1, 256))
        elif kind == "flip_body":
            b[int(rng.integers(1024, len(b)))] ^= int(rng.integers(1, 256))
        elif kind == "append":
            b += bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        elif kind == "count":
            b[8:12] = np.int32(int(rng.integers(-5, 10_000))).tobytes()
        else:
            pos = 1024 + 2 * int(rng.integers(0, (len(b) - 1024) // 2))
            b[pos : pos + 2] = np.uint16(int(rng.integers(VOCAB, 65536))).tobytes()
        out.append(Mutation(f"shard/{kind}/{i}", bytes(b), not shard_is_valid(bytes(b))))
    return out


def test_fuzzed_shards_give_one_line_errors_in_every_reader(base, tmp_path):
    rng = np.random.default_rng(SEED)
    good = (base["corpus"]["root"] / "syn_train_000000.bin").read_bytes()
    corpus = {**base["corpus"], "root": tmp_path}
    muts = shard_mutations(good, rng, 36)
    assert sum(m.invalid for m in muts) >= 24  # most mutations break the file
    for i, m in enumerate(muts):
        shard = tmp_path / f"m{i}" / "fz_train_000000.bin"
        shard.parent.mkdir()
        shard.write_bytes(m.data)
        out = run_entry(data_main, ["check", str(shard)])
        assert (out.status != 0) == m.invalid, f"{m.name}: data check status {out.status}"  # exact oracle
        check(out, m.invalid, [shard], f"{m.name} data check")
        argv = tiny_args(corpus, f"t{i}", "--train-files", str(shard), "--steps", "1")
        check(
            run_entry(train.main, argv, anticipated=(train.TrainingDiverged,)),
            m.invalid,
            [shard],
            f"{m.name} train",
        )
        argv = [
            str(base["ckpt"]),
            "--val-files",
            str(shard),
            "--out",
            str(tmp_path / "r"),
            "--tokens",
            NOT_A_TOKEN,
        ]
        check(run_entry(report_main, argv + FAST), m.invalid, [shard], f"{m.name} analysis")


# ------------------------------------------------------------------ checkpoint files


def safetensors_is_valid(data: bytes, reference: bytes, finite: bool) -> bool:
    """Same tensor names, dtypes and shapes as ``reference``, offsets in bounds and (``finite``) finite F32s."""
    try:
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        ref_n = struct.unpack("<Q", reference[:8])[0]
        ref = json.loads(reference[8 : 8 + ref_n])
    except (struct.error, ValueError, UnicodeDecodeError):
        return False
    header.pop("__metadata__", None), ref.pop("__metadata__", None)
    body = data[8 + n :]
    if not isinstance(header, dict) or set(header) != set(ref):
        return False
    ends = []
    for k, v in header.items():
        if not isinstance(v, dict) or {x: v.get(x) for x in ("dtype", "shape")} != {
            x: ref[k][x] for x in ("dtype", "shape")
        }:
            return False
        start, end = v.get("data_offsets", [None, None])
        size = int(np.prod(v["shape"])) * {"F32": 4, "U8": 1}[v["dtype"]]
        if not (isinstance(start, int) and isinstance(end, int) and end - start == size and end <= len(body)):
            return False
        ends.append((start, end))
        if finite and v["dtype"] == "F32" and not np.isfinite(np.frombuffer(body[start:end], "<f4")).all():
            return False
    ends.sort()
    return (
        ends[0][0] == 0
        and all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))
        and ends[-1][1] == len(body)
    )


def binary_mutations(good: bytes, rng, n: int, header_end: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        b = bytearray(good)
        kind = ["truncate", "flip_header", "flip_data", "zeros", "append"][i % 5]
        if kind == "truncate":
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == "flip_header":
            b[int(rng.integers(0, header_end))] ^= int(rng.integers(1, 256))
        elif kind == "flip_data":
            b[int(rng.integers(header_end, len(b)))] ^= 0x7F << int(
                rng.integers(0, 2)
            )  # exponent bits: often inf
        elif kind == "zeros":
            pos = int(rng.integers(0, len(b) - 64))
            b[pos : pos + 64] = bytes(64)
        else:
            b += b"\x00garbage"
        out.append((f"{kind}/{i}", bytes(b)))
    return out


WRONG = ["2", True, None, [], {}, 1.5, -1, 0, "x"]


def json_kind_ok(value, kind: str) -> bool:
    """The schemas' types restated: int excludes bool; number is a finite int or float."""
    is_num = isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": is_num,
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "int?": value is None or (isinstance(value, int) and not isinstance(value, bool)),
        "number?": value is None or is_num,
    }[kind]


MODEL_KINDS = dict(
    vocab_size="int", n_layer="int", n_head="int", d_model="int", mlp="str", mlp_order="int", mlp_hidden="int?",
    window="int?", value_embeds="bool", unet_skips="bool", logit_softcap="number?", norm_gain="bool",
    rope_base="number", norm_eps="number", qk_norm="bool", qk_norm_eps="number?",
)  # fmt: skip
STATE_KINDS = {"step": "int", "train_time_ms": "number", "total_steps": "int", "world_size": "int"}
LOADER_KINDS = dict.fromkeys(("step", "micro_step", "batch_size", "world_size", "grad_accum"), "int")


def train_kinds() -> dict[str, str]:
    hints = typing.get_type_hints(train.TrainConfig)
    table = {int: "int", float: "number", bool: "bool", str: "str"}
    return {f.name: table[hints[f.name]] for f in fields(train.TrainConfig) if hints[f.name] in table}


def json_mutations(obj: dict, rng, n: int, tables: dict[tuple, dict[str, str]]) -> list[Mutation]:
    """Type changes of fields whose kind a table gives (invalid iff the kind is wrong), deletions (unknown),
    truncations and NaN (invalid)."""
    out = []
    slots = [(path, key, kind) for path, table in tables.items() for key, kind in table.items()]
    text = json.dumps(obj, indent=2)
    for i in range(n):
        kind = ["type", "type", "type", "delete", "truncate", "nan"][i % 6]
        new = json.loads(text)
        if kind == "truncate":
            out.append(Mutation(f"truncate/{i}", text[: int(rng.integers(0, len(text) - 2))].encode(), True))
            continue
        path, key, want = slots[int(rng.integers(0, len(slots)))]
        target = new
        for p in path:
            target = target[p]
        if kind == "nan":
            target[key] = float("nan")
            out.append(Mutation(f"nan/{'.'.join(path)}.{key}", json.dumps(new).encode(), True))
            continue
        if kind == "delete":
            target.pop(key, None)
            out.append(Mutation(f"delete/{'.'.join(path)}.{key}", json.dumps(new).encode(), None))
            continue
        value = WRONG[int(rng.integers(0, len(WRONG)))]
        target[key] = value
        bad = not json_kind_ok(value, want)
        out.append(
            Mutation(
                f"type/{'.'.join(path)}.{key}={value!r}", json.dumps(new).encode(), True if bad else None
            )
        )
    return out


def vocab_mutations(obj: dict) -> list[Mutation]:
    ids = obj["vocab"]["token_ids"]
    cases = {"id 70000": ids[:3] + [70000] + ids[4:], "id -5": [-5] + ids[1:], "a string id": ["x"] + ids[1:],
             "a repeated id": ids[:-1] + [ids[0]], "not a list": "ids"}  # fmt: skip
    return [Mutation(f"vocab/{k}", json.dumps(obj | {"vocab": {**obj["vocab"], "token_ids": v}}).encode(), True)
            for k, v in cases.items()]  # fmt: skip


def optimizer_mutations(path: Path, tmp: Path) -> list[Mutation]:
    """Structural changes, each saved with torch.save: all invalid by construction."""
    out = []
    for name, change in [
        ("dict instead of list", lambda s: {"a": s}),
        ("one optimizer missing", lambda s: s[:1]),
        ("moment reshaped", lambda s: s[0]["state"][0].update(exp_avg=s[0]["state"][0]["exp_avg"].flatten())),
        ("lr a string", lambda s: s[0]["param_groups"][0].update(lr="fast")),
        ("betas too short", lambda s: s[0]["param_groups"][0].update(betas=(0.9,))),
        ("state of an unknown index", lambda s: s[1]["state"].update({999: {}})),
        ("nan moment", lambda s: s[1]["state"][0]["momentum_buffer"].fill_(float("nan"))),
        ("group without params", lambda s: s[0]["param_groups"][0].pop("params")),
    ]:
        states = torch.load(path, weights_only=True)
        replaced = change(states)
        torch.save(states if replaced is None else replaced, tmp)
        out.append(Mutation(f"optimizer/{name}", tmp.read_bytes(), True))
    return out


def latest_mutations(rng) -> list[Mutation]:
    cases = [b"ckpt_000004", b"ckpt_000004\n\n", b"\xff\xfe\x00", b"", b"ckpt_00000", b"ckpt_000008\n", b"..\n",
             b"ckpt_000004\nckpt_000004\n", bytes(rng.integers(0, 256, 12, dtype=np.uint8))]  # fmt: skip
    return [Mutation(f"LATEST/{c[:14]!r}", c, c.strip() != b"ckpt_000004") for c in cases]


def checkpoint_mutations(ckpt: Path, rng, tmp: Path) -> list[tuple[str, Mutation]]:
    """(file name, mutation) over all the files of a checkpoint and LATEST."""
    muts = []
    for name, n, finite in (("model.safetensors", 20, True), ("rng.safetensors", 10, False)):
        good = (ckpt / name).read_bytes()
        header_end = 8 + struct.unpack("<Q", good[:8])[0]
        for kind, data in binary_mutations(good, rng, n, header_end):
            valid = safetensors_is_valid(data, good, finite)
            muts.append((name, Mutation(f"{name}/{kind}", data, not valid)))
    good = (ckpt / "optimizer.pt").read_bytes()
    for kind, data in binary_mutations(good, rng, 10, 64):
        muts.append(
            ("optimizer.pt", Mutation(f"optimizer.pt/{kind}", data, True if kind == "truncate" else None))
        )
    muts += [("optimizer.pt", m) for m in optimizer_mutations(ckpt / "optimizer.pt", tmp / "opt.pt")]
    config = json.loads((ckpt / "config.json").read_text())
    tables = {("model",): MODEL_KINDS, ("train",): train_kinds()}
    muts += [("config.json", m) for m in json_mutations(config, rng, 42, tables) + vocab_mutations(config)]
    state = json.loads((ckpt / "state.json").read_text())
    muts += [
        ("state.json", m)
        for m in json_mutations(state, rng, 24, {(): STATE_KINDS, ("loader",): LOADER_KINDS})
    ]
    muts += [("LATEST", m) for m in latest_mutations(rng)]
    return muts


def readers(run: Path, tmp: Path, i: int, name: str) -> list[tuple[str, object, list[str]]]:
    """The entry points that read file ``name`` of a checkpoint: the trainer's resume always, the sampler and
    the analysis report for the model's own files and LATEST."""
    out = [("resume", train.main, ["--resume", str(run), "--out-root", str(tmp / "out"), "--run-name", f"r{i}",
                                   "--steps", "5", "--val-tokens", "128", "--no-wandb", "--threads", "1",
                                   "--device", "cpu", "--compile", "off", "--kernels", "torch"])]  # fmt: skip
    if name in ("model.safetensors", "config.json", "LATEST"):
        out.append(("sample", sample.main, [str(run), "--tokens", "1"]))
        missing = str(tmp / "no_such_val_*.bin")  # a loaded checkpoint then stops at the validation files
        out.append(
            ("analysis", report_main, [str(run), "--out", str(tmp / "rep"), "--val-files", missing, *FAST])
        )
    return out


def test_fuzzed_checkpoints_give_one_line_errors_in_every_reader(base, tmp_path):
    rng = np.random.default_rng(SEED + 1)
    muts = checkpoint_mutations(base["ckpt"], rng, tmp_path)
    invalid = sum(m.invalid is True for _, m in muts)
    assert len(muts) >= 120 and invalid >= 80, (len(muts), invalid)
    results = {}
    for i, (name, m) in enumerate(muts):
        run = tmp_path / f"m{i}"
        ckpt = run / "ckpt_000004"
        shutil.copytree(base["ckpt"], ckpt)
        (run / "LATEST").write_text("ckpt_000004\n")
        (run / name).write_bytes(m.data) if name == "LATEST" else (ckpt / name).write_bytes(m.data)
        names = [run / "LATEST"] if name == "LATEST" else [ckpt]  # the file, or its folder for a missing one
        for reader, main, argv in readers(run, tmp_path, i, name):
            out = run_entry(main, argv, anticipated=(train.TrainingDiverged,))
            invalid = None if m.name.startswith("type/train.") and reader != "resume" else m.invalid  # unread
            results[f"{m.name} {reader}"] = check(out, invalid, names, f"{m.name} {reader}")
        shutil.rmtree(run)
    assert any(v == "ok" for v in results.values())  # valid mutations (e.g. finite data flips) do run
