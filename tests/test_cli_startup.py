"""A fast command line: `clipadapt --help`, every `clipadapt CMD --help` and argument errors answer without
importing torch (or numpy, torchvision, open_clip, matplotlib, scipy, safetensors), and `import clipadapt` keeps
its public names, resolved lazily (PEP 562). The import checks run in fresh interpreters: this test process has
torch loaded already."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "numpy", "torchvision", "open_clip", "matplotlib", "scipy", "safetensors", "PIL")

# The public API as it was when every name was imported eagerly: name -> the module that defines it.
PUBLIC = {
    "CacheError": "clipadapt.errors",
    "ClipadaptError": "clipadapt.errors",
    "ConfigError": "clipadapt.errors",
    "DatasetError": "clipadapt.errors",
    "FeatureDirError": "clipadapt.errors",
    "FeatureSet": "clipadapt.features.featureset",
    "FeatureSplit": "clipadapt.features.featureset",
    "NotFittedError": "clipadapt.errors",
    "WeightsUnavailableError": "clipadapt.errors",
    "ZeroShotClassifier": "clipadapt.methods.zeroshot",
    "DistributionNormalizer": "clipadapt.methods.dn",
    "TipAdapter": "clipadapt.methods.tip_adapter",
    "TipAdapterF": "clipadapt.methods.tip_adapter",
    "TipX": "clipadapt.methods.tip_x",
    "MeanLogits": "clipadapt.methods.ensembles",
    "MeanProbs": "clipadapt.methods.ensembles",
    "MajorityVote": "clipadapt.methods.ensembles",
    "MaxConfidence": "clipadapt.methods.ensembles",
    "MinEntropy": "clipadapt.methods.ensembles",
    "TemperatureScaledMean": "clipadapt.methods.ensembles",
    "Stacking": "clipadapt.methods.ensembles",
    "NeuralLogitController": "clipadapt.methods.logit_controller",
    "load_feature_dir": "clipadapt.features.io",
    "save_feature_dir": "clipadapt.features.io",
    "load_head": "clipadapt.heads.io",
}
COMMANDS = {"adapter", "backbones", "captions", "datasets", "dn-sweep", "eval", "export", "extract", "fewshot", "fit",
            "imo", "import-features", "models", "predict", "retrieval", "sample-shots", "search"}
LAZY_PACKAGES = ["clipadapt.features", "clipadapt.methods", "clipadapt.eval", "clipadapt.data", "clipadapt.encoders",
                 "clipadapt.heads", "clipadapt.adapters", "clipadapt.report"]


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})


# A wrapper around the real entry point: runs `main(argv)` for each argv, catching argparse's SystemExit, and
# records the exit code and which heavy modules were in sys.modules right after.
_WRAPPER = """
import contextlib, io, json, sys
from clipadapt.cli import build_parser, main
heavy = {heavy!r}
argvs = {argvs!r}
if argvs is None:  # every subcommand, and every ACTION of a subcommand that has its own subcommands
    top = next(a for a in build_parser()._actions if a.dest == "command")
    argvs = []
    for name, parser in top.choices.items():
        argvs.append([name, "--help"])
        nested = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        argvs += [[name, action, "--help"] for n in nested for action in n.choices]
report = []
for argv in argvs:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    report.append({{"argv": argv, "code": code, "heavy": [m for m in heavy if m in sys.modules],
                   "out": out.getvalue()[:300], "err": err.getvalue()[-300:]}})
print(json.dumps(report))
"""


def _run_cli(argvs: list[list[str]] | None) -> list[dict]:
    run = _python("-c", _WRAPPER.format(heavy=HEAVY, argvs=argvs))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_help_of_every_subcommand_exits_0_without_torch():
    report = _run_cli(None)
    commands = {r["argv"][0] for r in report}
    assert COMMANDS <= commands  # discovery still finds every subcommand
    assert ["adapter", "train", "--help"] in [r["argv"] for r in report]  # nested actions are covered too
    for r in report:
        assert r["code"] == 0, r
        assert r["out"].startswith("usage: clipadapt " + r["argv"][0]), r
        assert r["heavy"] == [], f"clipadapt {' '.join(r['argv'])} imported {r['heavy']}"


@pytest.mark.parametrize("argv, message", [
    (["eval", "--method", "nope"], "invalid choice: 'nope'"),
    (["extract", "--dataset", "imagefolder:/x"], "the following arguments are required: --model"),
    (["search", "--queries", "a:test", "--gallery", "a:test", "--backend", "annoy"], "invalid choice: 'annoy'"),
    (["fewshot", "--features", "fd", "--out", "o", "--shots", "1,two"], "expected an integer >= 1, got 'two'"),
    (["retrieval", "--dn-samples", "0"], "expected an integer >= 1 or 'all', got '0'"),
    (["nope"], "invalid choice: 'nope'"),
])
def test_argument_errors_exit_2_without_torch(argv, message):
    (r,) = _run_cli([argv])
    assert r["code"] == 2 and message in r["err"], r
    assert r["heavy"] == [], r


def test_python_m_clipadapt_help_imports_no_torch():
    """The real entry point, `python -m clipadapt`, read through -X importtime (every module it imported)."""
    for argv in (["--help"], ["extract", "--help"], ["eval", "--help"]):
        run = _python("-X", "importtime", "-m", "clipadapt", *argv)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.startswith("usage: clipadapt")
        imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
        assert "clipadapt.cli" in imported  # importtime did report the imports
        assert not {m.split(".")[0] for m in imported} & set(HEAVY), sorted(imported)


def test_import_clipadapt_defers_torch_until_a_name_needs_it():
    code = (
        "import sys, clipadapt; before = 'torch' in sys.modules; "
        "from clipadapt import TipAdapter; print(before, 'torch' in sys.modules, TipAdapter.__name__)"
    )
    run = _python("-c", code)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "True", "TipAdapter"]


def test_public_names_are_unchanged_and_resolve_to_their_defining_modules():
    import clipadapt
    import clipadapt.cli  # noqa: F401  (a real submodule attribute, listed by dir() below)

    assert clipadapt.__all__ == list(PUBLIC)  # same names, same order as the eager __init__ had
    for name, module in PUBLIC.items():
        assert getattr(clipadapt, name) is getattr(importlib.import_module(module), name), name
        assert name in vars(clipadapt)  # resolved once, then a plain module attribute
    assert set(PUBLIC) <= set(dir(clipadapt))
    assert {"__version__", "cli"} <= set(dir(clipadapt))  # real attributes are still listed


def test_from_import_works_and_unknown_names_fail():
    import clipadapt
    from clipadapt import DistributionNormalizer, TipAdapter, load_feature_dir  # noqa: F401

    assert DistributionNormalizer.__module__ == "clipadapt.methods.dn"
    with pytest.raises(AttributeError, match="module 'clipadapt' has no attribute 'TipAdaptr'"):
        clipadapt.TipAdaptr  # noqa: B018
    assert not hasattr(clipadapt, "TipAdaptr")
    with pytest.raises(ImportError, match="TipAdaptr"):
        from clipadapt import TipAdaptr  # noqa: F401


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_subpackage_exports_resolve_and_are_listed(package):
    module = importlib.import_module(package)
    assert module.__all__, package
    listed = set(dir(module))
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None and name in listed, (package, name)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        _ = module.no_such_name


def test_parser_defaults_and_choices_match_the_library():
    """The CLI reads defaults/choices from the torch-free clipadapt.constants; the library modules re-export them.
    Values written out: docs/methods.md §2 (DN* λ = 0.25, theory λ = 0.5), shard size, top-k backends."""
    from clipadapt.cli import build_parser
    from clipadapt.eval import dn_sweep, topk
    from clipadapt.eval.registry import list_eval_methods
    from clipadapt.features import shards
    from clipadapt.methods import dn

    assert (dn.DEFAULT_LAMBDA, dn.THEORY_LAMBDA) == (0.25, 0.5)
    assert shards.DEFAULT_SHARD_SIZE == 1024 and topk.BACKENDS == ("torch", "faiss")
    assert dn_sweep.DEFAULT_LAMBDAS == (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    parser = build_parser()
    args = parser.parse_args(["eval", "--features", "fd", "--method", "dn"])
    assert args.dn_lambda == 0.25 and args.dn_samples == 100
    assert parser.parse_args(["extract", "--model", "m", "--dataset", "d"]).shard_size == 1024
    sweep = parser.parse_args(["dn-sweep", "--features", "fd", "--out", "o"])
    assert sweep.lambdas == [0.0, 0.1, 0.25, 0.5, 0.75, 1.0] and sweep.samples[-1] == 1000
    sub = next(a for a in parser._actions if a.dest == "command").choices
    method = next(a for a in sub["eval"]._actions if a.dest == "method")
    assert list(method.choices) == list_eval_methods() and {"zeroshot", "dn"} <= set(method.choices)
    backend = next(a for a in sub["search"]._actions if a.dest == "backend")
    assert tuple(backend.choices) == ("torch", "faiss")


def test_datasets_listing_runs_without_torch():
    """`clipadapt datasets` is a registry listing: it answers without torch (unlike `models`, whose table is
    open_clip's registry, and open_clip imports torch)."""
    (listing, templates) = _run_cli([["datasets", "--kind", "coop"], ["datasets", "--templates", "imagenet"]])
    assert listing["code"] == 0 and listing["out"].startswith("| spec"), listing
    assert templates["code"] == 0 and "{}" in templates["out"], templates
    for r in (listing, templates):
        assert not {"torch", "numpy"} & set(r["heavy"]), r
