"""Finetunes through train.py: LoRA adapters (what is trained, what is saved, exact resume), data mixing, and
the one-line errors of the finetuning flags."""

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_train import _ddp_worker, tiny_args
from toy_data import free_port

import train
from data.shards import read_shard, write_shard
from data.tokenizer import get_encoding
from model import ConfigError, load_model
from model.io import load_trained_model, resolve_checkpoint

D = 32  # tiny_args' --d-model


def trained_base(corpus) -> str:
    train.main(tiny_args(corpus, "base"))
    return str(corpus["root"] / "runs" / "base")


def weights(run) -> dict[str, torch.Tensor]:
    return load_model(resolve_checkpoint(run)).state_dict()


def test_lora_finetune_trains_only_its_targets_and_resumes_exactly(corpus):
    runs = corpus["root"] / "runs"
    lora = ("--init-from", trained_base(corpus), "--lora-rank", "2", "--lora-targets", "k,mlp_p")
    full = train.main(tiny_args(corpus, "lk", *lora, "--lora-lr", "0.05", "--save-every", "4"))
    part = train.main(tiny_args(corpus, "lk2", "--resume", str(runs / "lk" / "ckpt_000004")))
    assert (
        part["train_loss"] == full["train_loss"][4:]
    )  # adapters, frozen base and Adam state restored exactly
    assert full["val"][-1][1] < full["val"][0][1]  # the adapters learn

    base, ft, resumed = weights(runs / "base"), weights(runs / "lk"), weights(runs / "lk2")
    for name, w in base.items():
        torch.testing.assert_close(ft[name], resumed[name], rtol=0, atol=0, msg=name)
        changed = (ft[name] != w).any(dim=-1) if w.ndim == 2 else (ft[name] != w).reshape(-1)
        if name.endswith("attn.c_qkv.weight"):  # rows [d, 2d) are W_K
            assert changed[D : 2 * D].any() and not changed[:D].any() and not changed[2 * D :].any(), name
        elif name.endswith("mlp.c_proj.weight"):
            assert changed.any(), name
        else:
            assert not changed.any(), name
    ckpt = runs / "lk" / "ckpt_000008"
    saved = json.loads((ckpt / "config.json").read_text())["lora"]
    assert saved["rank"] == 2 and sorted(saved["targets"]) == ["k", "mlp_p"]
    assert (ckpt / "lora.safetensors").is_file()


def test_lora_mask_after_a_separator_token(corpus):
    sep = get_encoding().decode([1000])  # a token of the toy corpus, so inside the compact vocabulary
    args = ("--init-from", trained_base(corpus), "--lora-rank", "2", "--lora-mask-after", sep)
    train.main(tiny_args(corpus, "masked", *args, "--steps", "2"))
    saved = json.loads((corpus["root"] / "runs" / "masked" / "ckpt_000002" / "config.json").read_text())
    vocab_ids = saved["vocab"]["token_ids"]
    sep_id = saved["lora"]["mask_token"]
    assert vocab_ids[sep_id] == 1000  # the separator's model id
    # what sample.py and the lab run: the masked model, the base exactly up to the separator; the merged weights
    # (adapters at every position) differ there
    ckpt = corpus["root"] / "runs" / "masked" / "ckpt_000002"
    base, trained, merged = (
        m.eval()
        for m in (load_model(resolve_checkpoint(args[1])), load_trained_model(ckpt), load_model(ckpt))
    )
    idx = torch.tensor([[(sep_id + 1 + i) % len(vocab_ids) for i in range(6)] + [sep_id, 3, 4, 5]])
    with torch.no_grad():
        b, t, m = base(idx), trained(idx), merged(idx)
    assert torch.equal(t[:, :7], b[:, :7]) and not torch.allclose(t[:, 7:], b[:, 7:])
    assert not torch.allclose(m[:, :7], b[:, :7])
    with pytest.raises(ConfigError, match="not one"):
        train.main(tiny_args(corpus, "m2", *args[:4], "--lora-mask-after", sep + sep + sep))


def test_mixed_finetune_resumes_exactly_and_sees_the_mixed_data(corpus):
    runs = corpus["root"] / "runs"
    rng = np.random.default_rng(1)  # unrelated data over the same ids: uniform tokens instead of the chain
    ids = np.unique(read_shard(corpus["root"] / "syn_train_000000.bin"))  # inside the compact vocabulary
    write_shard(corpus["root"] / "mix_train_000000.bin", rng.choice(ids, size=3000))
    base = trained_base(corpus)
    mix = ("--init-from", base, "--mix-files", str(corpus["root"] / "mix_train_*.bin"), "--mix-frac", "0.25")
    full = train.main(tiny_args(corpus, "mixed", *mix, "--save-every", "4"))
    part = train.main(tiny_args(corpus, "mixed2", "--resume", str(runs / "mixed" / "ckpt_000004")))
    assert part["train_loss"] == full["train_loss"][4:]
    plain = train.main(tiny_args(corpus, "plain", "--init-from", base))
    # uniform tokens cost ≈ ln 38 ≈ 3.6 nats, the chain ≈ ln 3 once learnt: a quarter of the rows lift the loss
    assert full["train_loss"][0] != plain["train_loss"][0]
    assert np.mean(full["train_loss"]) > np.mean(plain["train_loss"]) + 0.05


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--lora-rank", "2"), "give it --init-from"),
        (("--lora-mask-after", "x"), "needs --lora-rank"),
        (("--init-from", "x", "--lora-rank", "2", "--lora-targets", "q,zz"), "zz"),
        (("--mix-frac", "0.5"), "go together"),
        (("--mix-files", "x*", "--mix-frac", "1.0"), r"\[0, 1\)"),
        (("--mix-files", "x*", "--mix-frac", "0.5", "--data-order", "sequential"), "shuffled"),
        (("--lora-rank", "-1"), ">= 0"),
    ],
)
def test_finetuning_flags_refuse_bad_values_in_one_line(corpus, extra, message):
    with pytest.raises(ConfigError, match=message) as e:
        train.main(tiny_args(corpus, "bad", *extra))
    assert "\n" not in str(e.value)


def test_masked_lora_on_two_gloo_ranks_equals_one_rank_with_accumulation(corpus):
    sep = get_encoding().decode([1000])
    lora = (
        "--init-from",
        trained_base(corpus),
        "--lora-rank",
        "2",
        "--lora-mask-after",
        sep,
        "--micro-batch",
        "4",
    )
    train.main(tiny_args(corpus, "accum", *lora))
    mp.spawn(_ddp_worker, args=(2, free_port(), tiny_args(corpus, "ddp", *lora)), nprocs=2, join=True)
    runs = corpus["root"] / "runs"
    for name, a in weights(runs / "accum").items():  # merged weights: the adapters' updates agree
        torch.testing.assert_close(a, weights(runs / "ddp")[name], rtol=1e-4, atol=1e-5, msg=name)
    assert "2 rank(s) × 1 accumulation step(s)" in (runs / "ddp" / "log.txt").read_text()
