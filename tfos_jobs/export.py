"""Export a trained model: a SavedModel with a ``serving_default`` signature, a ``model.keras`` file,
``metrics.json`` and the job's own files (its config: how raw rows become features), published as one
unit: they appear together or not at all, and a failed run leaves the previous export as it was.

Two layouts, both read by :func:`export_dir` and :func:`saved_model_path`:

* one replaceable export (``--export URI``): published with ``hdfs_io``'s protocol (a new version
  directory and a pointer switched last), the SavedModel in ``saved_model/``; replacing it needs
  ``--overwrite``, and only an export of the same job may be replaced;
* numbered versions (``--export URI --version auto``): ``URI/<n>/`` in TF Serving's layout
  (``saved_model.pb`` and ``variables/`` directly in ``<n>/``, the other files beside them,
  ``_SUCCESS`` last), each written once. ``URI`` is a registered model (:mod:`tfos_jobs.registry`):
  ``n`` is taken from its registry (one more than every number taken or present), and the version
  is registered with its lineage once it is complete.

Exports written before the publish protocol (files and ``_SUCCESS`` directly in ``URI``) still load.
TFoS's ``compat.export_saved_model`` calls ``model.save(dir, save_format='tf')``, which Keras 3
rejects; this module replaces it.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import hdfs_io

SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
SAVED_MODEL_PB = "saved_model.pb"


class NotAnExport(FileNotFoundError):
    """The URI holds no complete model export."""


def serving_module(model, feature_dtypes: dict):  # -> tf.Module
    """A tf.Module whose ``serving_default`` takes one ``[batch]`` tensor per feature column."""
    import tensorflow as tf
    spec = {name: tf.TensorSpec([None], tf.dtypes.as_dtype(dtype), name=name)
            for name, dtype in feature_dtypes.items()}

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[spec])
        def serve(self, features):
            outputs = self.model(features, training=False)
            return outputs if isinstance(outputs, dict) else {"prediction": outputs}

    return Serving()


def write_export(local_dir: str, model, feature_dtypes: dict, metrics: dict, files: dict | None = None,
                 saved_model_dir: str = SAVED_MODEL) -> None:
    """Write SavedModel (into ``saved_model_dir``, "" for the directory itself), Keras file, metrics
    and the job's ``files`` (name -> JSON-able object) into a local directory."""
    import tensorflow as tf
    module = serving_module(model, feature_dtypes)
    tf.saved_model.save(module, os.path.join(local_dir, saved_model_dir), signatures={"serving_default": module.serve})
    model.save(os.path.join(local_dir, KERAS_FILE))
    for name, content in {METRICS_FILE: metrics, **(files or {})}.items():
        with open(os.path.join(local_dir, name), "w") as handle:
            json.dump(content, handle, indent=2, sort_keys=True)


def check_export_target(export_uri: str, kind: str | None, version: str = "", overwrite: bool = False) -> None:
    """Before training: fail now, not after it, if the export could not be published (driver side)."""
    if version == "auto":
        if hdfs_io.exists(export_uri) and hdfs_io.is_published(export_uri):
            raise FileExistsError(f"{export_uri} is a published {hdfs_io.published_kind(export_uri) or 'output'}, "
                                  "not a directory of numbered model versions: choose another --export")
        return
    if not hdfs_io.exists(export_uri):
        return
    existing = hdfs_io.published_kind(export_uri)
    if kind and existing and existing != kind:
        raise hdfs_io.WrongKindError(export_uri, existing, kind)
    if not overwrite:
        raise FileExistsError(f"export {export_uri} already exists: pass --overwrite to replace it, or "
                              "--version auto to publish a new numbered version beside it")


def publish_export(export_uri: str, model, feature_dtypes: dict, metrics: dict, *, kind: str | None = None,
                   files: dict | None = None, version: str = "", overwrite: bool = False,
                   lineage: dict | None = None) -> str:
    """Publish the model and its files as one unit (see module doc); returns the export's URI
    (``URI/<n>`` for a numbered version, registered with ``lineage`` and ``metrics``)."""
    if version == "auto":
        return _publish_version(export_uri, model, feature_dtypes, metrics, files, lineage or {})
    with hdfs_io.publish(export_uri, overwrite=overwrite, kind=kind) as local_dir:
        write_export(local_dir, model, feature_dtypes, metrics, files)
    return export_uri


def _publish_version(base_uri, model, feature_dtypes, metrics, files, lineage):
    import tempfile
    from tfos_jobs.registry import ModelRegistry
    registry = ModelRegistry(base_uri)
    lineage = {**lineage, "code": code_version()}
    with tempfile.TemporaryDirectory(prefix="tfos-export-") as local_dir:
        write_export(local_dir, model, feature_dtypes, metrics, {**(files or {}), LINEAGE_FILE: lineage},
                     saved_model_dir="")
        number = registry.allocate()    # the number is ours alone: the registry's log orders the takers
        target = hdfs_io.publish_once(local_dir, registry.version_uri(number), last=(SAVED_MODEL_PB,))
    registry.register(number, lineage=lineage, metrics=metrics)
    return target


def code_version() -> dict:
    """The installed package's version, and the git commit when it runs from a checkout."""
    import importlib.metadata
    import subprocess
    found: dict = {}
    try:
        found["tfos_jobs"] = importlib.metadata.version("tfos-jobs")
    except importlib.metadata.PackageNotFoundError:
        found["tfos_jobs"] = "unknown"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=5)
        if head.returncode == 0:
            found["git_commit"] = head.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return found


def versions(base_uri: str) -> dict[int, bool]:
    """The numbered version directories under ``base_uri``: number -> complete (has ``_SUCCESS``)."""
    if not hdfs_io.exists(base_uri):
        return {}
    found = {}
    for info in hdfs_io.ls(base_uri):
        name = info.uri.rstrip("/").rsplit("/", 1)[-1]
        if info.is_dir and re.fullmatch(r"\d+", name):
            found[int(name)] = hdfs_io.exists(hdfs_io.join(info.uri, hdfs_io.SUCCESS))
    return found


def export_dir(export_uri: str) -> str:
    """The directory holding an export's files: the current version of a published export, a legacy
    export itself, a numbered version given directly, or the highest complete version under a base."""
    if not hdfs_io.exists(export_uri):
        raise NotAnExport(f"model export {export_uri} does not exist: train with --export {export_uri} first")
    if hdfs_io.is_published(export_uri):
        return hdfs_io.resolve(export_uri)
    complete = [n for n, done in versions(export_uri).items() if done]
    if complete:
        return hdfs_io.join(export_uri, str(max(complete)))
    raise NotAnExport(f"{export_uri} is not a complete model export (no _CURRENT, no _SUCCESS, no complete "
                      "numbered version): re-create it with `train --export`")


def saved_model_path(directory: str) -> str:
    """Where the SavedModel of an export directory is: the directory itself (TF Serving's layout) or
    its ``saved_model/`` (a replaceable or legacy export)."""
    if hdfs_io.exists(hdfs_io.join(directory, SAVED_MODEL_PB)):
        return directory
    if hdfs_io.exists(hdfs_io.join(directory, SAVED_MODEL, SAVED_MODEL_PB)):
        return hdfs_io.join(directory, SAVED_MODEL)
    raise NotAnExport(f"{directory} holds no SavedModel ({SAVED_MODEL_PB} or {SAVED_MODEL}/{SAVED_MODEL_PB}): "
                      "re-create the export with `train --export`")


def read_export_file(export_uri: str, name: str, what: str = "model export") -> Any:
    """A JSON file of the export (``metrics.json``, a job's config), from the directory :func:`export_dir` picks."""
    uri = hdfs_io.join(export_dir(export_uri), name)
    if not hdfs_io.exists(uri):
        raise NotAnExport(f"{export_uri} is not a {what}: {name} is missing")
    with hdfs_io.open(uri, "r") as handle:
        return json.load(handle)


def load_serving(export_uri: str, local_cache: str | None):  # -> the serving_default signature
    """Load an export's serving function (downloading it first when it is remote)."""
    import tensorflow as tf
    directory = export_dir(export_uri)
    local = directory[len("file://"):] if directory.startswith("file://") else directory
    if not os.path.isdir(local):
        hdfs_io.download(directory, local_cache)
        local = local_cache
    return tf.saved_model.load(saved_model_path(local)).signatures["serving_default"]
