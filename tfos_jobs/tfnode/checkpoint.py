"""Checkpoints on any storage URI.

TF 2.21 writes only to local disk here (no hdfs:// or s3:// file system in core TF), so checkpoints are
written to a local directory and mirrored to ``<model_dir>/checkpoints``: data files first, then a
manifest of their SHA-256 digests, the ``checkpoint`` index last, so a reader never sees an index
naming files that are not there yet. Files are compared by digest, not by size: a re-run that writes a
same-named, same-sized file with other bytes replaces it, and a download checks what it fetched.
"""
from __future__ import annotations

import json
import os
import re

import hdfs_io
from tfos_jobs.localdirs import file_sha256

INDEX = "checkpoint"
MANIFEST = "checkpoint.sha256.json"


class NothingToTrain(RuntimeError):
    """The checkpoint being resumed is already at (or past) the run's last step."""


def checkpoint_step(model_dir: str) -> int | None:
    """The step of the newest checkpoint mirrored under ``model_dir`` (None: no checkpoint there)."""
    index = hdfs_io.join(model_dir, "checkpoints", INDEX)
    if not model_dir or not hdfs_io.exists(index):
        return None
    with hdfs_io.open(index, "rb") as handle:
        found = re.search(rb'^model_checkpoint_path: "ckpt-(\d+)"', handle.read(), re.M)
    return int(found.group(1)) if found else None


def require_new_steps(node, restored_step: int, total: int) -> None:
    """Refuse to train zero new steps (and export the old model again) unless the run allows it."""
    run = node.spec.config.run
    if node.spec.attempt > 1:   # a restarted cluster of this run: the steps were trained by this run
        return
    if total and restored_step >= total and not run.allow_no_new_steps:
        raise NothingToTrain(
            f"the checkpoint in {run.model_dir} is at step {restored_step} and this run trains {total} steps in "
            "all: nothing new would be trained. Raise --steps/--epochs, use a new --model-dir, or pass "
            "--allow-no-new-steps to export the checkpointed model as it is")


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
        """Fetch the newest checkpoint from storage (checked against its manifest) and restore it;
        return its path or None."""
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
    """Mirror a local checkpoint directory: changed data files, the manifest, the index, then prune."""
    hdfs_io.mkdirs(remote_uri)
    remote_names = {os.path.basename(info.uri.rstrip("/")) for info in hdfs_io.ls(remote_uri)}
    remote = _read_manifest(remote_uri) if MANIFEST in remote_names else {}
    local = {name: file_sha256(os.path.join(local_dir, name)) for name in sorted(os.listdir(local_dir))
             if name not in (INDEX, MANIFEST)}
    for name, digest in local.items():
        if remote.get(name) != digest or name not in remote_names:
            _put(os.path.join(local_dir, name), hdfs_io.join(remote_uri, name))
    with hdfs_io.open(hdfs_io.join(remote_uri, MANIFEST), "wb") as handle:
        handle.write(json.dumps(local, sort_keys=True).encode())
    _put(os.path.join(local_dir, INDEX), hdfs_io.join(remote_uri, INDEX))
    for name in remote_names - set(local) - {INDEX, MANIFEST}:
        hdfs_io.delete(hdfs_io.join(remote_uri, name))


def download_checkpoint(remote_uri: str, local_dir: str) -> None:
    """Fetch the mirrored files whose digest differs from the local copy, and check each download
    against the manifest (a mirror written before manifests existed is fetched by size)."""
    os.makedirs(local_dir, exist_ok=True)
    names = {os.path.basename(i.uri.rstrip("/")): i for i in hdfs_io.ls(remote_uri) if not i.is_dir}
    manifest = _read_manifest(remote_uri) if MANIFEST in names else None
    for name, info in names.items():
        if name == MANIFEST:
            continue
        target = os.path.join(local_dir, name)
        want = manifest.get(name) if manifest is not None and name != INDEX else None
        if os.path.exists(target) and (file_sha256(target) == want if want else os.path.getsize(target) == info.size):
            continue
        with hdfs_io.open(info.uri, "rb") as src, open(target, "wb") as dst:
            _copy(src, dst)
        if want and file_sha256(target) != want:
            raise IOError(f"checkpoint file {info.uri} does not match its digest in {MANIFEST}: the mirror "
                          "is damaged or was written concurrently")


def _read_manifest(remote_uri: str) -> dict:
    with hdfs_io.open(hdfs_io.join(remote_uri, MANIFEST), "rb") as handle:
        return json.loads(handle.read())




def _put(local_path, uri):
    with open(local_path, "rb") as src, hdfs_io.open(uri, "wb") as dst:
        _copy(src, dst)


def _copy(src, dst, chunk=8 << 20):
    while True:
        block = src.read(chunk)
        if not block:
            return
        dst.write(block)
