"""Results, events and plots. A leaf: anyone may import it.

``TraceWriter`` / ``TraceReader`` are the one event recorder (an SQLite file per
writer, see ``recorder``); ``summarize``, ``render_text`` and ``plot_timeline``
turn a trace into a report (see ``report``). Importing this package imports
neither matplotlib nor torch.
"""

from .recorder import KINDS, Event, TraceReader, TraceWriter
from .report import Report, plot_timeline, render_text, summarize
from .results import CurvePoint, Results, RunResult

__all__ = [
    "CurvePoint",
    "Event",
    "KINDS",
    "Report",
    "Results",
    "RunResult",
    "TraceReader",
    "TraceWriter",
    "plot_timeline",
    "render_text",
    "summarize",
]
