"""The served models: each name follows its export URI, loads a new version off the request path,
checks it with a smoke prediction, and swaps it in with one reference assignment (a batch in flight
keeps the version it started with, so a swap fails no request). A version that fails to load or to
predict is not swapped in: the old one keeps serving, and the failure shows in the model's status."""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

import hdfs_io
from tfos_jobs import localdirs, scoring
from tfos_jobs.export import export_dir, saved_model_path, versions
from tfos_jobs.serving.config import ModelSource

log = logging.getLogger("tfos_jobs.serving")
KEPT_LOADED = 2     # the serving version and the one before it (for /versions/<v> during a swap)


@dataclass(frozen=True)
class TensorInfo:
    dtype: np.dtype
    shape: tuple          # without the batch dimension; None for an unknown size


class LoadedVersion:
    """One export version in memory: its serving function, signature and raw-record encoding."""

    def __init__(self, version: str, directory: str, cache_key: str, serve: Any, encoding: RawRecords | None):
        self.version, self.directory, self.cache_key = version, directory, cache_key
        self.serve, self.encoding = serve, encoding
        _, kwargs = serve.structured_input_signature
        self.inputs = {name: TensorInfo(np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape[1:]))
                       for name, spec in kwargs.items()}
        self.outputs = {name: TensorInfo(np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape[1:]))
                        for name, spec in serve.structured_outputs.items()}

    def predict(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on whole columns (one array per input, the same length): thread-safe."""
        import tensorflow as tf
        outputs = self.serve(**{name: tf.constant(columns[name]) for name in self.inputs})
        return {name: value.numpy() for name, value in outputs.items()}

    def smoke_test(self) -> None:
        """Two rows of zeros must give finite outputs of two rows each."""
        columns = {name: np.zeros((2,) + tuple(d or 1 for d in info.shape), dtype=info.dtype)
                   for name, info in self.inputs.items()}
        for name, value in self.predict(columns).items():
            if value.shape[:1] != (2,) or (value.dtype.kind == "f" and not np.isfinite(value).all()):
                raise ValueError(f"smoke prediction: output {name!r} is {value.shape} {value.dtype} "
                                 f"with values {value.ravel()[:4]}")


@dataclass(frozen=True)
class RawRecords:
    """How an export turns raw records into its inputs: ``delimited`` lines (the CTR job's
    :class:`RecordEncoding`) or survey ``respondents`` (the prep plan published with the export)."""
    kind: str
    spec: Any

    def columns(self, body: dict, max_instances: int) -> tuple[dict, int]:
        from tfos_jobs.serving import requests as bodies
        if self.kind == "delimited":
            return bodies.record_columns(body, self.spec, max_instances)
        return bodies.respondent_columns(body, self.spec, max_instances)

    def describe(self) -> dict:
        if self.kind == "delimited":
            return {"records": f"{self.spec.fields} fields separated by {self.spec.separator!r}"}
        return {"respondents": sorted({f["column"] for f in self.spec["features"]})}


def raw_encoding(directory: str) -> RawRecords | None:
    """How raw records become this export's inputs, from the job config the export carries (None: the
    export's job has no declarative encoding)."""
    ctr_config, survey_plan = hdfs_io.join(directory, "ctr.json"), hdfs_io.join(directory, "prep.json")
    if hdfs_io.exists(ctr_config):
        from tfos_jobs.ctr import schema
        with hdfs_io.open(ctr_config, "r") as handle:
            return RawRecords("delimited", schema.encoding(int(json.load(handle)["hash_buckets"]), labeled=False))
    if hdfs_io.exists(survey_plan):
        with hdfs_io.open(survey_plan, "r") as handle:
            return RawRecords("respondents", json.load(handle))
    return None


def load_version(directory: str, cache_root: str) -> LoadedVersion:
    """Load and check one export directory (blocking: called off the request path)."""
    import tensorflow as tf
    key = scoring.export_key(directory)
    if directory.startswith("file://") or os.path.isdir(directory):
        local = directory[len("file://"):] if directory.startswith("file://") else directory
    else:
        local = scoring.cached_export(directory, key, cache_root)
    serve = tf.saved_model.load(saved_model_path(local)).signatures["serving_default"]
    loaded = LoadedVersion(scoring.model_version(directory), directory, key, serve, raw_encoding(directory))
    loaded.smoke_test()
    return loaded


class ServedModel:
    """A model name, the version it serves now, and what happened to the versions it saw."""

    def __init__(self, source: ModelSource, cache_root: str, cache_versions: int):
        self.source, self.cache_versions = source, cache_versions
        self.cache_root = cache_root or localdirs.ensure_dirs(localdirs.user_root(), "serving", source.name)
        if cache_root:
            localdirs.ensure_dirs(cache_root, user_given=True)
        self.current: LoadedVersion | None = None
        self.loaded: dict[str, LoadedVersion] = {}
        self.failed: dict[str, str] = {}         # version -> why it was not swapped in
        self._lock = threading.Lock()            # one refresh at a time

    def refresh(self) -> bool:
        """Look at the export URI once; load, check and swap to a new version. True when it swapped.
        With nothing served yet (at start), a newest version that fails gives way to the next older."""
        with self._lock:
            directory = self.directory()
            if self.current and self.current.directory == directory:
                return False
            for candidate in [directory] if self.current else self._newest_first(directory):
                version = scoring.model_version(candidate)
                if version in self.failed:
                    continue
                try:
                    loaded = load_version(candidate, self.cache_root)
                except Exception as exc:   # noqa: BLE001 - any failure keeps the old version serving
                    self.failed[version] = f"{type(exc).__name__}: {exc}"[:500]
                    log.error("model %s: version %s not swapped in (%s); %s", self.source.name, version,
                              self.failed[version], "still serving " + self.current.version if self.current else
                              "nothing served yet")
                    continue
                self.loaded = {loaded.version: loaded, **dict(list(self.loaded.items())[:KEPT_LOADED - 1])}
                self.current = loaded            # the swap: a request reads this reference once
                log.info("model %s: serving version %s from %s", self.source.name, loaded.version, candidate)
                self._evict()
                return True
            return False

    def directory(self) -> str:
        """The export directory to serve now: the alias's version, or the newest complete one."""
        if self.source.alias:
            from tfos_jobs.registry import ModelRegistry
            registry = ModelRegistry(self.source.uri)
            return registry.version_uri(registry.resolve(self.source.alias))
        return export_dir(self.source.uri)

    def _newest_first(self, directory: str) -> list[str]:
        """``directory``, then the older complete numbered versions beside it (if it is one); only the
        alias's version when an alias is followed (another version was not chosen by anyone)."""
        if self.source.alias:
            return [directory]
        numbered = {n for n, complete in versions(self.source.uri).items() if complete}
        older = sorted((n for n in numbered if hdfs_io.join(self.source.uri, str(n)) != directory), reverse=True)
        return [directory] + [hdfs_io.join(self.source.uri, str(n)) for n in older]

    def _evict(self) -> None:
        """Keep at most ``cache_versions`` cached copies (the loaded ones always)."""
        in_use = {v.cache_key for v in self.loaded.values()}
        entries = [e for e in os.scandir(self.cache_root) if e.is_dir(follow_symlinks=False)]
        entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime, reverse=True)
        kept = len(in_use)
        for entry in entries:
            if entry.name in in_use:
                continue
            if kept < self.cache_versions:
                kept += 1
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            try:
                os.unlink(entry.path + ".lock")
            except FileNotFoundError:
                pass

    def status(self) -> list[dict]:
        """TF Serving's ``model_version_status``."""
        states = [{"version": v.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                  for v in self.loaded.values()]
        states += [{"version": version, "state": "END", "status": {"error_code": "UNKNOWN", "error_message": why}}
                   for version, why in self.failed.items()]
        return states
