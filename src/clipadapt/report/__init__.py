"""Reports: JSON/CSV/markdown tables and matplotlib plots."""

from typing import TYPE_CHECKING

from clipadapt._lazy import lazy_exports

if TYPE_CHECKING:
    from clipadapt.report.tables import csv_text, markdown_table, write_json, write_table

__all__ = ["csv_text", "markdown_table", "write_json", "write_table"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "clipadapt.report.tables": ["csv_text", "markdown_table", "write_json", "write_table"],
})
