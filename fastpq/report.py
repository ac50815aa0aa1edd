"""``fastpq.report``, the documented path of :mod:`fastpq.analysis.report`."""

from fastpq.analysis.report import render_report, write_report

__all__ = ["render_report", "write_report"]
