"""Sample a continuation from a checkpoint, for a quick look.

python sample.py runs/demo --prompt "ROMEO:" --tokens 80 --temperature 0.8
"""

from __future__ import annotations

import argparse
import sys

import torch

from data.tokenizer import get_encoding
from data.vocab import CompactVocab
from errors import TntError, run_cli
from model import GPT
from model.io import CONFIG_FILE, load_trained_model, read_json, resolve_checkpoint


class SampleError(TntError):
    """The model cannot be sampled (its logits are not finite: corrupt or diverged weights)."""


@torch.no_grad()
def sample(
    model: GPT,
    vocab: CompactVocab,
    prompt: str,
    n_tokens: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    context: int = 1024,
) -> str:
    """Prompt text -> prompt + ``n_tokens`` sampled tokens, decoded (top-k sampling at ``temperature``).

    Prompt tokens outside the model's vocabulary are dropped; an empty prompt starts from <|endoftext|>.
    """
    enc = get_encoding()
    prompt_ids = [t for t in enc.encode_ordinary(prompt) if t in vocab] or [enc.eot_token]
    ids = vocab.encode_tensor(torch.tensor([prompt_ids]))
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    for _ in range(n_tokens):
        logits = model(ids[:, -context:].to(device))[0, -1].float().cpu()
        if not bool(torch.isfinite(logits).all()):
            raise SampleError(
                f"the model's logits are not finite after {ids.shape[1]} tokens (inf or nan): its weights are "
                "corrupt or the run diverged"
            )
        top = (logits / max(temperature, 1e-6)).topk(min(top_k, vocab.size))
        nxt = top.indices[torch.multinomial(top.values.softmax(-1), 1, generator=gen)]
        ids = torch.cat((ids, nxt[None]), dim=1)
    model.train(was_training)
    return enc.decode(vocab.decode_tensor(ids[0]).tolist())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="run folder (uses its LATEST checkpoint) or checkpoint folder")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tokens < 0 or args.top_k < 1 or not args.temperature >= 0:
        parser.error("--tokens must be >= 0, --top-k >= 1 and --temperature >= 0")
    ckpt = resolve_checkpoint(args.checkpoint)
    vocab = CompactVocab.from_config(read_json(ckpt / CONFIG_FILE), source=ckpt / CONFIG_FILE)
    model = load_trained_model(ckpt)  # a masked LoRA finetune samples with its mask
    vocab.check_fits(model.config.vocab_size, source=ckpt / CONFIG_FILE)
    print(
        sample(
            model,
            vocab,
            args.prompt,
            args.tokens,
            seed=args.seed,
            temperature=args.temperature,
            top_k=args.top_k,
        )
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
