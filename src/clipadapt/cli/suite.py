"""`clipadapt suite run|status|report|list`: a declared grid of runs, one result file per cell, and its summary.

A cell is exactly one invocation of an existing subcommand (`fewshot`, `eval --method dn`, `retrieval`, `captions`,
`backbones`, `imo`): `cell_argv` builds its command line, the real parser parses it (same defaults and checks as
typing it), and the command's own code runs it. Each cell file records that command line, so any number in a
summary can be reproduced with one `clipadapt ...` call (docs/reproducing.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipadapt.cli._conventions import RESULTS_FILE, add_parser
from clipadapt.cli._outputs import RESUME, output_option, prepare_outputs
from clipadapt.errors import ConfigError
from clipadapt.report.provenance import path_fingerprint, provenance
from clipadapt.report.tables import markdown_table

if TYPE_CHECKING:  # imported where used, so building the parser stays cheap
    from clipadapt.eval.suite import Cell

COMMAND = "suite"
HELP = ("run a declared grid (datasets × backbones × methods × shots × seeds) resumably; status; summary with "
        "published numbers")
EXAMPLES = """
clipadapt suite run imo-coop-vitb16 --out runs/imo --set DATA=/data --set ADAPTER=adapters/vitb16
clipadapt suite status runs/imo
clipadapt suite report runs/imo
clipadapt suite list
"""

# task -> (the subcommand's argv prefix, its seed option); each writes `--out DIR`/results.json (docs/results.md)
_TASK_COMMANDS = {"fewshot": (["fewshot"], "--seeds"), "dn": (["eval", "--method", "dn"], "--dn-seed"),
                  "retrieval": (["retrieval"], "--dn-seed"), "captions": (["captions"], "--dn-seed"),
                  "backbones": (["backbones"], "--seed"), "imo": (["imo"], "--seed")}
# dataset-table keys that hold images or embeddings rather than a --model-free input
_NEEDS_MODEL = {"spec", "captions_json", "image_root"}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite_command", metavar="ACTION", required=True)
    run = add_parser(sub, "run", help="run (or resume) every unfinished cell of CONFIG, then write the summary",
                     examples="clipadapt suite run dn-vitb32 --out runs/dn --set DATA=/data\n"
                              "clipadapt suite run my-suite.toml --out runs/mine --dry-run\n")
    run.add_argument("config", help="suite TOML file, or the name of a shipped config (clipadapt suite list)")
    output_option(run.add_argument("--out", type=Path, required=True,
                                   help="run directory (cells/, suite.json, summary.*); an existing one is resumed, "
                                        "so a non-empty directory must hold suite.json"), RESUME, marker="suite.json")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="VAR=VALUE",
                     help="set a ${VAR} of the config, e.g. --set DATA=/data (repeatable)")
    run.add_argument("--no-retry-failed", action="store_true",
                     help="skip cells that failed before instead of retrying them")
    run.add_argument("--no-plots", action="store_true", help="write the summary tables without plots")
    run.add_argument("--dry-run", action="store_true", help="list the cells and their commands; run nothing")
    status = add_parser(sub, "status", help="list the cells of a run directory: done / pending / failed",
                        examples="clipadapt suite status runs/dn\n")
    status.add_argument("out", type=Path, help="run directory")
    report = add_parser(sub, "report", help="(re)write summary.md/.csv/.json and plots of a run directory",
                        examples="clipadapt suite report runs/dn --no-plots\n")
    report.add_argument("out", type=Path, help="run directory")
    report.add_argument("--no-plots", action="store_true", help="write the summary tables without plots")
    add_parser(sub, "list", help="list the shipped configs", examples="clipadapt suite list\n")


# ------------------------------------------------------------------------------------------------ cell -> argv
def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _option_args(options: dict[str, Any]) -> list[str]:
    """{'views': 10, 'grid': ['tip.alpha=1'], 'allow_fewer': true}
    -> ['--views', '10', '--grid', ..., '--allow-fewer']."""
    out: list[str] = []
    for key, value in options.items():
        if value is False or value is None:
            continue
        if value is True:
            out.append(_flag(key))
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            for v in value:  # repeatable string options (--grid)
                out += [_flag(key), v]
        elif isinstance(value, list):
            out += [_flag(key), ",".join(str(v) for v in value)]
        else:
            out += [_flag(key), str(value)]
    return out


def _backbone_path(value: str, backbone: str | None) -> str:
    """`{backbone}` in a path becomes the model id with '/' and '@' made file-name safe."""
    safe = (backbone or "").replace("/", "-").replace("@", "-")
    return value.replace("{backbone}", safe)


def cell_argv(cell: Cell, out: Path) -> list[str]:
    """The `clipadapt` command line (without the program name) that computes `cell` into `out`."""
    prefix, seed_option = _TASK_COMMANDS[cell.task]
    argv = list(prefix)
    source = dict(cell.source)
    backbones = (cell.backbone or "").split(",") if cell.task == "backbones" else [cell.backbone]
    if cell.task == "backbones" and "features" in source:
        argv += ["--features", *[_backbone_path(source.pop("features"), b) for b in backbones]]
    elif cell.task == "backbones":
        argv += ["--models", cell.backbone or ""]
    elif cell.backbone and _NEEDS_MODEL & set(source):
        argv += ["--model", cell.backbone]
    for key, value in source.items():
        argv += ["--dataset" if key == "spec" else _flag(key), _backbone_path(str(value), cell.backbone)]
    if cell.task == "fewshot":
        argv += ["--shots", ",".join(str(k) for k in cell.shots or []), "--methods", cell.method or ""]
    if cell.seed is not None:
        argv += [seed_option, str(cell.seed)]
    argv += _option_args(cell.options)
    argv += ["--out", str(out)]
    return argv


def execute_cell(cell: Cell, out: Path) -> dict[str, Any]:
    """Run the cell's command; returns {'command', 'output'} (output: the command's results JSON)."""
    from clipadapt.cli import build_parser

    argv = cell_argv(cell, out)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit:  # argparse exits on a bad option: a failed cell, not the end of the suite
        raise ConfigError(f"clipadapt {shlex.join(argv)}: {errors.getvalue().strip().splitlines()[-1:]}") from None
    args._argv = argv  # the provenance of the cell's results names the cell's own command line
    # the cell's directory belongs to the run: an earlier, unfinished attempt's files are replaced whole, after
    # the command's own output checks (not inside or around its inputs, writable)
    args.overwrite = True
    prepare_outputs(args, stage=False)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        _run_command(args, cell)
    output = json.loads((out / RESULTS_FILE).read_text(encoding="utf-8"))
    return {"command": "clipadapt " + shlex.join(argv), **_data_provenance(cell, output), "output": output}


def _data_provenance(cell: Cell, output: dict[str, Any]) -> dict[str, Any]:
    """The model, data and data fingerprint from the provenance block of the cell's results (docs/results.md)."""
    prov = output.get("provenance") or {}
    return {"model": prov.get("model") or cell.backbone, "data": prov.get("data"),
            "data_fingerprint": prov.get("data_fingerprint")}


def _run_command(args: argparse.Namespace, cell: Cell) -> None:
    """The cell's command; for fewshot what it computes and writes to results.json, without its tables and plot."""
    if cell.task == "fewshot":
        from clipadapt.cli.fewshot import run_protocol

        run_protocol(args, progress=False)
        return
    code = args._run(args)
    if code:
        raise ConfigError(f"clipadapt {cell.task} exited with {code}")


# ------------------------------------------------------------------------------------------------ actions
def _provenance(args: argparse.Namespace, config_path: Path, cells: list) -> dict[str, Any]:
    """This suite invocation's provenance (docs/results.md): the config file is its data, the backbones its models."""
    models = sorted({b for c in cells if c.backbone for b in c.backbone.split(",")}) or None
    return {"provenance": provenance(getattr(args, "_argv", None), model=models, data=str(config_path),
                                     data_fingerprint=path_fingerprint(config_path)),
            "config_file": str(config_path)}


def _run(args: argparse.Namespace) -> int:
    from clipadapt.eval.suite import SuiteStore, expand_cells, load_config, parse_sets, resolve_config_path, run_cells

    path = resolve_config_path(args.config)
    config = load_config(path, parse_sets(args.sets))
    cells = expand_cells(config)
    store = SuiteStore(args.out)
    if args.dry_run:
        for cell in cells:
            print(f"{cell.key}  {store.state(cell.key):8s}  clipadapt "
                  f"{shlex.join(cell_argv(cell, store.work_dir(cell)))}")
        return 0
    provenance = _provenance(args, path, cells)
    store.save_suite(config, cells, provenance)
    counts = run_cells(cells, store, execute_cell, provenance=provenance, retry_failed=not args.no_retry_failed)
    print(f"suite {config.get('name', path.stem)}: {counts['done']} run, {counts['skipped']} already done/skipped, "
          f"{counts['failed']} failed (clipadapt suite status {args.out})")
    _report(args.out, plots=not args.no_plots, argv=getattr(args, "_argv", None))
    return 0 if counts["failed"] == 0 else 1


def _status(args: argparse.Namespace) -> int:
    from clipadapt.eval.suite import SuiteStore

    rows = SuiteStore(args.out).status()
    print(markdown_table([{k: v for k, v in r.items() if k != "error"} for r in rows]), end="")
    totals = {s: sum(r["state"] == s for r in rows) for s in ("done", "pending", "failed")}
    print(f"{totals['done']} done, {totals['pending']} pending, {totals['failed']} failed of {len(rows)} cells")
    for r in rows:
        if r["state"] == "failed":
            print(f"failed {r['key']} ({r['task']} / {r['dataset']} / {r['backbone']}): {r['error']}")
    return 0


def _report(out: Path, *, plots: bool = True, argv: list[str] | None = None) -> None:
    from clipadapt.report.suite_report import write_suite_report

    written = write_suite_report(out, plots=plots, argv=argv)
    print("wrote " + ", ".join(str(p) for p in written))


def _list(args: argparse.Namespace) -> int:
    from clipadapt.eval.suite import shipped_configs

    for name, path in shipped_configs().items():
        first = next((line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.startswith("#")), "")
        print(f"{name:24s} {first}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.suite_command == "report":
        _report(args.out, plots=not args.no_plots, argv=getattr(args, "_argv", None))
        return 0
    return {"run": _run, "status": _status, "list": _list}[args.suite_command](args)
