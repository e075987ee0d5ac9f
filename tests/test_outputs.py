"""Output paths (cli/_outputs.py) and the CLI's one exception handler (cli/__init__.py), issue 12 items 1, 2, 12, 13:
no output may be or lie inside an input, directory outputs appear whole or not at all (--overwrite replaces them
whole), unwritable outputs are refused before anything is computed, and every OSError is one line naming the path."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clustered_features

import clipadapt.fileio
from clipadapt.cli import _outputs, build_parser, main
from clipadapt.errors import OutputError
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.features.io import load_feature_dir

OUTPUT_LIKE = re.compile(r"^(out|out_dir|table|save_\w+|\w+_out)$")


def _leaf_parsers() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """([command, action...], parser) of every (nested) subcommand."""
    found = []

    def walk(path, parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append((path, parser))
        for sub in subs:
            for name, child in sub.choices.items():
                walk(path + [name], child)

    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in top.choices.items():
        walk([name], parser)
    return found


def _output_cases():
    return [pytest.param(path, action.dest, id=" ".join(path) + " " + action.option_strings[0])
            for path, parser in _leaf_parsers() for action in parser._actions if _outputs.is_output(action)]


def _namespace(path: list[str]) -> argparse.Namespace:
    """The namespace `parse_args` gives `path` with every option at its default, `_parser` set as main sets it."""
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = top.choices[path[0]]
    ns = argparse.Namespace(command=path[0], _parser=command)
    for action in _outputs.command_actions(ns):
        if not isinstance(action, argparse._SubParsersAction) and action.dest != argparse.SUPPRESS:
            setattr(ns, action.dest, action.default)
    p = command
    for name in path[1:]:  # the nested subcommand chosen
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        setattr(ns, sub.dest, name)
        p = sub.choices[name]
        for action in p._actions:
            if action.dest != argparse.SUPPRESS and not hasattr(ns, action.dest):
                setattr(ns, action.dest, action.default)
    return ns


def _input_value(action: argparse.Action, path: Path):
    """`path` as the value this input option would hold after parsing; None when it cannot name a path."""
    for text in (str(path), f"imagenet_a={path}"):  # a plain path, or NAME=DIR (robustness --variant)
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        return [value] if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction) else value
    return None


def _input_actions(ns: argparse.Namespace) -> list[argparse.Action]:
    outputs = {a.dest for a in _outputs.command_actions(ns) if _outputs.is_output(a)}
    return [a for a in _outputs.command_actions(ns)
            if a.dest not in outputs and not a.choices and a.option_strings is not None
            and (a.type is Path or a.dest in _outputs.SPEC_OPTIONS or a.dest in {"logits", "embeddings", "text"})]


# ----------------------------------------------------------------------------------------- every output option
COMMANDS_WITHOUT_INPUTS = {"models", "datasets"}


@pytest.mark.parametrize(("path", "dest"), _output_cases())
def test_every_output_option_refuses_a_path_that_is_or_lies_inside_an_input(path, dest, tmp_path):
    """Parametrised over every output option of every subcommand's parser, so a new command is covered."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"x")
    ns = _namespace(path)
    tried = []
    for action in _input_actions(ns):
        for input_path, output_path in ((folder, folder / "out"), (folder / "a.npy", folder / "a.npy")):
            value = _input_value(action, input_path)
            if value is None:
                continue
            case = argparse.Namespace(**vars(ns))
            setattr(case, action.dest, value)
            setattr(case, dest, output_path)
            with pytest.raises(OutputError, match=re.escape(str(input_path.resolve()))):
                _outputs.prepare_outputs(case, stage=False)
            tried.append(action.dest)
    assert tried or path[0] in COMMANDS_WITHOUT_INPUTS, f"no input option of {path} was exercised"


def test_every_option_that_names_an_output_is_declared_as_one():
    for path, parser in _leaf_parsers():
        marked = {a.dest for a in parser._actions if _outputs.is_output(a)}
        for action in parser._actions:
            if OUTPUT_LIKE.match(action.dest) and action.option_strings and action.type in (Path, str, None):
                assert action.dest in marked, f"clipadapt {' '.join(path)} {action.option_strings}: not declared"
            if _outputs.is_output(action):
                assert action.type is Path, (path, action.option_strings)


def test_every_command_with_a_directory_output_takes_overwrite():
    for path, parser in _leaf_parsers():
        kinds = [getattr(a, _outputs._MARK)[0] for a in parser._actions if _outputs.is_output(a)]
        has_dir = any(k not in (_outputs.FILE, _outputs.RESUME) for k in kinds)
        assert ("--overwrite" in parser._option_string_actions) == has_dir, path


# ----------------------------------------------------------------------------------------- item 1: inputs
@pytest.fixture
def featdir(tmp_path) -> Path:
    protos, image, labels = make_clustered_features(num_classes=3, per_class=8, dim=8, seed=0)
    fs = FeatureSet([f"c{i}" for i in range(3)], protos,
                    {"test": FeatureSplit(image, labels), "unlabeled": FeatureSplit(image[:10], None)},
                    {"model": "m@t", "dataset": "clusters"})
    return save_feature_dir(fs, tmp_path / "feats")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("option, name", [("--out", "test.safetensors"), ("--save-logits", "text.safetensors"),
                                          ("--out", "")])
def test_eval_refuses_to_write_over_its_feature_files(featdir, option, name, capsys):
    before = _digest(featdir)
    assert main(["eval", "--features", str(featdir), option, str(featdir / name)]) == 2
    err = capsys.readouterr().err
    assert str(featdir) in err and "input" in err and "--features" in err and "Traceback" not in err
    assert _digest(featdir) == before
    assert main(["eval", "--features", str(featdir)]) == 0  # the next run still works


def test_an_output_reached_through_a_symlink_into_an_input_is_refused(featdir, tmp_path, capsys):
    (tmp_path / "link").symlink_to(featdir)
    before = _digest(featdir)
    assert main(["eval", "--features", str(featdir), "--save-logits", str(tmp_path / "link" / "test.safetensors")]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert _digest(featdir) == before


def test_overwrite_never_replaces_a_directory_that_holds_an_input(tmp_path, capsys):
    np.save(tmp_path / "text.npy", np.eye(3, 4, dtype=np.float32))
    np.save(tmp_path / "img.npy", np.eye(3, 4, dtype=np.float32))
    assert main(["import-features", "--out", str(tmp_path), "--overwrite", "--text", str(tmp_path / "text.npy"),
                 "--split", f"test={tmp_path / 'img.npy'}:range"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert (tmp_path / "text.npy").is_file()


def test_overwrite_never_replaces_the_working_directory(tmp_path, featdir, monkeypatch, capsys):
    run = tmp_path / "here"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    monkeypatch.chdir(run)
    assert main(["eval", "--features", str(featdir), "--out", ".", "--overwrite"]) == 2
    assert "does not replace" in capsys.readouterr().err and (run / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------- item 2: whole dirs
def _import(out: Path, folder: Path, splits: list[str], *extra: str) -> int:
    return main(["import-features", "--out", str(out), "--text", str(folder / "text.npy"),
                 *[x for s in splits for x in ("--split", f"{s}={folder / (s + '.npy')}:{folder / (s + '_y.npy')}")],
                 *extra])


def test_reimport_into_an_existing_directory_is_refused_and_overwrite_keeps_nothing_old(tmp_path, capsys):
    """The issue's case: a re-import with only a train split must not keep the earlier import's test split."""
    src = tmp_path / "arrays"
    src.mkdir()
    rng = np.random.default_rng(0)
    np.save(src / "text.npy", rng.standard_normal((3, 8)).astype(np.float32))
    for split in ("train", "test"):
        np.save(src / f"{split}.npy", rng.standard_normal((12, 8)).astype(np.float32))
        np.save(src / f"{split}_y.npy", np.arange(12) % 3)
    out = tmp_path / "feats"
    assert _import(out, src, ["train", "test"]) == 0
    first = _digest(out)
    assert _import(out, src, ["train"]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert _digest(out) == first
    assert _import(out, src, ["train"], "--overwrite") == 0
    assert "test: " not in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "meta.json", "text.safetensors",
                                                     "train.safetensors"]
    assert main(["eval", "--features", str(out)]) == 2  # no stale test split to score
    assert "test" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_empty_directory_is_used_and_what_is_printed_names_the_target(featdir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert main(["eval", "--features", str(featdir), "--out", str(out), "--save-logits", str(out / "l.npy")]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'results.json'}" in printed and f"wrote {out / 'l.npy'}" in printed
    assert _outputs.STAGING_SUFFIX not in printed
    assert sorted(p.name for p in out.iterdir()) == ["l.npy", "results.json"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------- item 12: ENOSPC
class _FullDisk:
    """`open` for clipadapt.fileio whose files for `name` fail to write with ENOSPC, as a full disk does (the
    OSError of write() names no file)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if "w" in mode and self.name in Path(file).name:
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write = write
        return f


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_writing_out_is_a_named_error_and_leaves_no_half_written_out(featdir, tmp_path, monkeypatch,
                                                                                      capsys, existing):
    out = tmp_path / "run"
    if existing:
        assert main(["eval", "--features", str(featdir), "--out", str(out)]) == 0
    before = _digest(out) if existing else None
    capsys.readouterr()
    monkeypatch.setattr(clipadapt.fileio, "open", _FullDisk("logits.npy"), raising=False)
    argv = ["eval", "--features", str(featdir), "--out", str(out), "--save-logits", str(out / "logits.npy")]
    assert main(argv + (["--overwrite"] if existing else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out / 'logits.npy'}: no space left on device" in err and "[ENOSPC]" in err
    assert (_digest(out) == before) if existing else not out.exists()  # results.json was written, then dropped
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_disk_full_inside_safetensors_is_an_oserror_naming_the_file(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    import clipadapt.features.io as fio

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(fio, "save_file", full)
    np.save(tmp_path / "text.npy", np.eye(3, 4, dtype=np.float32))
    out = tmp_path / "feats"
    assert main(["import-features", "--out", str(out), "--text", str(tmp_path / "text.npy"),
                 "--split", f"test={tmp_path / 'text.npy'}:range"]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "[ENOSPC]" in err and str(out) in err and "Traceback" not in err
    assert not out.exists()


def test_disk_full_while_torch_saves_a_training_state_is_the_oserror(tmp_path, monkeypatch):
    from clipadapt.adapters.training import _atomic_torch_save

    monkeypatch.setattr(clipadapt.fileio, "open", _FullDisk("state.pt"), raising=False)
    with pytest.raises(OSError) as e:
        _atomic_torch_save({"w": torch.zeros(1000)}, tmp_path / "state.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_error_names_the_file_it_was_writing(tmp_path):
    with pytest.raises(OSError) as e, clipadapt.fileio.atomic_open(tmp_path / "x.bin"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- item 13: unwritable
@pytest.fixture
def nothing_computed(monkeypatch):
    """Loading the features (the first step of `eval`) fails the test: the run must stop before it."""
    import clipadapt.cli.eval

    def refuse(*args, **kwargs):
        raise AssertionError("features were loaded although the output cannot be written")

    monkeypatch.setattr(clipadapt.cli.eval, "load_features_from_args", refuse)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_out_is_refused_before_computing(featdir, tmp_path, monkeypatch, capsys, nothing_computed, code):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = _outputs.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # the file system refuses new files in `locked` (root ignores chmod)
        if dir is not None and Path(dir) == locked:
            raise OSError(code, os.strerror(code), str(Path(dir) / "tmpXYZ"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(_outputs.tempfile, "mkstemp", mkstemp)
    for option, target in (("--out", locked / "run"), ("--save-logits", locked / "l.npy")):
        assert main(["eval", "--features", str(featdir), option, str(target)]) == 2
        err = capsys.readouterr().err
        assert f"{option} {target}: cannot write in {locked}" in err and errno.errorcode[code] in err
        assert list(locked.iterdir()) == []


@pytest.mark.parametrize("option, make, message", [
    ("--save-logits", "dir", "is a directory; --save-logits takes a file path"),
    ("--out", "file", "exists and is a file; --out takes a directory"),
    ("--out", "under-file", "is a file, not a directory"),
    ("--save-logits", "under-file", "is a file, not a directory"),
])
def test_a_file_where_a_directory_is_needed_or_the_reverse_is_refused_before_computing(
        featdir, tmp_path, capsys, nothing_computed, option, make, message):
    target = tmp_path / "target"
    if make == "dir":
        target.mkdir()
    else:
        target.write_text("x")
        if make == "under-file":
            target = target / "sub"
    assert main(["eval", "--features", str(featdir), option, str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_two_outputs_on_one_path_are_refused(featdir, tmp_path, capsys):
    target = tmp_path / "t.csv"
    args = ["captions", "--judgments", str(tmp_path / "j.csv"), "--table", str(target), "--scores-out", str(target)]
    assert main(args) == 2
    assert "name the same path" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- resumed directories
def test_suite_run_and_adapter_train_resume_only_their_own_run_directories(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert main(["suite", "run", "dn-vitb32", "--out", str(other), "--dry-run"]) == 2
    assert "holds no suite.json" in capsys.readouterr().err
    assert main(["adapter", "train", "--model", "clipadapt-test-tiny-vit@none",
                 "--data", f"imagefolder:{tmp_path / 'images'}",
                 "--out", str(other)]) == 2
    assert "holds no train_state.pt" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "x"


def test_adapter_cli_state_file_name_is_the_trainers():
    from clipadapt.adapters.training import STATE_FILE
    from clipadapt.cli.adapter import STATE_FILE as CLI_STATE_FILE

    assert CLI_STATE_FILE == STATE_FILE


def test_a_rerun_suite_cell_keeps_nothing_of_its_earlier_attempt(tmp_path, featdir):
    missing = tmp_path / "later"
    config = tmp_path / "s.toml"
    config.write_text(f'[[task]]\ntask = "dn"\ndatasets = ["{missing}"]\noptions = {{ dn-samples = 5 }}\n')
    out = tmp_path / "run"
    assert main(["suite", "run", str(config), "--out", str(out), "--no-plots"]) == 1
    (cell,) = [p for p in (out / "cells").iterdir() if p.is_dir()]
    (cell / "stale.txt").write_text("from the failed attempt")
    save_feature_dir(load_feature_dir(featdir), missing)
    assert main(["suite", "run", str(config), "--out", str(out), "--no-plots"]) == 0
    assert not (cell / "stale.txt").exists() and (cell / "results.json").is_file()


# ----------------------------------------------------------------------------------------- the one handler
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EISDIR, errno.ENOTDIR, errno.EPERM,
                                  errno.EDQUOT, errno.ENOENT, errno.EIO, errno.ENAMETOOLONG])
def test_every_oserror_is_one_line_naming_the_path_exit_2(monkeypatch, capsys, code):
    import clipadapt.cli.models

    def fail(args):
        raise OSError(code, os.strerror(code), "/data/some/file")

    monkeypatch.setattr(clipadapt.cli.models, "run", fail)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipadapt models: error: /data/some/file: ") and err.count("\n") == 1
    assert f"[{errno.errorcode[code]}]" in err and "Traceback" not in err


def test_an_oserror_without_a_path_still_says_what_failed(monkeypatch, capsys):
    import clipadapt.cli.models

    def fail(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clipadapt.cli.models, "run", fail)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "clipadapt models: error: no space left on device (free some space, or write " \
                                      "the outputs elsewhere) [ENOSPC]\n"


def _bug(args):
    return {}["missing"]


def test_a_bug_is_one_line_asking_for_v_and_v_shows_the_traceback(monkeypatch, capsys):
    import clipadapt.cli.models

    monkeypatch.setattr(clipadapt.cli.models, "run", _bug)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("clipadapt models: internal error: KeyError: 'missing'") and "rerun with -v" in err
    assert main(["-v", "models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_bug" in err and "KeyError: 'missing'" in err


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    import clipadapt.cli.models

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(clipadapt.cli.models, "run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "clipadapt models: interrupted\n"


def test_a_failed_command_leaves_no_staging_directory_and_no_parents_it_made(featdir, tmp_path, monkeypatch, capsys):
    import clipadapt.cli.eval

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(featdir / "test.safetensors"))

    monkeypatch.setattr(clipadapt.cli.eval, "load_features_from_args", fail)
    assert main(["eval", "--features", str(featdir), "--out", str(tmp_path / "a" / "b" / "run")]) == 2
    assert not (tmp_path / "a").exists()
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["feats"]'


def test_an_out_filled_by_something_else_during_the_run_is_not_replaced(featdir, tmp_path, monkeypatch, capsys):
    import clipadapt.cli.eval

    out = tmp_path / "run"
    real = clipadapt.cli.eval.load_features_from_args

    def meanwhile(*args, **kwargs):  # another run writes the same --out while this one computes
        out.mkdir()
        (out / "results.json").write_text("theirs")
        return real(*args, **kwargs)

    monkeypatch.setattr(clipadapt.cli.eval, "load_features_from_args", meanwhile)
    assert main(["eval", "--features", str(featdir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "filled by something else" in err and (out / "results.json").read_text() == "theirs"
    kept = Path(err.split("the results are in ")[1].split(" — ")[0])
    assert json.loads((kept / "results.json").read_text())["method"] == "zeroshot"


def test_a_cache_directory_to_be_created_inside_out_is_refused(featdir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--features", str(featdir), "--cache-dir", str(out / "cache"), "--out", str(out)]) == 2
    assert "contains the input" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("env", [None, "cache-here"])
def test_the_default_cache_is_an_input_and_its_root_is_the_caches(tmp_path, monkeypatch, featdir, capsys, env):
    from clipadapt.features.cache import cache_root

    if env is None:
        monkeypatch.delenv("CLIPADAPT_CACHE", raising=False)
    else:
        monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path / env))
    assert _outputs.default_cache_root().resolve() == cache_root().resolve()
    if env is not None:
        assert main(["eval", "--features", str(featdir), "--out", str(tmp_path / env / "images")]) == 2
        assert "--cache-dir" in capsys.readouterr().err


def test_a_copy_that_hits_a_full_disk_names_its_destination(tmp_path, monkeypatch):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 10)

    def no_link(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clipadapt.fileio.os, "link", no_link)
    monkeypatch.setattr(clipadapt.fileio.shutil, "copyfile", full)
    with pytest.raises(OSError) as e:
        clipadapt.fileio.link_or_copy(src, tmp_path / "out" / "b.bin")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "out" / "b.bin")
    assert list((tmp_path / "out").iterdir()) == []
