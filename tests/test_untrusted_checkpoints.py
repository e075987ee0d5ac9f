"""A checkpoint that is a pickle payload is refused with a named error, and the pickle never executes
(issue 12, item 15): before, the UnpicklingError reached the user as a traceback."""

from __future__ import annotations

import os
import pickle

import pytest

from clipadapt.cli import main
from clipadapt.errors import ClipadaptError


class _Payload:
    """Unpickling this runs os.system(...): it would create the marker file if pickle ever executed it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    return path, marker


def test_model_checkpoint_pickle_payload_is_a_named_error_and_never_runs(payload):
    from clipadapt.encoders import load_encoder

    path, marker = payload
    with pytest.raises(ClipadaptError, match="not a weights file") as e:
        load_encoder(f"clipadapt-test-tiny-vit@{path}", device="cpu")
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_cli_reports_it_without_a_traceback(payload, tmp_path, capsys):
    from tests._imagedata import make_imagefolder

    path, marker = payload
    root = make_imagefolder(tmp_path / "imgs", splits=("test",), per_class=1)
    code = main(["extract", "--model", f"clipadapt-test-tiny-vit@{path}", "--dataset", f"imagefolder:{root}",
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "not a weights file" in err and "Traceback" not in err
    assert not marker.exists()


def test_adapter_checkpoint_pickle_payload_is_refused(payload):
    from clipadapt.adapters.imo_adapter import load_adapter_checkpoint

    path, marker = payload
    with pytest.raises(ClipadaptError):
        load_adapter_checkpoint(path)
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused_too(payload, tmp_path):
    from clipadapt.encoders import load_encoder

    path, marker = payload
    renamed = tmp_path / "weights.safetensors"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ClipadaptError, match="weights"):
        load_encoder(f"clipadapt-test-tiny-vit@{renamed}", device="cpu")
    assert not marker.exists()


def test_npy_arrays_holding_pickles_are_refused_by_import_features(payload, tmp_path, capsys):
    import numpy as np

    path, marker = payload
    arr = np.empty(2, dtype=object)
    arr[0] = arr[1] = _Payload(marker)
    np.save(tmp_path / "text.npy", arr, allow_pickle=True)
    np.save(tmp_path / "img.npy", np.zeros((2, 4), dtype=np.float32))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    code = main(["import-features", "--out", str(tmp_path / "fd"), "--classnames", str(tmp_path / "classes.txt"),
                 "--text", str(tmp_path / "text.npy"), "--split", f"test={tmp_path / 'img.npy'}:range"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert not marker.exists()
