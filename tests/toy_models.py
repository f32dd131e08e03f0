"""Small random GPTs for analysis tests (imported by test modules; pytest puts tests/ on sys.path)."""

import torch

from model import GPT, GPTConfig


def random_gpt(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> GPT:
    """A small bilinear GPT with its zero-initialised output projections randomised and random norm gains."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, n_layer=2, n_head=2, d_model=16, mlp="bilinear", mlp_hidden=8, norm_gain=True)
    model = GPT(GPTConfig(**{**cfg, **kw})).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                p.normal_(0, 0.5)
            elif name.endswith(".weight") and p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model
