"""Atomic, durable writes (features.io.atomic_open / atomic_path) and the adapter training state written through
them: bytes are streamed to a temp file, fsynced before the rename, and a failure leaves the old file as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from clipadapt.adapters.training import _atomic_torch_save
from clipadapt.features.io import atomic_save_tensors
from clipadapt.fileio import atomic_open, atomic_write_bytes


def _record_fsync_and_replace(monkeypatch) -> list[tuple]:
    """Log ("fsync", is_regular_file, size) and ("replace", dst) in call order, without changing what they do."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", stat.S_ISREG(st.st_mode), st.st_size))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _write_old_state(path: Path) -> bytes:
    torch.save({"step": 1, "w": torch.arange(5.0)}, path)
    return path.read_bytes()


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_training_state_is_fsynced_complete_before_it_replaces_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "train_state.pt"
    _write_old_state(path)
    events = _record_fsync_and_replace(monkeypatch)
    _atomic_torch_save({"step": 2, "w": torch.arange(1000.0)}, path)
    final_size = path.stat().st_size
    replace_at = events.index(("replace", path))
    # a regular file of exactly the final size was fsynced before the rename: the new bytes were on disk first
    assert ("fsync", True, final_size) in events[:replace_at]
    # and the directory after it, so the rename itself survives a power cut
    assert any(e[0] == "fsync" and not e[1] for e in events[replace_at + 1:])
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(1000.0))


@pytest.mark.parametrize("failure", ["pickling", "fsync"])
def test_failed_state_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "train_state.pt"
    old = _write_old_state(path)
    state = {"step": 2, "w": torch.arange(1000.0)}
    if failure == "pickling":
        state["bad"] = _Unpicklable()
        expected = RuntimeError
    else:  # every byte was written but the disk refuses to sync (e.g. full): still no rename
        def fsync(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
        expected = OSError
    with pytest.raises(expected):
        _atomic_torch_save(state, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.pt"]


def test_atomic_open_streams_to_disk_and_shows_nothing_until_it_closes(tmp_path):
    """Written blocks reach a temp file beside the target as they come (nothing held in memory); the target
    keeps its old bytes until the block exits."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"old")
    block = b"x" * (1 << 20)
    with atomic_open(path) as f:
        for i in range(1, 4):
            f.write(block)
            f.flush()
            temps = [p for p in tmp_path.iterdir() if p.name != "big.bin"]
            assert len(temps) == 1 and temps[0].name.startswith(".big.bin.") and temps[0].stat().st_size == i << 20
            assert path.read_bytes() == b"old"
    assert path.read_bytes() == block * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


@pytest.mark.parametrize("writer", ["bytes", "safetensors"])
def test_other_atomic_writers_also_fsync_before_the_rename(tmp_path, monkeypatch, writer):
    path = tmp_path / f"out.{writer}"
    events = _record_fsync_and_replace(monkeypatch)
    if writer == "bytes":
        atomic_write_bytes(path, b"hello")
    else:
        atomic_save_tensors(path, {"t": torch.zeros(3)})
    replace_at = events.index(("replace", path))
    assert ("fsync", True, path.stat().st_size) in events[:replace_at]


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    """mkstemp creates 0600 files; a result or cache file must be readable as a plain open() would make it."""
    import os

    from clipadapt.fileio import atomic_write_json

    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    atomic_write_json(tmp_path / "atomic.json", {})
    assert (tmp_path / "atomic.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask


def test_safetensors_files_get_the_permissions_open_would_give(tmp_path):
    """safetensors' save_file writes its own temp file and renames it over the name it is given (a new 0600
    inode), so the mode must be set after the writer is done, not only when the temp file is created."""
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_save_tensors(tmp_path / "features.safetensors", {"image": torch.zeros(2, 3)})
    assert (tmp_path / "features.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_stale_temp_files_of_a_writer_killed_inside_safetensors_are_removed(tmp_path):
    """safetensors' save_file writes '.tmp' + 6 random characters beside its target (our temp name) before its own
    rename: a process killed there leaves that file, as large as the shard; the resume cleanup must delete it
    too, and nothing else."""
    from clipadapt.features.shards import remove_stale_temp_files, write_shard

    shard = write_shard(tmp_path, 0, torch.zeros(2, 3))
    (tmp_path / ".tmpQ7xZ2k").write_bytes(b"half a shard")  # safetensors' temp file
    (tmp_path / f".{shard.name}.k3j9.tmp").write_bytes(b"half")  # ours
    assert remove_stale_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard.name]
