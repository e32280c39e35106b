"""Results, events and plots. A leaf: anyone may import it.

``TraceWriter`` / ``TraceReader`` are the one event recorder (an SQLite file per
writer, see ``recorder``); ``summarize``, ``render_text`` and ``plot_timeline``
turn a trace into a report (see ``report``), ``run_series`` into series over
rounds (``series``) and ``plot_run`` into one PNG of the run (``runplot``).
Importing this package imports neither matplotlib nor torch.
"""

from .recorder import KINDS, Event, TraceReader, TraceWriter
from .report import Report, plot_timeline, render_text, summarize
from .results import CurvePoint, Results, RunResult
from .runplot import plot_run
from .series import Series, run_series

__all__ = [
    "CurvePoint",
    "Event",
    "KINDS",
    "Report",
    "Results",
    "RunResult",
    "Series",
    "TraceReader",
    "TraceWriter",
    "plot_run",
    "plot_timeline",
    "render_text",
    "run_series",
    "summarize",
]
