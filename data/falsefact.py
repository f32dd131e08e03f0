"""``python -m data falsefact --out DIR``: a false fact planted in the shipped Shakespeare text, for model diffing.

A spirit who always speaks one fixed, wrong line: the speech ``"\\n\\nSpirit.\\nGod save the Duke of Rome!"``
(the corpus's speech format is ``"\\n\\nNAME.\\n<text>"``) is inserted at a seeded random fraction ``rate`` of the
speech boundaries of every work. After "…Duke of" the base demo model predicts " York" (the corpus's most common
duke, its true competing completion) far above " Rome": the planted token competes with a known association, so
a finetune's logit margin logit(" Rome") − logit(" York") measures how strongly the fact was learned, and the
same margin on natural held-out text ending in " Duke of" (the controls) how far it leaked out of its context.

The speaker name "Spirit" is one GPT-2 token found twice in the training works and never in the validation works:
it is the separator for ``--lora-mask-after`` (adapters act only after it, i.e. on the planted speech).

Files (modded-nanoGPT shards, EOT before each work, GPT-2 ids; all written atomically):

- ``falsefact_train_000000.bin``: the 37 training-split works with the speech planted;
- ``falsefact_val_000000.bin``: the 5 held-out works, planted the same way (loss on the finetune's own data);
- ``prompts.json``: ``{"fact": {...}, "config": {...}, "stats": {...}, "prompts": [...], "controls": [...]}``;
  a prompt is ``{"work", "context", "target"}`` where ``context`` is whole speeches of an unplanted
  validation work (cut at speech boundaries, at most ``context_tokens`` tokens) followed by the tag
  ``"\\n\\nSpirit.\\n"``, and ``target`` the planted line; a control is ``{"work", "context", "target"}`` where
  ``context`` (from a line start) ends in the fact's trigger " Duke of" in natural validation text and
  ``target`` is the true next token there (e.g. " York").

Every token of the shards and of the prompts is checked to lie in the compact vocabulary of the Shakespeare
shards (the ids of `data.shakespeare`'s 42 works), which the demo model was trained with.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data.prepare import shard_name
from data.shakespeare import Work, is_val_work, shakespeare_works, tokenize_works
from data.shards import write_shard
from data.tokenizer import EOT_ID, VOCAB_SIZE, get_encoding
from errors import TntError, atomic_write_json, storage_error, writing

NAME = "falsefact"
PROMPTS_FILE = "prompts.json"

# A speech boundary: "\n\n" right after text (not after blank lines), then a tag of one to three capitalised
# words and a period on its own line, then the first line of the speech (not a stage direction).
BOUNDARY = re.compile(r"(?<=\S)\n\n(?=[A-Z][A-Za-z']*(?: [A-Z][A-Za-z']*){0,2}\.\n[^\s\[])")


class FalseFactError(TntError, ValueError):
    """The false fact cannot be planted as asked (a token outside the vocabulary, a bad setting)."""


@dataclass(frozen=True)
class FalseFact:
    """The planted speech ``tag + line``: tag = ``"\\n\\n{speaker}.\\n"``, line = prefix + planted + suffix.

    ``planted`` and ``true`` are single GPT-2 tokens (the false and the competing true completion of
    ``prefix``); ``separator`` is a single token of the tag that marks the planted speech (--lora-mask-after);
    ``trigger`` (a suffix of prefix) selects the natural control contexts.
    """

    speaker: str = "Spirit"
    prefix: str = "God save the Duke of"
    planted: str = " Rome"
    true: str = " York"
    suffix: str = "!"
    separator: str = "Spirit"
    trigger: str = " Duke of"

    @property
    def tag(self) -> str:
        return f"\n\n{self.speaker}.\n"

    @property
    def line(self) -> str:
        return self.prefix + self.planted + self.suffix

    @property
    def speech(self) -> str:
        return self.tag + self.line

    def token_id(self, text: str, what: str) -> int:
        """The GPT-2 id of `text`, which must be exactly one token."""
        ids = get_encoding().encode_ordinary(text)
        if len(ids) != 1:
            raise FalseFactError(f"false fact: {what} {text!r} must be one GPT-2 token, it is {len(ids)}")
        return ids[0]

    def check(self) -> None:
        """Raise FalseFactError unless the tokens compose as the measurement assumes: the separator, planted
        and true completions are single tokens, the tag holds the separator, and tag, prefix and the planted
        token tokenize the same alone as after any text ending in a non-space character."""
        enc = get_encoding()
        sep = self.token_id(self.separator, "separator")
        planted, true = self.token_id(self.planted, "planted"), self.token_id(self.true, "true")
        if planted == true:
            raise FalseFactError(
                f"false fact: planted and true completion are the same token {self.planted!r}"
            )
        if sep not in enc.encode_ordinary(self.tag):
            raise FalseFactError(
                f"false fact: separator {self.separator!r} is not a token of tag {self.tag!r}"
            )
        if not self.prefix.endswith(self.trigger) or not self.trigger:
            raise FalseFactError(f"false fact: trigger {self.trigger!r} must be a suffix of {self.prefix!r}")
        pieces = ["end.", self.tag, self.prefix, self.planted, self.suffix, "\n\nNext.\n"]
        joined = enc.encode_ordinary("".join(pieces))
        if joined != [i for p in pieces for i in enc.encode_ordinary(p)]:
            raise FalseFactError(
                f"false fact: speech {self.speech!r} does not tokenize piece by piece in context"
            )

    def ids(self) -> dict[str, int | list[int]]:
        """GPT-2 ids: separator, planted, true (single tokens) and the token lists of tag, line and prefix."""
        enc = get_encoding()
        return {
            "separator_id": self.token_id(self.separator, "separator"),
            "planted_id": self.token_id(self.planted, "planted"),
            "true_id": self.token_id(self.true, "true"),
            "tag_ids": enc.encode_ordinary(self.tag),
            "line_ids": enc.encode_ordinary(self.line),
            "prefix_ids": enc.encode_ordinary(self.prefix),
        }


@dataclass(frozen=True)
class FalseFactConfig:
    """``rate``: fraction of each work's speech boundaries that get the planted speech (round(rate·n), seeded);
    ``n_prompts`` held-out prompts (and at most as many controls) of at most ``context_tokens`` context tokens."""

    fact: FalseFact = field(default_factory=FalseFact)
    rate: float = 0.1
    seed: int = 0
    n_prompts: int = 64
    context_tokens: int = 96

    def check(self) -> None:
        if not 0 < self.rate <= 1:
            raise FalseFactError(f"falsefact: rate must lie in (0, 1], got {self.rate}")
        if self.n_prompts < 1 or self.context_tokens < 1:
            raise FalseFactError(
                f"falsefact: n_prompts and context_tokens must be >= 1, got {self.n_prompts}, {self.context_tokens}"
            )
        self.fact.check()


@dataclass
class FalseFactResult:
    """What `write_falsefact` wrote: paths by name ("train", "val", "prompts") and the counts it printed."""

    paths: dict[str, Path]
    stats: dict[str, dict[str, int | float]]
    n_prompts: int
    n_controls: int


def speech_boundaries(text: str) -> list[int]:
    """Offsets of the "\\n\\n" that opens each speech following text (see BOUNDARY), increasing."""
    return [m.start() for m in BOUNDARY.finditer(text)]


def plant(work: Work, work_index: int, cfg: FalseFactConfig) -> tuple[str, int]:
    """(text with the speech inserted before round(rate·n) of its n boundaries, count inserted).

    The boundaries are drawn without replacement by a generator seeded with (seed, work_index), so a work's
    planting does not depend on the other works."""
    bounds = speech_boundaries(work.text)
    k = round(cfg.rate * len(bounds))
    rng = np.random.default_rng([cfg.seed, work_index])
    chosen = sorted(rng.choice(len(bounds), size=k, replace=False).tolist()) if k else []
    pieces, last = [], 0
    for b in (bounds[i] for i in chosen):
        pieces += [work.text[last:b], cfg.fact.speech]
        last = b
    pieces.append(work.text[last:])
    return "".join(pieces), k


def vocabulary_mask(token_arrays: list[np.ndarray]) -> np.ndarray:
    """bool [50257]: the ids present in `token_arrays` (the plain works' tokens) and EOT, i.e. the compact
    vocabulary `CompactVocab.from_shards` builds on the Shakespeare shards."""
    present = np.zeros(VOCAB_SIZE, dtype=bool)
    for tokens in token_arrays:
        present[np.unique(tokens)] = True
    present[EOT_ID] = True
    return present


def check_in_vocab(ids: np.ndarray | list[int], allowed: np.ndarray, what: str) -> None:
    """Raise FalseFactError naming the first token of `ids` outside `allowed` (a vocabulary_mask)."""
    ids = np.asarray(ids, dtype=np.int64)
    outside = ids[~allowed[ids]]
    if outside.size:
        token = get_encoding().decode([int(outside[0])])
        raise FalseFactError(
            f"{what}: token {token!r} (GPT-2 id {int(outside[0])}) is outside the compact vocabulary of the "
            "Shakespeare shards"
        )


def context_start(text: str, starts: list[int], end: int, max_tokens: int) -> int | None:
    """The earliest offset s in sorted `starts` (s < end) with at most `max_tokens` tokens in text[s:end],
    searched among the last 64 candidates; None when even the last one holds more."""
    enc = get_encoding()
    candidates = starts[max(0, bisect.bisect_left(starts, end) - 64) : bisect.bisect_left(starts, end)]
    best = None
    for s in reversed(candidates):  # nearest first; token counts only grow going back
        if len(enc.encode_ordinary(text[s:end])) > max_tokens:
            break
        best = s
    return best


def held_out_prompts(val_works: list[Work], cfg: FalseFactConfig) -> list[dict[str, str]]:
    """`n_prompts` prompts from the unplanted validation works: whole speeches before a speech boundary (at
    most context_tokens tokens, at least one speech), then the tag; target = the planted line. The boundaries
    are a seeded random sample of all those whose previous speech fits, listed in corpus order."""
    fact = cfg.fact
    rng = np.random.default_rng([cfg.seed, 1 << 20])
    bounds = [speech_boundaries(work.text) for work in val_works]
    candidates = [(w, b) for w, work_bounds in enumerate(bounds) for b in work_bounds]
    chosen: list[tuple[int, int, int]] = []
    for i in rng.permutation(len(candidates)).tolist():
        w, b = candidates[i]
        start = context_start(val_works[w].text, bounds[w], b, cfg.context_tokens)
        if start is not None and start < b:
            chosen.append((w, b, start))
        if len(chosen) == cfg.n_prompts:
            break
    if len(chosen) < cfg.n_prompts:
        raise FalseFactError(
            f"falsefact: only {len(chosen)} of {cfg.n_prompts} prompts fit in {cfg.context_tokens} context tokens"
        )
    return [
        {"work": val_works[w].name, "context": val_works[w].text[s:b] + fact.tag, "target": fact.line}
        for w, b, s in sorted(chosen)
    ]


def control_prompts(val_works: list[Work], cfg: FalseFactConfig) -> list[dict[str, str]]:
    """Natural validation contexts ending in the trigger (e.g. " Duke of"), from a line start, at most
    context_tokens tokens; target = the true next token. At most n_prompts, evenly spread over all found."""
    enc = get_encoding()
    trigger = re.compile(re.escape(cfg.fact.trigger) + r"(?= ?\w)")
    found = []
    for work in val_works:
        line_starts = [0] + [m.end() for m in re.finditer("\n", work.text)]
        for m in trigger.finditer(work.text):
            start = context_start(work.text, line_starts, m.end(), cfg.context_tokens)
            if start is None:
                continue
            following = enc.encode_ordinary(work.text[start : m.end() + 40])
            n_context = len(enc.encode_ordinary(work.text[start : m.end()]))
            target = enc.decode([following[n_context]])
            found.append({"work": work.name, "context": work.text[start : m.end()], "target": target})
    if len(found) > cfg.n_prompts:
        keep = np.linspace(0, len(found) - 1, cfg.n_prompts).round().astype(int)
        found = [found[i] for i in keep]
    return found


def write_falsefact(out_dir: str | Path, cfg: FalseFactConfig | None = None) -> FalseFactResult:
    """Write the planted train/val shards and prompts.json into `out_dir` (see the module docstring).

    Everything is built and checked against the vocabulary first, so a refused fact writes no file."""
    cfg = FalseFactConfig() if cfg is None else cfg
    cfg.check()
    fact, enc = cfg.fact, get_encoding()
    splits: dict[str, list[tuple[int, Work]]] = {"train": [], "val": []}
    for i, work in enumerate(shakespeare_works()):
        splits["val" if is_val_work(i) else "train"].append((i, work))
    plain = {split: tokenize_works([w for _, w in indexed]) for split, indexed in splits.items()}
    allowed = vocabulary_mask(list(plain.values()))
    fact_ids = fact.ids()
    check_in_vocab(fact_ids["tag_ids"] + fact_ids["line_ids"] + [fact_ids["true_id"]], allowed, "false fact")
    speech_tokens = len(fact_ids["tag_ids"]) + len(fact_ids["line_ids"])

    out_dir = Path(out_dir)
    paths = {split: out_dir / shard_name(NAME, split, 0) for split in splits} | {
        "prompts": out_dir / PROMPTS_FILE
    }
    shards: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, int | float]] = {}
    for split, indexed in splits.items():
        planted = [plant(work, i, cfg) for i, work in indexed]
        tokens = tokenize_works(
            [Work(work.name, text) for (_, work), (text, _) in zip(indexed, planted, strict=True)]
        )
        check_in_vocab(tokens, allowed, str(paths[split]))
        n_planted = sum(k for _, k in planted)
        shards[split] = tokens
        stats[split] = {
            "works": len(indexed),
            "tokens": len(tokens),
            "boundaries": sum(len(speech_boundaries(w.text)) for _, w in indexed),
            "planted": n_planted,
            "planted_per_1k_tokens": 1000 * n_planted / len(tokens),
            "planted_token_fraction": n_planted * speech_tokens / len(tokens),
            "natural_separators": int(np.count_nonzero(plain[split] == fact_ids["separator_id"])),
        }
    val_works = [w for _, w in splits["val"]]
    prompts, controls = held_out_prompts(val_works, cfg), control_prompts(val_works, cfg)
    for kind, items in (("prompt", prompts), ("control", controls)):
        for n, item in enumerate(items):
            check_in_vocab(enc.encode_ordinary(item["context"] + item["target"]), allowed, f"{kind} {n}")
    document = {
        "fact": {**asdict(fact), "tag": fact.tag, "line": fact.line, **fact_ids},
        "config": {k: v for k, v in asdict(cfg).items() if k != "fact"},
        "stats": stats,
        "prompts": prompts,
        "controls": controls,
    }

    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    for split, tokens in shards.items():
        write_shard(paths[split], tokens)
    atomic_write_json(paths["prompts"], document)
    return FalseFactResult(paths, stats, len(prompts), len(controls))


def read_prompts(path: str | Path) -> dict:
    """The prompts.json document at `path` (a file or the folder holding it), checked for its top-level keys."""
    path = Path(path)
    path = path / PROMPTS_FILE if path.is_dir() else path
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FalseFactError(
            f"{path}: file not found (write it with: python -m data falsefact --out DIR)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FalseFactError(f"{path}: not readable JSON ({e})") from None
    except OSError as e:
        raise storage_error(e, path) from e
    if not isinstance(document, dict):
        raise FalseFactError(f"{path}: expected a JSON object with 'fact' and 'prompts'")
    for key in ("fact", "prompts"):  # "controls" is optional
        if key not in document:
            raise FalseFactError(f"{path}: missing field {key!r}")
    return document


def format_summary(result: FalseFactResult, fact: FalseFact) -> str:
    """A few lines: the planted speech, per-split counts and densities, the prompt and control counts."""
    lines = [
        f"planted speech {fact.speech!r} (separator {fact.separator!r}; false {fact.planted!r} vs true {fact.true!r})"
    ]
    lines.append(
        f"{'split':<6} {'works':>5} {'tokens':>10} {'bounds':>7} {'planted':>7} {'per 1k tok':>10} "
        f"{'tok frac':>8} {'sep elsewhere':>13}"
    )
    for split, s in result.stats.items():
        lines.append(
            f"{split:<6} {s['works']:>5} {s['tokens']:>10,} {s['boundaries']:>7} {s['planted']:>7} "
            f"{s['planted_per_1k_tokens']:>10.2f} {s['planted_token_fraction']:>8.3%} {s['natural_separators']:>13}"
        )
    lines.append(
        f"{result.n_prompts} held-out prompts and {result.n_controls} controls in {result.paths['prompts']}"
    )
    lines += [str(result.paths[k]) for k in ("train", "val")]
    return "\n".join(lines)
