"""Hook points with TransformerLens names, on plain torch (no TransformerLens dependency).

A ``HookPoint`` is an identity module at a named place in the forward pass. Functions attached to it are called
as ``fn(activation, hook)``; a function that returns a tensor replaces the activation (as in TransformerLens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]

# Short names -> where the hook sits inside block i (TransformerLens's ``get_act_name`` vocabulary).
_BLOCK_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "pattern": "attn.hook_pattern",
    "pre": "mlp.hook_pre",
    "pre_linear": "mlp.hook_pre_linear",
    "post": "mlp.hook_post",
}
_LAYER_TYPES = {"ln1": "ln1", "ln2": "ln2", "mlp": "ln2", "attn": "ln1", "a": "ln1", "m": "ln2"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name of a short one, as TransformerLens's ``utils.get_act_name``.

    ``get_act_name("resid_mid", 2)`` -> ``"blocks.2.hook_resid_mid"``; ``get_act_name("mlp_out", 0)`` ->
    ``"blocks.0.hook_mlp_out"``; ``get_act_name("normalized", 1, "ln2")`` -> ``"blocks.1.ln2.hook_normalized"``
    (the MLP's input N(x); layer_type "ln1"/"attn" is the attention's); ``"embed"`` -> ``"hook_embed"``;
    ``"ln_final"`` with ``"normalized"`` -> ``"ln_f.hook_normalized"``. Full names pass through unchanged.
    """
    if "." in name or (name.startswith("hook_") and layer is None):
        return name
    if name == "embed":
        return "hook_embed"
    if name == "normalized" and layer_type in ("ln_final", "ln_f"):
        return "ln_f.hook_normalized"
    if layer is None:
        raise ValueError(f"hook {name!r} needs a layer index")
    if name == "normalized":
        if layer_type not in _LAYER_TYPES:
            raise ValueError(f"hook 'normalized' needs layer_type 'ln1' or 'ln2', got {layer_type!r}")
        return f"blocks.{layer}.{_LAYER_TYPES[layer_type]}.hook_normalized"
    if name not in _BLOCK_HOOKS:
        raise ValueError(
            f"unknown hook name {name!r}; known: {', '.join([*_BLOCK_HOOKS, 'normalized', 'embed'])}"
        )
    return f"blocks.{layer}.{_BLOCK_HOOKS[name]}"


def mlp_input_hook(layer: int) -> str:
    """``blocks.{layer}.ln2.hook_normalized``: the MLP's input z = N(x) (RMSNorm with its gain)."""
    return get_act_name("normalized", layer, "ln2")


def mlp_output_hook(layer: int) -> str:
    """``blocks.{layer}.hook_mlp_out``: the MLP's output, added to the residual stream."""
    return get_act_name("mlp_out", layer)


class HookPoint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # filled in by the root model after construction
        self.fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x


class HookedRootModule(nn.Module):
    """Mixin for the root model: names hook points and runs with caches or hooks."""

    def setup_hooks(self) -> None:
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @contextmanager
    def hooks(self, fwd_hooks: list[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[None]:
        """Attach ``(name or name-predicate, fn)`` pairs for the duration of the block."""
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for key, fn in fwd_hooks:
                points = (
                    [self._hook_point(key)]
                    if isinstance(key, str)
                    else [h for n, h in self.hook_dict.items() if key(n)]
                )
                for point in points:
                    point.fns.append(fn)
                    attached.append((point, fn))
            yield
        finally:
            for point, fn in attached:  # only ours: hooks of an enclosing context stay
                point.fns.remove(fn)

    def _hook_point(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            raise KeyError(f"unknown hook point {name!r}; known: {', '.join(self.hook_dict)}")
        return self.hook_dict[name]

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks=(), **kwargs) -> torch.Tensor:
        with self.hooks(list(fwd_hooks)):
            return self(tokens, **kwargs)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names_filter: str | list[str] | Callable[[str], bool] | None = None,
        stop_at_layer: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run forward and return ``(output, cache)``; cache maps hook names to detached activations.

        ``stop_at_layer=L`` runs blocks 0..L-1 only and returns the residual stream [B, T, d] as output.
        """
        if names_filter is None:
            keep = lambda name: True  # noqa: E731
        elif isinstance(names_filter, str):
            keep = lambda name: name == names_filter  # noqa: E731
        elif callable(names_filter):
            keep = names_filter
        else:
            wanted = set(names_filter)
            for name in wanted:
                self._hook_point(name)
            keep = lambda name: name in wanted  # noqa: E731
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach()

        with self.hooks([(keep, save)]):
            out = self(tokens, stop_at_layer=stop_at_layer, **kwargs)
        return out, cache
