"""The conventions every subcommand follows (cli/_conventions.py): examples and defaults in --help, --version, bare
`clipadapt`, a quiet exit on a closed pipe, --out DIR with the old spellings still working, the baseline next to
the method, identical DN draws said as such, rounded JSON, quiet library logs, and provenance in every results file."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from _caption_files import pascal_files
from _imo_images import write_stripes_imagefolder
from conftest import make_clustered_features
from safetensors.torch import save_file

import clipadapt
from clipadapt.cli import _command_modules, build_parser, main
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.features.retrieval_dir import RetrievalSet, save_retrieval_split
from clipadapt.report import provenance as prov
from clipadapt.report.tables import round_float, write_json

SRC = Path(clipadapt.__file__).resolve().parents[1]
COMMANDS = {m.COMMAND: m for m in _command_modules()}


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return out.getvalue()


def _nested(command: str) -> list[str]:
    parser = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return [name for a in parser._actions if a.__class__.__name__ == "_SubParsersAction" for name in a.choices]


# ----------------------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_examples_and_its_help_ends_with_them(command):
    examples = [line.strip() for line in COMMANDS[command].EXAMPLES.strip().splitlines()]
    assert examples and examples[0].startswith(f"clipadapt {command}"), examples
    for argv in [[command, "--help"]] + [[command, action, "--help"] for action in _nested(command)]:
        text = _help(argv)
        assert "\nexamples:\n" in text, argv
        shown = [line.strip() for line in text.split("\nexamples:\n", 1)[1].strip().splitlines()]
        assert shown and all(line.startswith(("clipadapt ", "--")) for line in shown), (argv, shown)
        assert shown[0].startswith(f"clipadapt {' '.join(argv[:-1])}"), (argv, shown)
    assert "\n".join(examples[:1]) in _help([command, "--help"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_defaults_and_never_a_none_default(command):
    for argv in [[command, "--help"]] + [[command, action, "--help"] for action in _nested(command)]:
        text = " ".join(_help(argv).split())  # argparse wraps lines
        assert "default: None" not in text and "default: False" not in text, argv
    parsers = [next(a for a in build_parser()._actions if a.dest == "command").choices[command]]
    parsers += [c for a in parsers[0]._actions if a.__class__.__name__ == "_SubParsersAction" for c in a.choices.values()]
    for parser in parsers:  # every option whose default means something says it (numbers 0 included)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.help != "==SUPPRESS==" and not (
                    action.default is None or action.default is False or action.default == [] or action.default == "==SUPPRESS=="):
                assert "default" in formatter._get_help_string(action).lower(), (parser.prog, action.option_strings)


def test_help_default_of_an_option_written_as_typed():
    text = " ".join(_help(["eval", "--help"]).split())
    assert "--batch-size BATCH_SIZE default: 64" in text
    assert "--split SPLIT split to evaluate (default: test)" in text
    assert "--cache-dir CACHE_DIR feature cache root (default: $CLIPADAPT_CACHE or ~/.cache/clipadapt)" in text
    sweep = " ".join(_help(["dn-sweep", "--help"]).split())
    assert "(default: 0.0,0.1,0.25,0.5,0.75,1.0)" in sweep


def test_version_and_bare_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"clipadapt {clipadapt.__version__}"
    assert main([]) == 0  # bare `clipadapt`: the help, on stdout, exit 0
    out = capsys.readouterr().out
    assert out.startswith("usage: clipadapt") and "COMMAND" in out and "\nexamples:\n" in out


@pytest.mark.parametrize("argv", [["datasets"], ["--help"]])
def test_closed_pipe_exits_quietly(argv):
    """`clipadapt datasets | head`: the reader is gone before anything is written; no traceback, exit 141.
    (Torch-free commands: a real process and a real pipe in well under a second.)"""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([sys.executable, "-m", "clipadapt", *argv], stdout=write_end, stderr=subprocess.PIPE,
                             text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    finally:
        os.close(write_end)
    assert "Traceback" not in run.stderr and "BrokenPipeError" not in run.stderr, run.stderr
    assert run.returncode == (0 if argv == ["--help"] else 141)  # argparse itself ignores write errors of --help


class _ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_models_into_a_closed_pipe_returns_141_without_raising(monkeypatch):
    """`clipadapt models | head` in process (open_clip's registry is slow to import in a fresh interpreter)."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["models", "ViT-B-32"]) == 141


# ----------------------------------------------------------------------------------------- --out and old spellings
@pytest.fixture
def featdir(tmp_path):
    """train/val/test/unlabeled splits (24 rows each) of 3 noisy classes, with a model id."""
    protos, image, labels = make_clustered_features(num_classes=3, per_class=32, dim=8, seed=0, noise=1.0)
    rows = torch.arange(image.shape[0])
    splits = {name: FeatureSplit(image[rows % 4 == k], labels[rows % 4 == k])
              for k, name in enumerate(("train", "val", "test", "unlabeled"))}
    fs = FeatureSet([f"class {i}" for i in range(3)], protos, splits, {"model": "tiny-test@none", "dataset": "clusters"})
    return save_feature_dir(fs, tmp_path / "feats")


def test_out_is_a_directory_and_old_json_file_form_still_works(tmp_path, featdir, capsys):
    assert main(["eval", "--features", str(featdir), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "zeroshot"
    assert "deprecated" not in capsys.readouterr().err
    assert main(["eval", "--features", str(featdir), "--out", str(tmp_path / "old.json")]) == 0
    assert json.loads((tmp_path / "old.json").read_text())["method"] == "zeroshot"
    err = capsys.readouterr().err
    assert "clipadapt: deprecated: --out" in err and "takes a directory" in err


def test_dn_sweep_out_dir_is_renamed_out_and_still_accepted(tmp_path, featdir, capsys):
    args = ["dn-sweep", "--features", str(featdir), "--lambdas", "0,0.5", "--samples", "4", "--seeds", "1"]
    assert main(args + ["--out-dir", str(tmp_path / "old")]) == 0
    assert "clipadapt: deprecated: --out-dir is now --out" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    for name in ("results.json", "sweep.csv", "sweep.md", "sweep.png"):
        assert (tmp_path / "old" / name).is_file() and (tmp_path / "new" / name).is_file(), name
    with pytest.raises(SystemExit):
        main(args)  # neither spelling: argparse's "required" error
    assert "one of the arguments --out is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- console summaries
def test_eval_prints_the_baseline_next_to_the_method(tmp_path, featdir, capsys):
    assert main(["eval", "--features", str(featdir), "--method", "dn", "--out", str(tmp_path / "r")]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    top1, base = res["top1"], res["without_dn"]["top1"]
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dn: top1"))
    assert line.startswith(f"dn: top1 {top1:.2f} (zero-shot {base:.2f}, {top1 - base:+.2f})  top5 "), line


def test_retrieval_prints_clip_next_to_dn_and_identical_draws_are_said(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(30, 8, generator=g)
    text = image + 0.8 * torch.randn(30, 8, generator=g) + 1.0
    save_retrieval_split(tmp_path / "ret", "test", RetrievalSet(image, text, torch.arange(30), meta={"model": "m@t"}))
    assert main(["retrieval", "--embeddings", str(tmp_path / "ret"), "--dn-source", "test", "--dn-samples", "all",
                 "--dn-repeats", "3", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    dn, plain = res["dn"]["mean"]["i2t R@1"], res["plain"]["i2t"]["R@1"]
    assert f"dn: i2t R@1 {dn:.2f} (CLIP {plain:.2f}, {dn - plain:+.2f})" in out
    assert "the 3 DN draws are identical" in out and "±" not in out
    assert res["dn"]["draws_identical"] is True
    assert (tmp_path / "r" / "recall.md").is_file() and (tmp_path / "r" / "recall.csv").is_file()


def test_eval_dn_all_samples_with_repeats_says_identical_draws(tmp_path, featdir, capsys):
    assert main(["eval", "--features", str(featdir), "--method", "dn", "--dn-samples", "all", "--dn-repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "the 3 draws are identical" in out and "± 0.00" not in out
    assert main(["eval", "--features", str(featdir), "--method", "dn", "--dn-samples", "5", "--dn-repeats", "3"]) == 0
    assert "dn over 3 draws: top1" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- JSON, logging
def test_json_floats_are_rounded_to_4_decimals_keeping_small_values():
    assert round_float(56.74999952316284) == 56.75 and round_float(-1.2909944487358056) == -1.291
    assert round_float(0.7225925925925926) == 0.72259  # below 1: 5 significant digits
    assert round_float(2.3456789e-7) == 2.3457e-7 and round_float(0.0) == 0.0


def test_results_json_has_no_float32_noise(tmp_path):
    path = write_json(tmp_path / "r.json", {"top1": torch.tensor(56.75, dtype=torch.float32).double().item() + 4.7e-7,
                                            "nested": [{"x": 1 / 3}], "n": 7, "nan": float("nan")})
    text = path.read_text()
    assert json.loads(text) == {"top1": 56.75, "nested": [{"x": 0.33333}], "n": 7, "nan": None}
    assert not re.search(r"\d\.\d{6,}", text)


def test_library_info_logs_only_with_verbose(caplog):
    from clipadapt.cli import _configure_logging

    root = logging.getLogger()
    saved = root.level, logging.getLogger("clipadapt").level
    try:
        with caplog.at_level(logging.NOTSET):
            root.setLevel(logging.NOTSET)
            _configure_logging(False)
            logging.info("open_clip-style root INFO")  # open_clip logs through the root logger
            logging.getLogger("clipadapt.features.cache").info("clipadapt INFO")
            _configure_logging(True)
            logging.info("verbose root INFO")
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["clipadapt INFO", "verbose root INFO"]
    finally:
        root.setLevel(saved[0])
        logging.getLogger("clipadapt").setLevel(saved[1])


# ----------------------------------------------------------------------------------------- provenance
def test_git_commit_is_the_checkouts_head():
    checkout = SRC.parent
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and (checkout / ".git").exists():
        assert prov.git_commit() == head.stdout.strip()
    else:  # installed from an archive: no commit, and no error either
        assert prov.git_commit() is None


def _literal_fingerprint(files: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256(b"files-sha256-v1")
    for name, data in sorted(files):
        digest.update(f"\0{name}\0{len(data)}\0".encode() + data)
    return f"files-sha256-v1:{digest.hexdigest()}"


def test_path_fingerprint_hashes_names_sizes_and_contents(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "meta.json").write_bytes(b'{"classnames": ["a"]}')
    (d / "sub" / "x.bin").write_bytes(bytes(range(200)))
    expected = _literal_fingerprint([("meta.json", b'{"classnames": ["a"]}'), ("sub/x.bin", bytes(range(200)))])
    assert prov.path_fingerprint(d) == expected
    copy = tmp_path / "elsewhere" / "d2"
    copy.mkdir(parents=True)
    (copy / "sub").mkdir()
    (copy / "meta.json").write_bytes((d / "meta.json").read_bytes())
    (copy / "sub" / "x.bin").write_bytes((d / "sub" / "x.bin").read_bytes())
    assert prov.path_fingerprint(copy) == expected  # the location does not matter
    (copy / "sub" / "x.bin").write_bytes(bytes(range(1, 201)))  # same size, other bytes
    assert prov.path_fingerprint(copy) != expected
    assert prov.path_fingerprint(tmp_path / "missing") is None and prov.path_fingerprint(None) is None


def test_large_files_are_fingerprinted_by_sampled_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(prov, "FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(prov, "SAMPLES", 3)
    monkeypatch.setattr(prov, "SAMPLE_BYTES", 10)
    data = bytes(i % 251 for i in range(2000))
    (tmp_path / "big.bin").write_bytes(data)
    windows = data[0:10] + data[995:1005] + data[1990:2000]  # first, middle, last: offsets i * (2000 - 10) / 2
    digest = hashlib.sha256(b"files-sha256-v1")
    digest.update(b"\0big.bin\x002000\0" + windows)
    assert prov.path_fingerprint(tmp_path / "big.bin") == f"files-sha256-v1:{digest.hexdigest()}"


@pytest.fixture
def inputs(tmp_path, featdir):
    """One tiny input of every kind a results-writing command reads."""
    fs2 = FeatureSet([f"class {i}" for i in range(3)], torch.randn(3, 8, generator=torch.Generator().manual_seed(9)),
                     {s: FeatureSplit(torch.randn(24, 8, generator=torch.Generator().manual_seed(k)),
                                      torch.arange(3).repeat_interleave(8))
                      for k, s in enumerate(("train", "val", "test"))}, {"model": "other-test@none"})
    g = torch.Generator().manual_seed(0)
    image = torch.randn(12, 8, generator=g)
    caption = image + 0.5 * torch.randn(12, 8, generator=g)
    save_retrieval_split(tmp_path / "ret", "test", RetrievalSet(image, caption, torch.arange(12), meta={"model": "m@t"}))
    save_file({"image": image, "caption": caption}, str(tmp_path / "emb.safetensors"))
    with open(tmp_path / "j.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "human"])
        w.writerows([[i, (i * 5) % 12, 1 + i % 4] for i in range(12)])
    (tmp_path / "suite.toml").write_text(f'[[task]]\ntask = "dn"\ndatasets = ["{featdir}"]\noptions = {{ dn-samples = 4 }}\n')
    pascal = pascal_files(tmp_path, [(f"{2 * i:03d}.png", f"caption {i}", f"other {i}", 1 + i % 4) for i in range(4)],
                          [[1] * 30 + [-1] * 18] * 4, [["a ref", "b ref"]] * 4)
    return {"feats": featdir, "feats2": save_feature_dir(fs2, tmp_path / "feats2"), "ret": tmp_path / "ret",
            "suite": tmp_path / "suite.toml", "pascal": pascal,
            "emb": tmp_path / "emb.safetensors", "judgments": tmp_path / "j.csv",
            "images": write_stripes_imagefolder(tmp_path / "stripes", n=8)}


# command -> (argv builder, results file under --out, expected model in the provenance)
RUNS = {
    "eval": (lambda i, o: ["eval", "--features", i["feats"], "--method", "dn", "--out", o], "results.json", "tiny-test@none"),
    "fewshot": (lambda i, o: ["fewshot", "--features", i["feats"], "--shots", "1", "--seeds", "1", "--methods",
                              "zeroshot,tip", "--out", o], "results.json", "tiny-test@none"),
    "retrieval": (lambda i, o: ["retrieval", "--embeddings", i["ret"], "--dn-source", "test", "--out", o],
                  "results.json", "m@t"),
    "captions": (lambda i, o: ["captions", "--judgments", i["judgments"], "--embeddings", i["emb"], "--model", "m@t",
                               "--out", o], "results.json", "m@t"),
    "dn-sweep": (lambda i, o: ["dn-sweep", "--features", i["feats"], "--lambdas", "0,0.5", "--samples", "4",
                               "--seeds", "1", "--out", o], "results.json", "tiny-test@none"),
    "imo": (lambda i, o: ["imo", "--features", i["feats"], "--out", o], "results.json", "tiny-test@none"),
    "backbones": (lambda i, o: ["backbones", "--features", i["feats"], i["feats2"], "--cost", "none",
                                "--nlc-max-epochs", "1", "--no-normalisation-study", "--out", o],
                  "results.json", ["tiny-test@none", "other-test@none"]),
    "suite": (lambda i, o: ["suite", "run", i["suite"], "--no-plots", "--out", o], "summary.json", None),
    "robustness": (lambda i, o: ["robustness", "--features", i["feats"], "--variant", f"imagenet_v2={i['feats']}",
                                 "--shots", "1", "--seeds", "1", "--methods", "zeroshot", "--val-from-train", "1",
                                 "--out", o], "results.json", "tiny-test@none"),
    "pascal50s": (lambda i, o: ["pascal50s", "--pairs", i["pascal"][0], "--consensus", i["pascal"][1], "--image-root",
                                i["images"] / "horizontal_stripes", "--model", "clipadapt-test-tiny-vit", "--out", o],
                  "results.json", "clipadapt-test-tiny-vit"),
    "search": (lambda i, o: ["search", "--queries", f"{i['feats']}:test", "--gallery", f"{i['feats']}:train", "--k", "3",
                             "--out", o], "results.json", "tiny-test@none"),
    "sample-shots": (lambda i, o: ["sample-shots", "--dataset", f"imagefolder:{i['images']}", "--shots", "1",
                                   "--seeds", "1", "--out", o], "shots1_seed1.json", None),
    "adapter train": (lambda i, o: ["adapter", "train", "--model", "clipadapt-test-tiny-vit", "--data",
                                    f"imagefolder:{i['images']}", "--batch-size", "2", "--max-steps", "1",
                                    "--no-progress", "--device", "cpu", "--out", o], "adapter.json",
                      "clipadapt-test-tiny-vit"),
}


def test_every_results_writing_command_is_covered():
    """A new command with --out gets a row in RUNS (listings, feature-directory writers, `verify` and the head
    commands excepted: `fit` writes one head file, its provenance in the file's metadata (tests/test_heads.py); `predict`
    and `export` write predictions and a model file)."""
    writers = {c for c, m in COMMANDS.items()
               if c not in ("models", "datasets", "extract", "import-features", "adapter", "caption-data", "fit",
                            "predict", "export", "verify")}
    assert writers | {"adapter train"} == set(RUNS)


@pytest.mark.parametrize("command", sorted(RUNS))
def test_results_file_says_where_it_came_from(command, inputs, tmp_path):
    build, filename, model = RUNS[command]
    out = tmp_path / "out"
    argv = [str(a) for a in build(inputs, out)]
    assert main(argv) == 0
    p = json.loads((out / filename).read_text())["provenance"]
    assert p["schema"] == prov.SCHEMA and p["clipadapt_version"] == clipadapt.__version__
    assert p["git_commit"] == prov.git_commit()
    assert p["command"].split()[:len(command.split()) + 1] == ["clipadapt", *command.split()]
    assert p["command"].endswith(str(out))
    when = datetime.strptime(p["created_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 3600
    assert p["model"] == model
    assert p["data"]
    prints = p["data_fingerprint"] if isinstance(p["data_fingerprint"], dict) else {"": p["data_fingerprint"]}
    assert prints and all(isinstance(v, str) and re.fullmatch(r"(files|dataset)-sha256(-v1)?:[0-9a-f]{64}", v)
                          for v in prints.values()), prints
    if command in ("eval", "dn-sweep", "imo", "fewshot"):  # one feature directory: its fingerprint, recomputed
        assert prov.path_fingerprint(inputs["feats"]) in prints.values()


def test_captions_results_name_their_model_and_data(inputs, tmp_path):
    out = tmp_path / "c"
    assert main(["captions", "--judgments", str(inputs["judgments"]), "--embeddings", str(inputs["emb"]),
                 "--model", "m@t", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "m@t"
    assert res["data"] == {"judgments": str(inputs["judgments"]), "n_judgments": 12, "embeddings": str(inputs["emb"])}
    assert {"correlations.md", "correlations.csv", "scores.csv"} <= {p.name for p in out.iterdir()}
