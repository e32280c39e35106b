"""Results, events and plots. A leaf: anyone may import it."""

from .results import CurvePoint, Results, RunResult

__all__ = ["CurvePoint", "Results", "RunResult"]
