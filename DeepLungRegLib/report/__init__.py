"""HTML report with figures of a registration."""

from .report import write_report

__all__ = ["write_report"]
