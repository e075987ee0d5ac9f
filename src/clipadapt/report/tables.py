"""Results as files: JSON, CSV and markdown tables, written atomically.

JSON floats are written rounded (`round_float`; CSV cells keep every digit): 4 decimals, or 5 significant digits for
magnitudes below 1, so a percentage computed in float32 reads 56.75, not 56.74999952316284, while a small p-value or
learning rate keeps its digits. NaN and infinities are written as null."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.errors import ConfigError
from clipadapt.fileio import atomic_write_bytes


def _jsonable(obj: Any, rounded: bool = True) -> Any:
    """Plain JSON values: tensors/numpy scalars as numbers, paths as strings, NaN/inf as None, floats rounded
    (`round_float`) unless `rounded` is False (CSV cells keep every digit)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, rounded) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, rounded) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item(), rounded)
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round_float(obj) if rounded else obj
    return obj


DECIMALS = 4


def round_float(x: float) -> float:
    """`x` to DECIMALS decimals, or to DECIMALS + 1 significant digits when |x| < 1 (so 2e-7 stays 2e-7)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(DECIMALS, DECIMALS - math.floor(math.log10(abs(x)))))


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())
    return path


def _format_cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """A GitHub-markdown table of `rows` (dicts), columns in first-seen order unless given."""
    columns = list(columns) if columns else _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format_cell(row.get(c), digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(column for row in rows for column in row))


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns) if columns else _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: _jsonable(r.get(c), rounded=False) for c in columns} for r in rows])
    return buf.getvalue()


def write_table(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write rows as .csv, .md or .json, chosen by the file extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text = csv_text(rows, columns)
    elif suffix in (".md", ".markdown"):
        text = markdown_table(rows, columns)
    elif suffix == ".json":
        return write_json(path, list(rows))
    else:
        raise ConfigError(f"{path}: unknown table format '{suffix}' (use .csv, .md or .json)")
    atomic_write_bytes(path, text.encode())
    return path
