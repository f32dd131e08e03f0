"""The one exception type that `decomp` raises for bad input."""

from errors import TntError


class DecompError(TntError, ValueError):
    """Invalid input to a decomposition routine (wrong layer kind, mismatched shapes, bad rank, ...)."""
