"""Checkpoint mirroring compares and checks files by digest (not by size), on local storage."""
import os

import pytest

from tfos_jobs.tfnode.checkpoint import (INDEX, MANIFEST, checkpoint_step, download_checkpoint,
                                         upload_checkpoint)


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


@pytest.fixture
def checkpoint_dir(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    _write(local / "ckpt-10.data-00000-of-00001", b"A" * 1000)
    _write(local / "ckpt-10.index", b"index-10")
    _write(local / INDEX, b'model_checkpoint_path: "ckpt-10"\nall_model_checkpoint_paths: "ckpt-10"\n')
    return local


def test_same_size_other_bytes_are_uploaded_again(checkpoint_dir, tmp_path):
    remote = str(tmp_path / "model" / "checkpoints")
    upload_checkpoint(str(checkpoint_dir), remote)
    _write(checkpoint_dir / "ckpt-10.data-00000-of-00001", b"B" * 1000)     # same name, same size
    upload_checkpoint(str(checkpoint_dir), remote)
    with open(os.path.join(remote, "ckpt-10.data-00000-of-00001"), "rb") as handle:
        assert handle.read() == b"B" * 1000, "a same-sized file with new bytes was not mirrored"
    assert checkpoint_step(str(tmp_path / "model")) == 10


def test_a_damaged_mirror_is_detected_on_download(checkpoint_dir, tmp_path):
    remote = str(tmp_path / "model" / "checkpoints")
    upload_checkpoint(str(checkpoint_dir), remote)
    assert os.path.exists(os.path.join(remote, MANIFEST))
    _write(os.path.join(remote, "ckpt-10.data-00000-of-00001"), b"C" * 1000)
    with pytest.raises(IOError, match="does not match its digest"):
        download_checkpoint(remote, str(tmp_path / "fresh"))


def test_a_stale_local_copy_of_the_same_size_is_replaced(checkpoint_dir, tmp_path):
    remote = str(tmp_path / "model" / "checkpoints")
    upload_checkpoint(str(checkpoint_dir), remote)
    node = tmp_path / "node"
    node.mkdir()
    _write(node / "ckpt-10.data-00000-of-00001", b"Z" * 1000)                # left by an earlier run
    download_checkpoint(remote, str(node))
    assert (node / "ckpt-10.data-00000-of-00001").read_bytes() == b"A" * 1000


def test_no_checkpoint_means_no_resume(tmp_path):
    assert checkpoint_step(str(tmp_path / "empty")) is None
