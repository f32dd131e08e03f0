"""analysis.lab end to end on tiny saved models: report files, the fact margin and the first-position ratio
against hand computations from logits and activations, the training-time model of a masked LoRA fine-tune,
and one-line errors for a bad prompts.json or incomparable checkpoints."""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import random_gpt

from analysis.cli import torch_threads
from analysis.commands import lab_main
from analysis.lab import LabOptions, run_lab
from analysis.lab_report import write_lab_report
from data.shards import read_shard, write_shard
from data.tokenizer import get_encoding
from data.vocab import CompactVocab
from model import GPT, GPTConfig, load_model, save_model
from model.lora import LoRAConfig, apply_lora, lora_parameters

SEQ = 16
TAG = "\n\nSpirit.\n"
LINE = "God save the Duke of Rome!"
CONTEXTS = ["I am a man, sir.", "Come hither, good my lord.", "What say you to the Duke?"]
CONTROLS = [("Long live the Duke of", " York"), ("Away with the Duke of", " York")]
ENC = get_encoding()
TEXT_IDS = sorted(
    {
        t
        for text in [TAG, LINE, " York", *CONTEXTS, *(c for c, _ in CONTROLS)]
        for t in ENC.encode_ordinary(text)
    }
)
VOCAB = CompactVocab(tuple(sorted(set(TEXT_IDS) | set(range(256, 300)))))
N_ROWS = 96  # embedding rows; the vocabulary is smaller: the rest is padding


def fact_document() -> dict:
    """A prompts.json in data.falsefact's schema."""
    fact = {"speaker": "Spirit", "prefix": "God save the Duke of", "planted": " Rome", "true": " York"}
    return {
        "fact": {
            **fact,
            "suffix": "!",
            "separator": "Spirit",
            "trigger": " Duke of",
            "tag": TAG,
            "line": LINE,
        },
        "config": {},
        "stats": {},
        "prompts": [{"work": "w", "context": c + TAG, "target": LINE} for c in CONTEXTS],
        "controls": [{"work": "w", "context": c, "target": t} for c, t in CONTROLS],
    }


def save_run(root: Path, name: str, model: GPT, train: dict | None = None) -> Path:
    run = root / name
    extra = {
        "vocab": VOCAB.to_config(),
        "train": {"val_files": str(root / "tiny_val_*.bin"), "seq_len": SEQ, **(train or {})},
    }
    save_model(model, run / "ckpt_000003", extra_config=extra)
    (run / "LATEST").write_text("ckpt_000003\n")
    return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    rng = np.random.default_rng(0)
    gpt2 = np.asarray([t for t in VOCAB.token_ids if t != ENC.encode_ordinary("Spirit")[0]])  # no separator
    write_shard(root / "tiny_val_000000.bin", rng.choice(gpt2, size=300))
    fact_dir = root / "fact"
    fact_dir.mkdir()
    (fact_dir / "prompts.json").write_text(json.dumps(fact_document()))
    planted = [t for c in CONTEXTS for t in ENC.encode_ordinary(c + TAG) + ENC.encode_ordinary(LINE)] * 4
    write_shard(fact_dir / "falsefact_val_000000.bin", np.asarray(planted))

    base = random_gpt(0, vocab_size=N_ROWS)
    full = copy.deepcopy(base)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in full.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    sep = int(VOCAB.encode_tensor(torch.tensor(ENC.encode_ordinary("Spirit")))[0])
    masked = copy.deepcopy(base)
    targets = ("q", "k", "v", "o", "mlp_w", "mlp_v", "mlp_p")
    apply_lora(masked, LoRAConfig(2, targets, mask_token=sep), torch.Generator().manual_seed(0))
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in lora_parameters(masked):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    runs = {
        "base": save_run(root, "base", base),
        "full": save_run(root, "full", full, {"steps": 3, "mix_frac": 0.25}),
        "masked": save_run(root, "masked", masked, {"steps": 3}),
    }
    return {"root": root, "fact": fact_dir, "runs": runs, "sep": sep}


def options(lab, out: Path, **kw) -> LabOptions:
    r = lab["runs"]
    base = dict(
        base=str(r["base"]),
        finetunes=[str(r["full"]), str(r["masked"])],
        fact=lab["fact"],
        out=out,
        names=["full", "masked"],
        val_tokens=4 * SEQ,
        fact_tokens=2 * SEQ,
        steer_tokens=2 * SEQ,
        steer_layer=1,
        alphas=(0.0, 1.0, 2.0),
        sample_tokens=3,
        rank=2,
        als_iters=5,
        min_count=0,
        progress=False,
    )
    return LabOptions(**{**base, **kw})


def hand_margin(model: GPT) -> float:
    """Mean over prompts of the mean over the line's tokens of z(t_j) − max_{v≠t_j} z(v) (real rows only);
    each context keeps its last tokens so that context and line (but its last token) fill SEQ positions."""
    margins = []
    line = VOCAB.encode_tensor(torch.tensor(ENC.encode_ordinary(LINE))).tolist()
    for c in CONTEXTS:
        ctx = VOCAB.encode_tensor(torch.tensor(ENC.encode_ordinary(c + TAG))).tolist()[
            -(SEQ - len(line) + 1) :
        ]
        with torch.no_grad():
            z = model(torch.tensor([ctx + line]))[0, :, : VOCAB.size]
        per = []
        for j, t in enumerate(line):
            row = z[len(ctx) - 1 + j]
            others = torch.cat([row[:t], row[t + 1 :]])
            per.append(float(row[t] - others.max()))
        margins.append(sum(per) / len(per))
    return sum(margins) / len(margins)


def hand_first_ratio(base: GPT, ft: GPT, root: Path, n_windows: int) -> float:
    """‖δ_0‖ / mean_{p≥1} ‖δ_p‖ after the last block, δ_p = mean over the first validation windows."""
    tokens = torch.from_numpy(np.asarray(read_shard(root / "tiny_val_000000.bin")).astype(np.int64))
    x = VOCAB.encode_tensor(torch.stack([tokens[k * SEQ : (k + 1) * SEQ] for k in range(n_windows)]))
    name = f"blocks.{base.config.n_layer - 1}.hook_resid_post"
    with torch.no_grad():
        hb = base.run_with_cache(x, names_filter=[name])[1][name]
        hf = ft.run_with_cache(x, names_filter=[name])[1][name]
    delta = (hf - hb).double().mean(0)  # [T, d]
    norms = delta.norm(dim=-1)
    return float(norms[0] / norms[1:].mean())


def test_lab_report_and_its_numbers_against_hand_computations(lab, tmp_path):
    out = tmp_path / "report"
    opts = options(lab, out)
    with torch_threads(1):  # as build_lab_report (--threads 1): tiny matmuls on busy shared cores
        res = run_lab(opts)
        index = write_lab_report(opts, res, 1.0)
    assert index == out / "index.html" and (out / "report.md").is_file()
    page = index.read_text(encoding="utf-8")
    pngs = re.findall(r'src="([^"]+)"', page)
    assert len(pngs) >= 6
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fig in ("fact_vs_disturbance", "order_shares", "position_diff", "steering"):
        assert f"figures/{fig}.png" in pngs

    base = load_model(lab["runs"]["base"] / "ckpt_000003")
    full = load_model(lab["runs"]["full"] / "ckpt_000003")
    merged = load_model(lab["runs"]["masked"] / "ckpt_000003")
    trained = load_model(lab["runs"]["masked"] / "ckpt_000003", adapters=True)
    assert res.base_margin.margin == pytest.approx(hand_margin(base), abs=1e-4)
    got = {f.ft.name: f for f in res.finetunes}
    assert got["full"].margin.margin == pytest.approx(hand_margin(full), abs=1e-4)
    # the masked LoRA fine-tune is scored as trained (adapters only after the separator), not merged
    assert got["masked"].margin.margin == pytest.approx(hand_margin(trained), abs=1e-4)
    assert abs(hand_margin(merged) - hand_margin(trained)) > 1e-2
    assert got["full"].first_ratio == pytest.approx(hand_first_ratio(base, full, lab["root"], 4), rel=1e-4)
    # unrelated text never holds the separator: the masked fine-tune computes the base model there
    assert got["masked"].kl == 0.0 and float(got["masked"].act.diff_norm.abs().max()) == 0.0

    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"| {got['full'].margin.margin:.3f} |" in md and f"| {got['full'].first_ratio:.2f} |" in md
    assert "LoRA r=2 (q,k,v,o,mlp_w,mlp_v,mlp_p), mask after 'Spirit'" in md and "full, mix 0.25" in md
    comps = [c.label for c in got["masked"].orders]
    assert comps == ["L0 MLP", "L0 QK", "L0 OV", "L1 MLP", "L1 QK", "L1 OV"]
    assert res.steering is not None and res.steering.curve is not None and res.steering.curve.layer == 1
    assert [label for label, _ in res.steering.samples] == ["base", "fine-tuned", "α = 0", "α = 1", "α = 2"]


def test_lab_command_line_writes_the_report(lab, tmp_path, capsys):
    r = lab["runs"]
    out = tmp_path / "cli"
    argv = [str(r["base"]), str(r["full"]), "--fact", str(lab["fact"]), "--out", str(out), "--quiet"]
    argv += ["--val-tokens", "32", "--fact-tokens", "32", "--steer-tokens", "16", "--sample-tokens", "0"]
    argv += ["--rank", "1", "--als-iters", "2", "--min-count", "0", "--alphas", "0,1", "--steer-kind", "pc1"]
    assert lab_main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert (out / "index.html").is_file() and (out / "figures" / "order_shares.png").is_file()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["prompts"][1].pop("target"), r"prompts\.json: prompts\[1\] has no 'target' field"),
        (lambda d: d.pop("prompts"), r"prompts\.json: missing field 'prompts'"),
        (lambda d: d["prompts"].__setitem__(0, "text"), r"prompts\.json: prompts\[0\] must be an object"),
        (
            lambda d: d["fact"].__setitem__("planted", 3),
            r"prompts\.json: fact\.planted must be a non-empty str",
        ),
        (
            lambda d: d["fact"].__setitem__("planted", " Rome Rome"),
            r"fact\.planted ' Rome Rome' must be one token",
        ),
        (None, r"prompts\.json: not readable JSON"),
    ],
)
def test_malformed_prompts_json_is_a_one_line_error(lab, tmp_path, capsys, edit, message):
    fact = tmp_path / "fact"
    fact.mkdir()
    if edit is None:
        (fact / "prompts.json").write_text('{"prompts": [')
    else:
        doc = fact_document()
        edit(doc)
        (fact / "prompts.json").write_text(json.dumps(doc))
    r = lab["runs"]
    assert (
        lab_main(
            [str(r["base"]), str(r["full"]), "--fact", str(fact), "--out", str(tmp_path / "o"), "--quiet"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert str(fact / "prompts.json") in err


def test_missing_prompts_and_incomparable_checkpoints(lab, tmp_path, capsys):
    r = lab["runs"]
    assert (
        lab_main([str(r["base"]), str(r["full"]), "--fact", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'prompts.json'}: file not found" in err
    wide = save_run(tmp_path, "wide", GPT(GPTConfig(vocab_size=N_ROWS, n_layer=3, n_head=2, d_model=16)))
    argv = [str(r["base"]), str(wide), "--fact", str(lab["fact"]), "--out", str(tmp_path / "o"), "--quiet"]
    assert lab_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differ in architecture" in err and "n_layer: 2 vs 3" in err
    assert (
        lab_main([str(r["base"]), str(r["full"]), "--fact", str(lab["fact"]), "--out", "o", "--names", "a,b"])
        == 2
    )
    assert "--names gives 2 names for 1 fine-tunes" in capsys.readouterr().err
