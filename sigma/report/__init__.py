"""`sigma report RUN_DIR`: one self-contained HTML review page for a batch run."""
from sigma.report.build import build_report

__all__ = ["build_report"]
