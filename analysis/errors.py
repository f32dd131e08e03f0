"""The exception analysis raises for bad input (missing checkpoint, unsuitable model, bad option)."""


class AnalysisError(ValueError):
    """An analysis cannot run as asked; the message says why and, where possible, what to do."""
