"""Every numeric CLI option is checked (issue 12, items 4 and 14): finite, inside its documented range, and the
range is shown in the command's --help. The options are found by walking the parsers, so a new option that uses a
bare `type=float`/`type=int` fails here."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from clipadapt.argtypes import range_text
from clipadapt.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, path + (name,))
        else:
            yield path, parser, action


def _numeric_options():
    """(command path, parser, action) of every option whose type yields numbers."""
    found = []
    for path, parser, action in _walk(build_parser()):
        if not action.option_strings or action.type is None:
            continue
        try:
            value = action.type("1")
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            found.append((path, parser, action))
    return found


OPTIONS = _numeric_options()
IDS = [" ".join(p) + " " + a.option_strings[-1] for p, _, a in OPTIONS]


def test_the_walk_finds_the_options_of_the_issue():
    names = {(p[0], a.option_strings[0]) for p, _, a in OPTIONS}
    assert {("eval", "--dn-lambda"), ("dn-sweep", "--lambdas"), ("fewshot", "--seeds"),
            ("sample-shots", "--seeds"), ("adapter", "--lr")} <= names
    assert len(OPTIONS) > 50


@pytest.mark.parametrize(("path", "parser", "action"), OPTIONS, ids=IDS)
def test_numeric_option_is_checked_and_documented(path, parser, action):
    where = f"clipadapt {' '.join(path)} {action.option_strings[0]}"
    allowed = range_text(action.type)
    assert allowed is not None, f"{where} uses an unchecked type {action.type!r}: use clipadapt.argtypes"
    for bad in ("nan", "inf", "-inf", "NaN"):
        with pytest.raises(argparse.ArgumentTypeError):
            action.type(bad)
    # the default lies in the range
    if action.default is not None and action.default is not argparse.SUPPRESS:
        shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        action.type(shown)
    # just below the lower bound (or a huge negative value) is refused
    rng = action.type.range
    below = rng.low - (1 if action.type.kind is int else 1e-9) if rng.low is not None else None
    if below is not None:
        with pytest.raises(argparse.ArgumentTypeError):
            action.type(str(below))
        if rng.low_open:
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(str(rng.low))
    if rng.high is not None:
        with pytest.raises(argparse.ArgumentTypeError):
            action.type(str(rng.high + (1 if action.type.kind is int else 1e-6)))
    help_text = " ".join(parser.format_help().split())
    assert f"[range: {allowed}]" in help_text, f"{where}: --help does not show the range {allowed}"


def _run(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["eval", "--features", "builtin:coco500", "--method", "dn", "--dn-lambda", "nan"],
    ["eval", "--features", "builtin:coco500", "--method", "dn", "--dn-lambda", "inf"],
    ["dn-sweep", "--features", "builtin:coco500", "--lambdas", "0.25,nan", "--out", "x"],
    ["fewshot", "--features", "x", "--seeds", "-1", "--out", "x"],
    ["sample-shots", "--dataset", "imagefolder:x", "--seeds", "1,-1", "--out", "x"],
    ["retrieval", "--features", "builtin:coco500", "--dn-repeats", "0"],
])
def test_bad_numbers_are_argument_errors_before_any_work(capsys, argv):
    code, err = _run(capsys, argv)
    assert code == 2
    assert "error:" in err and "expected" in err and "Traceback" not in err


def test_dn_lambda_nan_no_longer_runs_at_chance(tmp_path, capsys):
    code, err = _run(capsys, ["eval", "--features", "builtin:coco500", "--method", "dn", "--dn-lambda", "nan",
                              "--out", str(tmp_path / "r")])
    assert code == 2 and "--dn-lambda" in err and "finite" in err
    assert not (tmp_path / "r").exists()


def test_grid_values_must_be_finite():
    from clipadapt.errors import ConfigError
    from clipadapt.eval.search import parse_grid

    for spec in ("0,nan,1", "inf", "0:inf:5", "nan:1:3"):
        with pytest.raises(ConfigError, match="finite"):
            parse_grid(spec)
    assert parse_grid("0:1:4") == [0.0, 0.25, 0.5, 0.75]
    assert all(math.isfinite(v) for v in parse_grid("1e3,2"))


def test_a_valid_lambda_still_runs_and_is_recorded(tmp_path):
    assert main(["eval", "--features", "builtin:coco500", "--method", "dn", "--dn-lambda", "0.5",
                 "--out", str(tmp_path / "r")]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert '"lambda": 0.5' in json.dumps(results)


def test_library_samplers_refuse_negative_seeds():
    from clipadapt.data import sample_disjoint, sample_few_shot
    from clipadapt.errors import DatasetError

    labels = [0, 0, 1, 1, 0, 1]
    assert sample_few_shot(labels, 1, 0) == sample_few_shot(labels, 1, 0)
    with pytest.raises(DatasetError, match="seed must be a non-negative integer"):
        sample_few_shot(labels, 1, -1)
    with pytest.raises(DatasetError, match="seed must be a non-negative integer"):
        sample_disjoint(labels, 1, -1)
