"""The one exception type that `decomp` raises for bad input."""


class DecompError(ValueError):
    """Invalid input to a decomposition routine (wrong layer kind, mismatched shapes, bad rank, ...)."""
