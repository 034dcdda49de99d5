"""Checkpoints on any storage URI.

TF 2.21 writes only to local disk here (no hdfs:// or s3:// file system in core TF), so checkpoints are
written to a local directory and mirrored to ``<model_dir>/checkpoints``: data files first, the
``checkpoint`` index last, so a reader never sees an index naming files that are not there yet.
"""
from __future__ import annotations

import os

import hdfs_io

INDEX = "checkpoint"


class StorageCheckpoints:
    """A ``tf.train.CheckpointManager`` whose directory is mirrored to storage."""

    def __init__(self, checkpoint, local_dir: str, remote_uri: str | None, *, max_to_keep: int = 3, writer: bool = True):
        import tensorflow as tf
        self.local_dir = local_dir
        self.remote_uri = remote_uri
        self.writer = writer
        os.makedirs(local_dir, exist_ok=True)
        self.manager = tf.train.CheckpointManager(checkpoint, local_dir, max_to_keep=max_to_keep)
        self.checkpoint = checkpoint

    def restore_latest(self) -> str | None:
        """Fetch the newest checkpoint from storage and restore it; return its path or None."""
        import tensorflow as tf
        if self.remote_uri and hdfs_io.exists(hdfs_io.join(self.remote_uri, INDEX)):
            download_checkpoint(self.remote_uri, self.local_dir)
        latest = tf.train.latest_checkpoint(self.local_dir)
        if latest:
            self.checkpoint.restore(latest).expect_partial()
        return latest

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        if self.writer and self.remote_uri:
            upload_checkpoint(self.local_dir, self.remote_uri)
        return path


def upload_checkpoint(local_dir: str, remote_uri: str) -> None:
    """Mirror a local checkpoint directory: new data files, then the index, then prune old files."""
    hdfs_io.mkdirs(remote_uri)
    remote = {os.path.basename(info.uri.rstrip("/")): info.size for info in hdfs_io.ls(remote_uri)}
    local = sorted(os.listdir(local_dir))
    for name in local:
        if name == INDEX:
            continue
        path = os.path.join(local_dir, name)
        if remote.get(name) != os.path.getsize(path):
            _put(path, hdfs_io.join(remote_uri, name))
    _put(os.path.join(local_dir, INDEX), hdfs_io.join(remote_uri, INDEX))
    for name in set(remote) - set(local):
        hdfs_io.delete(hdfs_io.join(remote_uri, name))


def download_checkpoint(remote_uri: str, local_dir: str) -> None:
    os.makedirs(local_dir, exist_ok=True)
    for info in hdfs_io.ls(remote_uri):
        name = os.path.basename(info.uri.rstrip("/"))
        target = os.path.join(local_dir, name)
        if not info.is_dir and not (os.path.exists(target) and os.path.getsize(target) == info.size):
            with hdfs_io.open(info.uri, "rb") as src, open(target, "wb") as dst:
                _copy(src, dst)


def _put(local_path, uri):
    with open(local_path, "rb") as src, hdfs_io.open(uri, "wb") as dst:
        _copy(src, dst)


def _copy(src, dst, chunk=8 << 20):
    while True:
        block = src.read(chunk)
        if not block:
            return
        dst.write(block)
