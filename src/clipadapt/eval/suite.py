"""Suites: a declared grid of runs (datasets × backbones × methods × seeds per task), one result file per cell.

A suite config (TOML) lists tasks; each task expands into *cells*. A cell is one run of an existing command
(`fewshot`, `eval --method dn`, `retrieval`, `captions`, `backbones`, `imo`) on one dataset; its identity is a
hash of its resolved config, so a re-run skips finished cells, and a changed config re-runs only the cells whose
resolved config changed. The suite computes no numbers itself: the executor (clipadapt.cli.suite) runs the command's
library path, and clipadapt.report.suite_report only aggregates the cells' own numbers.

Layout of a run directory: `suite.json` (the resolved config and its cells), `cells/<key>.json` (one per finished or
failed cell, written atomically), `cells/<key>/` (what a cell's command wrote), then summary.* from the report.
This module is torch-free: it expands, hashes, stores and loops; executing a cell is a callable it is given.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipadapt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject: tomli; python_version < "3.11")
    import tomli as tomllib

TASKS = ("fewshot", "dn", "retrieval", "captions", "backbones", "imo")
CELL_SCHEMA = "clipadapt.suite.cell/1"
SUITE_SCHEMA = "clipadapt.suite/1"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# dataset-table keys that are not command options: the dataset's name and its grid entry
_DATASET_META = ("name",)


# ------------------------------------------------------------------------------------------------ config
def load_config(path: str | Path, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Read a suite TOML and substitute `${VAR}` from `[vars]` updated by `overrides` (CLI `--set VAR=VALUE`)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read suite config ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    variables = {k: str(v) for k, v in raw.get("vars", {}).items()}
    variables.update(overrides or {})
    config = _substitute(raw, variables, path)
    config["vars"] = variables
    validate_config(config, path)
    return config


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """['DATA=/data', ...] -> {'DATA': '/data'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}': expected VAR=VALUE, e.g. DATA=/data")
        out[key.strip()] = value
    return out


def _substitute(value: Any, variables: dict[str, str], path: Path) -> Any:
    """`${VAR}` in every string of the config; an undefined variable names itself and how to set it."""
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise ConfigError(f"{path}: variable ${{{m.group(1)}}} is not set; pass --set {m.group(1)}=VALUE "
                                  "or define it under [vars]")
            return variables[m.group(1)]
        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: v if k == "vars" else _substitute(v, variables, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, path) for v in value]
    return value


def validate_config(config: dict[str, Any], path: str | Path = "suite config") -> None:
    """Every task names a known task and at least one dataset; fewshot tasks name methods and shots."""
    tasks = config.get("task")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{path}: no [[task]] tables; a suite needs at least one, e.g. [[task]] task = \"fewshot\"")
    for i, task in enumerate(tasks):
        where = f"{path}: [[task]] #{i + 1}"
        if task.get("task") not in TASKS:
            raise ConfigError(f"{where}: task = {task.get('task')!r}; valid: {', '.join(TASKS)}")
        if not task.get("datasets"):
            raise ConfigError(f"{where}: 'datasets' is empty")
        if task["task"] == "fewshot" and not (task.get("methods") and task.get("shots")):
            raise ConfigError(f"{where}: a fewshot task needs 'methods' and 'shots'")
        if task["task"] in ("fewshot", "dn", "imo") and not task.get("backbones") and not all(
                isinstance(d, dict) and "features" in d or _looks_like_dir(d) for d in task["datasets"]):
            raise ConfigError(f"{where}: give 'backbones' (model ids) for dataset specs")
    for row in config.get("expected", []):
        if "value" not in row:
            raise ConfigError(f"{path}: an [[expected]] row has no 'value': {row}")


def _looks_like_dir(entry: Any) -> bool:
    return isinstance(entry, str) and ":" not in entry.split("/")[0]


# ------------------------------------------------------------------------------------------------ cells
@dataclass
class Cell:
    """One run: a task on one dataset with one backbone (all backbones for 'backbones'), method and seed."""

    task: str
    label: str
    dataset: str
    source: dict[str, Any]
    backbone: str | None
    method: str | None
    seed: int | None
    shots: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """Everything that decides the cell's numbers (hashed into its key): every field, in field order."""
        return asdict(self)

    @property
    def key(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> str:
        parts = [self.label, self.dataset, self.backbone or "", self.method or "",
                 f"seed {self.seed}" if self.seed is not None else ""]
        return " / ".join(p for p in parts if p)


def dataset_entry(entry: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, source) of a `datasets` item: a spec string ('coop:eurosat:/d/eurosat' -> 'eurosat'), a feature
    directory string (its folder name), or a table with 'name' and one of spec / features / embeddings / ..."""
    if isinstance(entry, str):
        if _looks_like_dir(entry):
            return Path(entry.rstrip("/")).name, {"features": entry}
        parts = entry.split(":")
        name = parts[1] if parts[0] in ("coop", "torchvision") and len(parts) > 2 else Path(parts[-1].rstrip("/")).name
        return name, {"spec": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"a datasets entry must be a string or a table, got {entry!r}")
    source = {k: v for k, v in entry.items() if k not in _DATASET_META}
    if not source:
        raise ConfigError(
            f"datasets entry {entry} names no data (spec, features, embeddings, captions_json, judgments)")
    name = entry.get("name") or dataset_entry(next(iter(source.values())))[0]
    return str(name), source


def expand_cells(config: dict[str, Any]) -> list[Cell]:
    """Every cell of every task, in config order (task, dataset, backbone, method, seed)."""
    cells: list[Cell] = []
    for task in config["task"]:
        kind = task["task"]
        label = str(task.get("label", kind))
        backbones = list(task.get("backbones") or [None])
        seeds = list(task.get("seeds") or [None])
        options = dict(task.get("options", {}))
        if kind == "backbones":  # one cell runs every backbone
            backbones = [",".join(b for b in backbones if b)]
        methods = task["methods"] if kind == "fewshot" else [None if kind == "backbones" else task.get("method")]
        shots = [int(k) for k in task["shots"]] if kind == "fewshot" else None
        for entry in task["datasets"]:
            name, source = dataset_entry(entry)
            for backbone, method, seed in itertools.product(backbones, methods, seeds):
                cells.append(Cell(kind, label, name, source, backbone, method, seed, shots=shots, options=options))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        dup = next(c for c in cells if keys.count(c.key) > 1)
        raise ConfigError(f"the suite lists the cell '{dup.describe()}' twice; give the tasks distinct labels")
    return cells


# ------------------------------------------------------------------------------------------------ store
class SuiteStore:
    """A run directory: suite.json and one cells/<key>.json per finished or failed cell (atomic writes)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    def cell_path(self, cell: Cell | str) -> Path:
        return self.cells_dir / f"{cell if isinstance(cell, str) else cell.key}.json"

    def work_dir(self, cell: Cell) -> Path:
        return self.cells_dir / cell.key

    def save_suite(self, config: dict[str, Any], cells: list[Cell], meta: dict[str, Any]) -> None:
        _write_json(self.root / "suite.json", {"schema": SUITE_SCHEMA, **meta, "config": config,
                                               "cells": [{"key": c.key, **c.resolved()} for c in cells]})

    def load_suite(self) -> dict[str, Any]:
        path = self.root / "suite.json"
        if not path.is_file():
            raise ConfigError(f"{self.root}: no suite.json — not a suite run directory (clipadapt suite run CONFIG "
                              "--out DIR)")
        return json.loads(path.read_text(encoding="utf-8"))

    def read(self, key: str) -> dict[str, Any] | None:
        path = self.cell_path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: treated as pending, rerun

    def write(self, cell: Cell, record: dict[str, Any]) -> None:
        _write_json(self.cell_path(cell), record)

    def state(self, key: str) -> str:
        record = self.read(key)
        return "pending" if record is None else record.get("status", "pending")

    def status(self) -> list[dict[str, Any]]:
        """One row per cell of the saved suite: key, what it is, state and (failed) the error."""
        rows = []
        for c in self.load_suite()["cells"]:
            record = self.read(c["key"]) or {}
            rows.append({"key": c["key"], "task": c["label"], "dataset": c["dataset"], "backbone": c["backbone"],
                         "method": c["method"], "seed": c["seed"], "state": record.get("status", "pending"),
                         "seconds": record.get("seconds"), "error": (record.get("error") or {}).get("message")})
        return rows


def _write_json(path: Path, obj: Any) -> None:
    """Atomic (temp file + fsync + rename): a killed run never leaves half a cell file."""
    from clipadapt.fileio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8"))


# ------------------------------------------------------------------------------------------------ run
Execute = Callable[[Cell, Path], dict[str, Any]]


def run_cells(cells: list[Cell], store: SuiteStore, execute: Execute, *, provenance: dict[str, Any] | None = None,
              progress: bool = True, retry_failed: bool = True) -> dict[str, int]:
    """Run every cell without a finished result: `execute(cell, work_dir) -> result dict`.

    A cell that raises an Exception is recorded as failed (type, message, traceback tail) and the loop goes on;
    KeyboardInterrupt / SystemExit stop the loop, leaving finished cells on disk for the next run.
    Returns counts {'done', 'skipped', 'failed'}.
    """
    from tqdm import tqdm

    finished = ("done",) if retry_failed else ("done", "failed")
    todo = [cell for cell in cells if store.state(cell.key) not in finished]
    counts = {"done": 0, "skipped": len(cells) - len(todo), "failed": 0}
    bar = tqdm(todo, desc="suite cells", unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.describe()[:60])
        record = {"schema": CELL_SCHEMA, "key": cell.key, "cell": cell.resolved(), **(provenance or {}),
                  "started": _now()}
        start = time.perf_counter()
        try:
            result = execute(cell, store.work_dir(cell))
        except Exception as e:  # recorded; the other cells still run
            record.update(status="failed", seconds=time.perf_counter() - start, error={
                "type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()[-4000:]})
            counts["failed"] += 1
        else:
            record.update(status="done", seconds=time.perf_counter() - start, result=result)
            counts["done"] += 1
        record["finished"] = _now()
        store.write(cell, record)
    return counts


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------------ shipped configs
def shipped_configs() -> dict[str, Path]:
    """{name: path} of the configs shipped in clipadapt/configs/ (package data)."""
    folder = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a shipped config (`clipadapt suite list`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise ConfigError(f"{name_or_path}: no such file and no shipped config of that name; shipped: {', '.join(shipped)}")
