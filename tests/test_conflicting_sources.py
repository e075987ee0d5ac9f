"""Inputs that another input makes irrelevant are refused instead of silently ignored (issue 12, item 7):
`eval --features D --model M --dataset S` used to evaluate D and ignore M and S."""

from __future__ import annotations

import pytest

from clipadapt.cli import main


@pytest.mark.parametrize(("argv", "named"), [
    (["eval", "--features", "builtin:coco500", "--model", "ViT-B-32@openai", "--dataset", "imagefolder:/x"],
     "--model, --dataset"),
    (["eval", "--features", "builtin:coco500", "--dataset", "imagefolder:/x"], "--dataset"),
    (["eval", "--features", "builtin:coco500", "--method", "dn", "--cache-dir", "/tmp/c"], "--cache-dir"),
    (["imo", "--features", "builtin:coco500", "--model", "ViT-B-32@openai", "--out", "OUT"], "--model"),
    (["fewshot", "--features", "builtin:coco500", "--model", "M", "--dataset", "imagefolder:/x", "--out", "OUT"],
     "--model, --dataset"),
    (["retrieval", "--embeddings", "builtin:coco500", "--captions-json", "c.json", "--image-root", "/imgs"],
     "--captions-json, --image-root"),
    (["retrieval", "--embeddings", "builtin:coco500", "--save-embeddings", "OUT"], "--save-embeddings"),
    (["captions", "--judgments", "J", "--embeddings", "builtin:coco500", "--image-root", "/imgs"], "--image-root"),
    (["backbones", "--features", "a", "b", "--dataset", "imagefolder:/x", "--out", "OUT"], "--dataset"),
    (["backbones", "--logits", "a.npy,b.npy", "--labels", "l.npy", "--dataset", "imagefolder:/x", "--out", "OUT"],
     "--dataset"),
    (["backbones", "--models", "A,B", "--dataset", "imagefolder:/x", "--labels", "l.npy", "--out", "OUT"],
     "--labels"),
])
def test_conflicting_sources_are_refused_naming_the_ignored_options(tmp_path, capsys, argv, named):
    if "captions" in argv:
        (tmp_path / "J").write_text("image,caption,human\n0,0,1\n1,1,2\n")
    argv = [str(tmp_path / "OUT") if a == "OUT" else str(tmp_path / "J") if a == "J" else a for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "conflicting inputs" in err and named in err and "not both" in err
    assert not (tmp_path / "OUT").exists()


@pytest.mark.parametrize(("argv", "named"), [
    (["--kind", "captions", "--image", "i.npy", "--caption", "c.npy", "--split", "test=x.npy"], "--split"),
    (["--kind", "captions", "--image", "i.npy", "--caption", "c.npy", "--classnames", "n.txt"], "--classnames"),
    (["--kind", "retrieval", "--split", "test=i.npy:c.npy", "--text", "t.npy"], "--text"),
    (["--text", "t.npy", "--split", "test=i.npy:range", "--caption", "c.npy"], "--caption"),
])
def test_import_features_refuses_options_its_kind_ignores(tmp_path, capsys, argv, named):
    code = main(["import-features", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "conflicting inputs" in err and named in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("argv", "named"), [
    (["eval", "--features", "builtin:coco500", "--method", "zeroshot", "--dn-lambda", "0.5"], "--dn-lambda"),
    (["eval", "--features", "builtin:coco500", "--dn-samples=all", "--dn-seed", "3"], "--dn-samples, --dn-seed"),
    (["dn-sweep", "--features", "builtin:coco500", "--holdout", "50", "--out", "OUT"], "--holdout"),
    (["dn-sweep", "--embeddings", "builtin:coco500", "--dn-text-mean", "classes", "--out", "OUT"], "--dn-text-mean"),
])
def test_options_of_another_mode_are_refused(tmp_path, capsys, argv, named):
    code = main([str(tmp_path / "OUT") if a == "OUT" else a for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "conflicting inputs" in err and named in err
