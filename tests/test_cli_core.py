import json

import numpy as np
import pytest

from clipadapt.cli import build_parser, main


def _import_coco(tmp_path, coco500):
    image, caption = coco500
    np.save(tmp_path / "img.npy", image.numpy())
    np.save(tmp_path / "txt.npy", caption.numpy())
    np.save(tmp_path / "lab.npy", np.arange(500))
    (tmp_path / "names.txt").write_text("\n".join(f"caption {i}" for i in range(500)))
    out = tmp_path / "fd"
    code = main([
        "import-features", "--out", str(out), "--classnames", str(tmp_path / "names.txt"),
        "--text", str(tmp_path / "txt.npy"), "--split", f"test={tmp_path / 'img.npy'}:{tmp_path / 'lab.npy'}",
        "--model", "ViT-B-16@openai",
    ])
    assert code == 0
    return out


def test_import_then_eval_zeroshot_writes_results_and_logits(tmp_path, coco500):
    fd = _import_coco(tmp_path, coco500)
    out, logits_path = tmp_path / "results.json", tmp_path / "logits.npy"
    assert main(["eval", "--features", str(fd), "--method", "zeroshot", "--out", str(out), "--save-logits",
                 str(logits_path)]) == 0
    results = json.loads(out.read_text())
    assert results["method"] == "zeroshot" and results["n"] == 500
    assert 50 < results["top1"] < 60 and results["top5"] > results["top1"]
    assert "hyperparameters" in results
    logits = np.load(logits_path)
    assert logits.shape == (500, 500) and logits.dtype == np.float32
    assert np.mean(logits.argmax(1) == np.arange(500)) * 100 == pytest.approx(results["top1"])


def test_import_features_accepts_indexed_npy(tmp_path):
    arr = np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32)
    np.save(tmp_path / "both.npy", arr)
    np.save(tmp_path / "lab.npy", np.array([0, 1, 2, 0, 1, 2]))
    (tmp_path / "n.json").write_text(json.dumps(["a", "b", "c"]))
    # text: first 3 rows of entry 1 are not selectable, so use a separate file for text
    np.save(tmp_path / "text.npy", arr[1][:3])
    assert main(["import-features", "--out", str(tmp_path / "fd"), "--classnames", str(tmp_path / "n.json"),
                 "--text", str(tmp_path / "text.npy"), "--split",
                 f"val={tmp_path / 'both.npy'}[0]:{tmp_path / 'lab.npy'}"]) == 0
    from clipadapt import load_feature_dir

    fs = load_feature_dir(tmp_path / "fd")
    assert np.allclose(fs.split("val").image.numpy(), arr[0])


def _import_args(tmp_path, split_spec):
    np.save(tmp_path / "text.npy", np.eye(3, 4, dtype=np.float32))
    (tmp_path / "n.json").write_text(json.dumps(["a", "b", "c"]))
    return ["import-features", "--out", str(tmp_path / "fd"), "--classnames", str(tmp_path / "n.json"),
            "--text", str(tmp_path / "text.npy"), "--split", split_spec]


def test_import_features_rejects_non_integer_float_labels(tmp_path, capsys):
    np.save(tmp_path / "img.npy", np.ones((3, 4), dtype=np.float32))
    np.save(tmp_path / "lab.npy", np.array([0.0, 1.7, 2.0]))
    assert main(_import_args(tmp_path, f"test={tmp_path / 'img.npy'}:{tmp_path / 'lab.npy'}")) == 2
    err = capsys.readouterr().err
    assert "lab.npy" in err and "labels must be integers" in err
    assert not (tmp_path / "fd").exists()


def test_import_features_accepts_whole_number_float_labels(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((3, 4), dtype=np.float32))
    np.save(tmp_path / "lab.npy", np.array([2.0, 0.0, 1.0]))
    assert main(_import_args(tmp_path, f"test={tmp_path / 'img.npy'}:{tmp_path / 'lab.npy'}")) == 0
    from clipadapt import load_feature_dir

    assert load_feature_dir(tmp_path / "fd").split("test").label.tolist() == [2, 0, 1]


@pytest.mark.parametrize("suffix, message", [("[x]", "integer i"), ("[5]", "index 5 is outside")])
def test_import_features_bad_entry_index_names_the_spec(tmp_path, capsys, suffix, message):
    np.save(tmp_path / "img.npy", np.ones((2, 3, 4), dtype=np.float32))
    assert main(_import_args(tmp_path, f"unlabeled={tmp_path / 'img.npy'}{suffix}")) == 2
    err = capsys.readouterr().err
    assert "img.npy" in err and message in err


def test_user_error_exits_2_with_message(tmp_path, capsys):
    assert main(["eval", "--features", str(tmp_path / "missing")]) == 2
    assert "feature directory not found" in capsys.readouterr().err


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"eval", "import-features"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.description, name


def test_building_the_parser_imports_no_heavy_optional_library():
    """`clipadapt --help` must stay fast: building the parser (every subcommand, auto-discovered) imports neither
    torch nor numpy nor torchvision / open_clip / matplotlib / scipy / safetensors; subcommands import them inside
    run(). Checked in a fresh interpreter so other tests' imports do not interfere (more in test_cli_startup.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    heavy = ("torch", "numpy", "torchvision", "open_clip", "matplotlib", "scipy", "safetensors", "PIL")
    code = (
        "import sys; import clipadapt.cli as c; c.build_parser(); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(src)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == ""  # none of them was imported
