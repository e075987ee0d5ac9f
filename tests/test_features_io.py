import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clipadapt import FeatureDirError, FeatureSet, FeatureSplit, load_feature_dir, save_feature_dir


def test_round_trip_keeps_raw_embeddings_labels_and_meta(tmp_path, synthetic_featureset):
    save_feature_dir(synthetic_featureset, tmp_path / "fd")
    back = load_feature_dir(tmp_path / "fd")
    assert back.classnames == synthetic_featureset.classnames
    assert torch.equal(back.text, synthetic_featureset.text)
    assert torch.equal(back.split("test").image, synthetic_featureset.split("test").image)
    assert torch.equal(back.split("test").label, synthetic_featureset.split("test").label)
    assert back.meta["model"] == "synthetic"
    assert sorted(back.splits) == ["test", "val"]


def test_no_temporary_files_left_after_save(tmp_path, synthetic_featureset):
    save_feature_dir(synthetic_featureset, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_split_error_lists_available(synthetic_featureset):
    with pytest.raises(FeatureDirError, match=r"'train' not found.*\['test', 'val'\]"):
        synthetic_featureset.split("train")


def _write_dir(path, *, classnames, text, image, label=None, split="test"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text(json.dumps({"classnames": classnames, "model": "ViT-B-32@openai"}))
    save_file({"text": text}, str(path / "text.safetensors"))
    tensors = {"image": image}
    if label is not None:
        tensors["label"] = label
    save_file(tensors, str(path / f"{split}.safetensors"))


def test_dimension_mismatch_names_files_and_model(tmp_path):
    _write_dir(tmp_path, classnames=["a", "b"], text=torch.randn(2, 512), image=torch.randn(4, 768),
               label=torch.zeros(4, dtype=torch.long))
    with pytest.raises(FeatureDirError, match=r"test.safetensors: tensor 'image' has shape \(4, "
                                              r"768\).*D=512.*ViT-B-32@openai"):
        load_feature_dir(tmp_path)


def test_class_count_mismatch_between_meta_and_text(tmp_path):
    _write_dir(tmp_path, classnames=["a", "b", "c"], text=torch.randn(2, 8), image=torch.randn(4, 8),
               label=torch.zeros(4, dtype=torch.long))
    with pytest.raises(FeatureDirError, match="text.safetensors: tensor 'text' has 2 classes but meta.json lists 3"):
        load_feature_dir(tmp_path)


def test_label_out_of_range_is_reported(tmp_path):
    _write_dir(tmp_path, classnames=["a", "b"], text=torch.randn(2, 8), image=torch.randn(3, 8),
               label=torch.tensor([0, 1, 2]))
    with pytest.raises(FeatureDirError, match=r"'label' has values in \[0, 2\] but there are 2 classes"):
        load_feature_dir(tmp_path)


def test_nan_embeddings_are_reported(tmp_path):
    image = torch.randn(3, 8)
    image[1, 2] = float("nan")
    _write_dir(tmp_path, classnames=["a", "b"], text=torch.randn(2, 8), image=image, label=torch.tensor([0, 1, 0]))
    with pytest.raises(FeatureDirError, match="test.safetensors: tensor 'image' contains 1 NaN"):
        load_feature_dir(tmp_path)


def test_missing_labels_required_except_unlabeled(tmp_path):
    _write_dir(tmp_path, classnames=["a", "b"], text=torch.randn(2, 8), image=torch.randn(3, 8))
    with pytest.raises(FeatureDirError, match="tensor 'label' is missing"):
        load_feature_dir(tmp_path)
    (tmp_path / "test.safetensors").rename(tmp_path / "unlabeled.safetensors")
    fs = load_feature_dir(tmp_path)
    assert fs.split("unlabeled").label is None


def test_float_labels_rejected(tmp_path):
    _write_dir(tmp_path, classnames=["a", "b"], text=torch.randn(2, 8), image=torch.randn(3, 8),
               label=torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(FeatureDirError, match="must be integer"):
        load_feature_dir(tmp_path)


def test_missing_meta_and_bad_classnames(tmp_path):
    with pytest.raises(FeatureDirError, match="meta.json: not found"):
        load_feature_dir(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"classnames": []}))
    with pytest.raises(FeatureDirError, match="'classnames' must be a non-empty list"):
        load_feature_dir(tmp_path)


def test_corrupt_safetensors_is_reported(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"classnames": ["a"]}))
    (tmp_path / "text.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(FeatureDirError, match="text.safetensors: not a readable safetensors file"):
        load_feature_dir(tmp_path)


def test_views_are_pooled_on_raw_embeddings():
    image = torch.randn(4, 3, 8)
    split = FeatureSplit(image, torch.zeros(4, dtype=torch.long))
    assert split.views == 3 and split.dim == 8
    assert torch.allclose(split.pooled(), image.mean(1))


def test_classifier_is_prompt_ensemble_of_normalised_templates():
    text = torch.randn(3, 4, 8)
    fs = FeatureSet(classnames=["a", "b", "c"], text=text)
    per_template = text / text.norm(dim=-1, keepdim=True)
    mean = per_template.mean(1)
    expected = mean / mean.norm(dim=-1, keepdim=True)
    assert torch.allclose(fs.classifier(), expected, atol=1e-6)


def test_load_npy_memory_maps_and_names_the_file_in_errors(tmp_path):
    from clipadapt.errors import DatasetError
    from clipadapt.features.io import load_npy

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", arr)
    mapped = load_npy(tmp_path / "a.npy", what="logits")
    assert isinstance(mapped, np.memmap) and np.array_equal(np.asarray(mapped), arr)
    loaded = load_npy(tmp_path / "a.npy", what="logits", mmap=False)
    assert not isinstance(loaded, np.memmap) and np.array_equal(loaded, arr)
    with pytest.raises(FeatureDirError, match=r"missing\.npy: logits file not found"):
        load_npy(tmp_path / "missing.npy", what="logits")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetError, match=r"bad\.npy: not a readable \.npy file"):
        load_npy(tmp_path / "bad.npy", what="labels", error=DatasetError)


def test_read_json_names_the_file_in_errors(tmp_path):
    from clipadapt.errors import DatasetError
    from clipadapt.fileio import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json", what="index") == {"a": [1, 2]}
    with pytest.raises(FeatureDirError, match=r"missing\.json: shard index not found"):
        read_json(tmp_path / "missing.json", what="shard index")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json", what="split file", error=DatasetError)


def test_corrupt_or_malformed_paths_file_is_reported(tmp_path, synthetic_featureset):
    save_feature_dir(synthetic_featureset, tmp_path)
    (tmp_path / "test.paths.json").write_text("[not json")
    with pytest.raises(FeatureDirError, match="test.paths.json: not valid JSON"):
        load_feature_dir(tmp_path)
    (tmp_path / "test.paths.json").write_text('{"a": 1}')
    with pytest.raises(FeatureDirError, match="test.paths.json: expected a JSON list of path strings"):
        load_feature_dir(tmp_path)


def test_check_finite_counts_every_bad_value_across_chunks(tmp_path, monkeypatch):
    """The check runs in chunks (bounded temporaries); a NaN/Inf anywhere, chunk edges included, is found and
    counted."""
    import clipadapt.features.io as io

    monkeypatch.setattr(io, "FINITE_CHECK_CHUNK", 7)  # 5 x 6 = 30 values: chunks of 7, the last one of 2
    t = torch.zeros(5, 6)
    io.check_finite(t, "image", tmp_path / "x.safetensors")  # all finite: no error
    for flat_index in (0, 6, 7, 29):
        t.view(-1)[flat_index] = float("nan")
    t[2, 3] = float("inf")  # flat 15
    expected = int((~torch.isfinite(t)).sum())  # literal count over the whole tensor
    assert expected == 5
    with pytest.raises(FeatureDirError, match=r"x.safetensors: tensor 'image' contains 5 NaN/Inf values"):
        io.check_finite(t, "image", tmp_path / "x.safetensors")


def test_rewriting_a_split_leaves_nothing_of_the_earlier_write(tmp_path):
    """A split saved without paths over one saved with paths must not inherit the old paths list (same row count:
    it would load silently with other files' names); an in-memory write over a sharded one drops the shards."""
    from clipadapt.features.shards import save_sharded_split

    classes, text = ["a", "b"], torch.randn(2, 4)
    old = FeatureSplit(torch.randn(3, 4), torch.tensor([0, 1, 0]), ["x.png", "y.png", "z.png"])
    save_feature_dir(FeatureSet(classes, text, {"test": old}), tmp_path)
    new = FeatureSplit(torch.randn(3, 4), torch.tensor([1, 1, 0]))
    save_feature_dir(FeatureSet(classes, text, {"test": new}), tmp_path)
    loaded = load_feature_dir(tmp_path).split("test")
    assert loaded.paths is None and torch.equal(loaded.image, new.image)

    save_sharded_split(tmp_path, "val", old, shard_size=2)
    assert (tmp_path / "val.shards").is_dir()
    save_feature_dir(FeatureSet(classes, text, {"val": new}), tmp_path)
    assert not (tmp_path / "val.shards").exists() and not (tmp_path / "val.shards.json").exists()
    assert torch.equal(load_feature_dir(tmp_path).split("val").image, new.image)


def test_check_finite_catches_what_a_finite_sum_would_hide_and_ignores_sum_overflow(tmp_path, monkeypatch):
    """The fast path trusts a chunk whose sum is finite: NaN, +Inf, −Inf and +Inf with −Inf (a NaN sum) are still
    found in every chunk, and finite values whose sum overflows float32 raise nothing."""
    import clipadapt.features.io as io

    monkeypatch.setattr(io, "FINITE_CHECK_CHUNK", 8)
    path = tmp_path / "x.safetensors"
    for bad_values in ([float("nan")], [float("inf")], [-float("inf")], [float("inf"), -float("inf")]):
        t = torch.ones(5, 8)
        t.view(-1)[11:11 + len(bad_values)] = torch.tensor(bad_values)
        with pytest.raises(FeatureDirError, match=f"{len(bad_values)} NaN/Inf"):
            io.check_finite(t, "image", path)
    io.check_finite(torch.full((4, 8), 3e38), "image", path)  # sums overflow to inf, every value finite
