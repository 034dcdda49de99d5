"""Which client serves which scheme, and the cache of file system objects.

Measured here (benchmarks/storage.py and the notes in NOTES.md), the choice per scheme:

* ``file://`` and plain paths: ``pyarrow.fs.LocalFileSystem`` (C++, releases the GIL).
* ``s3://`` / ``s3a://``: ``pyarrow.fs.S3FileSystem`` (AWS SDK for C++). It read Parquet 2-3x faster
  than s3fs against the same server, needs no extra package, honours the AWS variables and profiles,
  and writes multipart uploads in the background. It writes empty ``dir/`` marker objects from
  ``create_dir`` and, to keep a "directory" alive, after every ``delete_file``/``delete_dir`` that
  empties one; those markers break s3fs listings and leave phantom empty directories behind. So we
  never call those: deletes go through botocore (``DeleteObjects``, 1000 keys a request), which
  resolves the same AWS variables and profiles.
* ``hdfs://`` / ``viewfs://``: hdfs-native (Rust) wrapped as a ``pyarrow.fs.PyFileSystem`` (see
  :mod:`hdfs_io.hdfs`). pyarrow's ``HadoopFileSystem`` needs libhdfs and a JVM, which we cannot ship.

All three are therefore ``pyarrow.fs.FileSystem`` objects, so Parquet reading is pyarrow's own code
on every scheme and the layer on top adds only a metadata call per file.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, TypeVar

import pyarrow.fs as pafs

from . import _timeout, config, hdfs
from .errors import StorageError, StorageTimeoutError, StorageUnavailableError, not_found
from .uri import Location, parse

T = TypeVar("T")

_cache: dict[tuple[str, str], pafs.FileSystem] = {}
_lock = threading.Lock()


def reset() -> None:
    """Forget cached clients (after changing ``HADOOP_CONF_DIR``, AWS variables or the timeout)."""
    with _lock:
        _cache.clear()


_inherited: list = []


def _after_fork_in_child() -> None:
    # Clients hold threads and connections (hdfs-native's tokio runtime) that a forked child (Spark and
    # TFoS fork Python workers) does not inherit in working order, so the child makes its own. The
    # parent's objects are kept referenced, never dropped: destroying hdfs-native's client waits for
    # runtime threads that do not exist in the child, and would hang it.
    global _lock
    _lock = threading.Lock()
    _inherited.append(dict(_cache))
    _cache.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _make_s3() -> pafs.FileSystem:
    s3 = config.s3_settings()
    limit = _timeout.timeout_s()
    # Data transfers run inside the AWS SDK, not on our timed threads: a stalled transfer fails after
    # request_timeout seconds without progress (curl's low-speed limit), and the SDK tries 3 times.
    # A third of the budget per attempt keeps a dead endpoint's total near HDFS_IO_TIMEOUT_S.
    attempt = max(1.0, limit / 3)
    kwargs: dict[str, Any] = dict(
        region=s3.region,
        connect_timeout=min(attempt, 10.0),
        request_timeout=attempt,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        allow_bucket_creation=False,
        allow_bucket_deletion=False,
    )
    if s3.endpoint:
        kwargs.update(endpoint_override=s3.endpoint, scheme=s3.scheme)
    return pafs.S3FileSystem(**kwargs)


def _make_s3_client():
    import botocore.config
    import botocore.session

    s3 = config.s3_settings()
    limit = _timeout.timeout_s()
    session = botocore.session.Session(profile=s3.profile)
    endpoint = f"{s3.scheme}://{s3.endpoint}" if s3.endpoint else None
    cfg = botocore.config.Config(
        connect_timeout=min(limit, 10.0),
        read_timeout=limit,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return session.create_client("s3", region_name=s3.region, endpoint_url=endpoint, config=cfg)


def s3_client():
    """A botocore S3 client configured like the pyarrow S3 file system (used for deletes)."""
    key = ("s3-botocore", "")
    with _lock:
        client = _cache.get(key)
        if client is None:
            client = _cache[key] = _make_s3_client()
        return client


def s3_delete(loc: Location, keys: list[str] | None = None) -> int:
    """Delete ``keys`` (full keys in ``loc``'s bucket), or, when None, the object ``loc`` and every
    object under the prefix ``loc/`` (marker objects included). Returns the number deleted."""
    client = s3_client()
    bucket = loc.bucket

    def run() -> int:
        if keys is None:
            todo = []
            if loc.key:
                todo.append(loc.key)
            prefix = loc.key.rstrip("/") + "/" if loc.key else ""
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                todo.extend(obj["Key"] for obj in page.get("Contents", []))
        else:
            todo = list(keys)
        done = 0
        for i in range(0, len(todo), 1000):
            chunk = todo[i : i + 1000]
            resp = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(f"S3 could not delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
            done += len(chunk)
        return done

    try:
        return _timeout.call(loc.uri, "delete", run)
    except Exception as exc:
        if exc.__class__.__module__.startswith("botocore"):
            raise translate_s3_error(loc.uri, OSError(f"{type(exc).__name__}: {exc}")) from None
        raise


def filesystem_for(loc: Location) -> pafs.FileSystem:
    key = (loc.scheme, loc.authority if loc.scheme in ("hdfs", "viewfs") else "")
    with _lock:
        fs = _cache.get(key)
        if fs is None:
            if loc.scheme == "file":
                fs = pafs.LocalFileSystem(use_mmap=False)
            elif loc.scheme == "s3":
                fs = _make_s3()
            else:
                fs = hdfs.filesystem(loc.scheme, loc.authority)
            _cache[key] = fs
        return fs


def resolve(uri: str) -> tuple[pafs.FileSystem, Location]:
    """``(pyarrow FileSystem, Location)`` for a URI; ``Location.path`` is the path that file system
    takes. Public as :func:`hdfs_io.filesystem` for callers who want ``pyarrow.dataset``."""
    loc = parse(uri)
    return filesystem_for(loc), loc


def meta(loc: Location, op: str, fn: Callable[..., T], *args: Any) -> T:
    """Run a metadata call bounded by the timeout, with S3 errors turned into the built-in classes.
    HDFS calls are bounded inside the handler and local ones cannot hang on a network, so only S3
    needs the extra hop here."""
    if loc.scheme != "s3":
        return fn(*args)
    try:
        return _timeout.call(loc.uri, op, fn, *args)
    except OSError as exc:
        raise translate_s3_error(loc.uri, exc) from None


def translate_s3_error(uri: str, exc: OSError) -> OSError:
    """Map the AWS SDK's error text (pyarrow raises a bare OSError) onto specific exceptions."""
    if isinstance(exc, (StorageError, FileNotFoundError, FileExistsError, PermissionError)):
        return exc
    msg = str(exc)
    if "curlCode: 28" in msg or "Timeout was reached" in msg:
        return StorageTimeoutError(uri, _timeout.timeout_s(), "transfer of")
    if "NETWORK_CONNECTION" in msg or "curlCode" in msg or "EndpointConnectionError" in msg or "ConnectTimeout" in msg:
        return StorageUnavailableError(uri, "S3 endpoint " + config.s3_settings().describe() + ": " + msg[:300])
    if "NoSuchBucket" in msg or "Not Found" in msg or "bucket does not exist" in msg or "NoSuchKey" in msg:
        return not_found(uri)
    if "ACCESS_DENIED" in msg or "AccessDenied" in msg or "InvalidAccessKeyId" in msg or "SignatureDoesNotMatch" in msg:
        return PermissionError(f"S3 refused access to {uri}: {msg[:300]}")
    return exc
