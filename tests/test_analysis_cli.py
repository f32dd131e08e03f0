"""The report command lines end to end on tiny saved checkpoints: files written, links valid, clear errors."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.commands import diff_main, report_main
from data.comedies import FOLIO_COMEDIES, comedy_works
from data.shakespeare import CorpusError
from data.shards import write_shard
from data.tokenizer import get_encoding
from data.vocab import CompactVocab
from model import GPT, GPTConfig, save_model

REPO = Path(__file__).resolve().parents[1]
VOCAB = CompactVocab(tuple(range(256, 320)))  # 64 GPT-2 ids (common word pieces) as model ids 0..63
SEQ = 16
FAST = [
    "--val-tokens",
    "64",
    "--ranks",
    "2,4",
    "--ks",
    "1",
    "--noise-seeds",
    "1",
    "--n-tokens",
    "2",
    "--no-progress",
]


def save_checkpoint(root: Path, name: str, seed: int = 0, **cfg) -> Path:
    """runs-style folder root/name with LATEST -> ckpt_000001 holding a random GPT and its config."""
    torch.manual_seed(seed)
    config = dict(vocab_size=64, n_layer=2, n_head=2, d_model=16, mlp="bilinear", mlp_hidden=8)
    model = GPT(GPTConfig(**{**config, **cfg}))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("c_proj.weight") or pname == "lm_head.weight":
                p.normal_(0, 0.5)
    run = root / name
    extra = {"vocab": VOCAB.to_config(), "train": {"val_files": str(root / "tiny_val_*.bin"), "seq_len": SEQ}}
    save_model(model, run / "ckpt_000001", extra_config=extra)
    (run / "LATEST").write_text("ckpt_000001\n")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    write_shard(root / "tiny_val_000000.bin", rng.integers(256, 320, size=400))
    save_checkpoint(root, "base")
    save_checkpoint(root, "finetuned", seed=1)
    return root


def referenced_files(index: Path) -> list[str]:
    return re.findall(r'src="([^"]+)"', index.read_text(encoding="utf-8"))


def test_report_writes_html_and_the_pngs_it_references(runs, tmp_path, capsys):
    out = tmp_path / "report"
    token = get_encoding().decode([300])
    assert report_main([str(runs / "base"), "--out", str(out), "--tokens", token, *FAST]) == 0
    index = out / "index.html"
    assert capsys.readouterr().out.strip().endswith(str(index))
    pngs = referenced_files(index)
    assert len(pngs) >= 10 and all(not Path(p).is_absolute() for p in pngs)
    for p in pngs:
        data = (out / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
    page = index.read_text(encoding="utf-8")
    for section in ("Layer 0", "Layer 1", "Logit lens", "noise floor"):
        assert section in page


def test_multilinear_model_gets_the_cp_parts_and_a_note(runs, tmp_path):
    run = save_checkpoint(runs, "multi", mlp="multilinear", mlp_order=3)
    out = tmp_path / "multi"
    assert report_main([str(run), "--out", str(out), *FAST]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "multilinear of order 3" in page and "rank_sweep.png" in page
    assert all((out / p).is_file() for p in referenced_files(out / "index.html"))


def test_clear_errors_for_missing_and_non_bilinear_checkpoints(runs, tmp_path, capsys):
    assert report_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    run = save_checkpoint(runs, "relu", mlp="relu2", mlp_hidden=None)
    assert report_main([str(run), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "no bilinear or multilinear MLP layer" in err and "relu2" in err
    assert (
        report_main([str(runs / "base"), "--out", str(tmp_path / "o"), "--tokens", "two tokens here", *FAST])
        == 2
    )
    assert "not one" in capsys.readouterr().err


def test_diff_report(runs, tmp_path):
    out = tmp_path / "diff"
    args = [
        str(runs / "base"),
        str(runs / "finetuned"),
        "--out",
        str(out),
        "--val-tokens",
        "64",
        "--positions",
        "8",
    ]
    assert diff_main([*args, "--rank", "2", "--sweep", "1,2", "--no-progress"]) == 0
    pngs = referenced_files(out / "index.html")
    assert len(pngs) >= 5 and all((out / p).is_file() for p in pngs)
    assert "Weight-based diff" in (out / "report.md").read_text(encoding="utf-8")


def test_help_explains_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "analysis", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    assert "index.html" in done.stdout and "--val-tokens" in done.stdout and "--ranks" in done.stdout


def test_comedies_come_from_the_training_split_only():
    try:
        train, val = comedy_works()
    except CorpusError as e:
        pytest.skip(str(e))
    assert len(train) + len(val) == len(FOLIO_COMEDIES) == 14
    assert {w.name for w in val} == {
        "alls_well_that_ends_well",
        "measure_for_measure",
        "two_gentlemen_of_verona",
    }
    assert "hamlet" not in {w.name for w in train}
