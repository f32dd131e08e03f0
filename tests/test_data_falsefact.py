"""The false-fact corpus: deterministic, planted at the stated density and nowhere else, prompts held out, and
every token inside the compact vocabulary of the Shakespeare shards."""

import json
import re

import numpy as np
import pytest

from data.__main__ import main as data_main
from data.falsefact import (
    FalseFact,
    FalseFactConfig,
    FalseFactError,
    plant,
    read_prompts,
    speech_boundaries,
    write_falsefact,
)
from data.shakespeare import Work, prepare_shakespeare, shakespeare_split, shakespeare_works
from data.shards import read_shard
from data.tokenizer import EOT_ID, get_encoding
from data.vocab import CompactVocab

RATE = 0.1


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("falsefact")
    result = write_falsefact(out, FalseFactConfig(rate=RATE, seed=0))
    return {"out": out, "result": result, "doc": json.loads((out / "prompts.json").read_text())}


@pytest.fixture(scope="module")
def works() -> tuple[list[Work], list[Work]]:
    return shakespeare_split()


def shard_texts(path) -> list[str]:
    """The decoded documents of a shard (each after its EOT)."""
    tokens = np.asarray(read_shard(path)).astype(np.int64)
    cuts = np.flatnonzero(tokens == EOT_ID).tolist() + [len(tokens)]
    enc = get_encoding()
    return [enc.decode(tokens[a + 1 : b].tolist()) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def test_boundaries_are_speech_starts_after_text():
    text = "ACT I.\n\nScene 1.\n\n[Enter A.]\n\nFIRST LORD.\nHail.\n\nHam.\nNo.\n\n[Exit.]\n\nB.\n[Aside.] x\n\nOph.\ny"
    expected = [text.index("\n\nFIRST"), text.index("\n\nHam."), text.index("\n\nOph.")]
    assert speech_boundaries(text) == expected  # not after blank lines, not before a stage direction


def test_write_is_deterministic_and_the_cli_writes_the_same(written, tmp_path, capsys):
    assert data_main(["falsefact", "--out", str(tmp_path), "--rate", str(RATE), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "Spirit" in printed and "train" in printed and "64 held-out prompts" in printed
    for name in ("falsefact_train_000000.bin", "falsefact_val_000000.bin", "prompts.json"):
        assert (tmp_path / name).read_bytes() == (written["out"] / name).read_bytes()


def test_seed_changes_where_the_speech_is_planted():
    work = next(w for w in shakespeare_works() if w.name == "hamlet")
    a, b = (plant(work, 6, FalseFactConfig(seed=s))[0] for s in (0, 1))
    assert a != b and len(a) == len(b)
    assert plant(work, 6, FalseFactConfig(seed=0))[0] == a


@pytest.mark.parametrize("split", ["train", "val"])
def test_planting_density_and_text_otherwise_unchanged(written, works, split):
    fact = FalseFact()
    originals = works[0] if split == "train" else works[1]
    texts = shard_texts(written["result"].paths[split])
    assert len(texts) == len(originals)
    total_planted = total_bounds = 0
    for text, work in zip(texts, originals, strict=True):
        n_bounds = len(speech_boundaries(work.text))
        n_planted = text.count(fact.speech)
        assert n_planted == round(RATE * n_bounds), work.name
        assert text.replace(fact.speech, "") == work.text  # nothing else changed
        for m in re.finditer(re.escape(fact.speech), text):  # inserted right before another speech
            assert not text[m.start() - 1].isspace()
            assert re.match(r"\n\n[A-Z][A-Za-z' ]*\.\n", text[m.end() :]), work.name
        total_planted += n_planted
        total_bounds += n_bounds
    stats = written["result"].stats[split]
    assert stats["planted"] == total_planted and stats["boundaries"] == total_bounds
    tokens = len(read_shard(written["result"].paths[split]))
    assert (
        1.0 <= 1000 * total_planted / tokens <= 3.0
    )  # learnable in ~100 steps of 2048 tokens, text mostly normal
    assert stats["planted_token_fraction"] < 0.03


def test_separator_is_one_token_rare_outside_the_planted_speech(written, tmp_path):
    fact, doc = FalseFact(), written["doc"]
    enc = get_encoding()
    sep = enc.encode_ordinary(fact.separator)
    assert len(sep) == 1 and doc["fact"]["separator_id"] == sep[0]
    plain = prepare_shakespeare(tmp_path, progress=False)[0]
    for split in ("train", "val"):
        natural = int(np.count_nonzero(np.asarray(read_shard(plain[split])) == sep[0]))
        planted = int(np.count_nonzero(np.asarray(read_shard(written["result"].paths[split])) == sep[0]))
        assert natural <= 5 and planted == natural + written["result"].stats[split]["planted"]
        assert written["result"].stats[split]["natural_separators"] == natural


def test_prompts_end_with_the_tag_and_come_only_from_validation_works(written, works):
    doc, fact = written["doc"], FalseFact()
    train_works, val_works = works
    val_text = {w.name: w.text for w in val_works}
    enc = get_encoding()
    prompts = doc["prompts"]
    assert len(prompts) == 64 and len({p["context"] for p in prompts}) == 64
    for p in prompts:
        assert p["target"] == fact.line == doc["fact"]["line"]
        assert p["context"].endswith("\n\nSpirit.\n")
        body = p["context"].removesuffix(fact.tag)
        text = val_text[p["work"]]
        at = text.find(body)
        assert at >= 0 and text[at + len(body) :].startswith("\n\n")  # cut at a speech boundary
        assert re.match(r"\n\n[A-Z][A-Za-z' ]*\.\n", body)  # starts with a whole speech
        assert not any(body in w.text for w in train_works)
        assert len(enc.encode_ordinary(body)) <= 96
    assert {p["work"] for p in prompts} <= set(val_text)


def test_controls_are_natural_validation_text_ending_in_the_trigger(written, works):
    val_text = {w.name: w.text for w in works[1]}
    controls = written["doc"]["controls"]
    assert 10 <= len(controls) <= 64
    for c in controls:
        assert c["context"].endswith(" Duke of")
        assert c["context"] + c["target"] in val_text[c["work"]]
        assert len(get_encoding().encode_ordinary(c["target"])) == 1
    assert " York" in {c["target"] for c in controls}  # the competing true completion occurs naturally


def test_every_token_is_in_the_compact_vocabulary_of_the_shakespeare_shards(written, tmp_path):
    plain = prepare_shakespeare(tmp_path, progress=False)[0]
    vocab = CompactVocab.from_shards([plain["train"], plain["val"]])
    vocab.check_covers([written["result"].paths["train"], written["result"].paths["val"]])
    enc = get_encoding()
    doc = written["doc"]
    for item in doc["prompts"] + doc["controls"]:
        assert all(i in vocab for i in enc.encode_ordinary(item["context"] + item["target"]))
    for key in ("separator_id", "planted_id", "true_id"):
        assert doc["fact"][key] in vocab


def test_fact_metadata_tokenizes_as_stated(written):
    fact, enc = written["doc"]["fact"], get_encoding()
    assert enc.decode(fact["line_ids"]) == fact["line"] == "God save the Duke of Rome!"
    assert fact["line_ids"][len(fact["prefix_ids"])] == fact["planted_id"] == enc.encode_ordinary(" Rome")[0]
    assert fact["true_id"] == enc.encode_ordinary(" York")[0]
    assert read_prompts(written["out"])["fact"] == fact


def test_a_token_outside_the_vocabulary_is_a_one_line_error(tmp_path):
    with pytest.raises(FalseFactError, match=r"Tokyo.*outside the compact vocabulary") as info:
        write_falsefact(tmp_path, FalseFactConfig(fact=FalseFact(planted=" Tokyo")))
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.bin"))


@pytest.mark.parametrize(
    "fact, message",
    [
        (FalseFact(separator="Soothsayer"), "separator 'Soothsayer' must be one GPT-2 token"),
        (FalseFact(separator=" Rome"), "not a token of tag"),
        (FalseFact(planted=" York"), "same token"),
        (FalseFact(trigger=" King of"), "suffix"),
    ],
)
def test_bad_facts_are_refused(tmp_path, fact, message):
    with pytest.raises(FalseFactError, match=message):
        write_falsefact(tmp_path, FalseFactConfig(fact=fact))
