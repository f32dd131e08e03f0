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
