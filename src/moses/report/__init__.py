"""Human-readable views of a run's results."""

from moses.report.tables import matrix_markdown, report_markdown

__all__ = ["matrix_markdown", "report_markdown"]
