"""The exception analysis raises for bad input (missing checkpoint, unsuitable model, bad option)."""

from errors import TntError


class AnalysisError(TntError, ValueError):
    """An analysis cannot run as asked; the message says why and, where possible, what to do."""
