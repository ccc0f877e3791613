"""HTML report with figures of a registration."""

from .report import ReportSlices, write_report

__all__ = ["ReportSlices", "write_report"]
