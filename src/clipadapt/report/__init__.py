"""Reports: JSON/CSV/markdown tables and matplotlib plots."""

from clipadapt.report.tables import csv_text, markdown_table, write_json, write_table

__all__ = ["csv_text", "markdown_table", "write_json", "write_table"]
