"""Atomic publish of output directories (model exports, predictions, metrics, data sets).

A directory appears at its final URI complete, with a ``_SUCCESS`` marker, or not at all.

Which protocol a store gets follows from its ``atomic_rename`` capability.

Protocol on HDFS and local disks (rename is atomic there):

1. upload / write everything into a hidden temporary sibling ``<parent>/.<name>._hdfs_io_tmp-<id>``;
2. write ``_SUCCESS`` into it;
3. rename it to the final URI. With ``overwrite=True`` an existing directory is first renamed aside
   (``.<name>._hdfs_io_old-<id>``) and deleted after the new one is in place; should the second rename
   fail, the old one is renamed back.

Protocol on S3 (no rename; a prefix cannot change atomically):

1. upload everything under the temporary sibling prefix ``<parent>/.<name>._hdfs_io_tmp-<id>/``;
   a failure here leaves nothing under the final prefix;
2. with ``overwrite=True``, delete the old ``_SUCCESS`` first, then the old objects;
3. server-side copy every object to the final prefix, ``_SUCCESS`` last, then delete the temporary
   prefix. If a copy fails, the objects already copied are deleted again.

So on S3 the final prefix may briefly hold some objects without ``_SUCCESS`` (during step 3, or
after a crash in it). **Readers of S3 outputs must check ``_SUCCESS``**: :func:`is_published`,
:func:`require_published`, or ``list_data_files(uri, require_success=True)``. On HDFS and local
disks ``_SUCCESS`` is there for the same reader code (and for Spark/Hadoop tools that look for it).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import shutil
import tempfile
import uuid
from typing import Iterator

from . import backends
from . import fs as _fs
from .errors import NotPublishedError, not_found
from .stores import Store
from .uri import Location

SUCCESS = "_SUCCESS"
OLD_MARK = "._hdfs_io_old-"

__all__ = ["SUCCESS", "publish", "publish_dir", "is_published", "require_published", "staged_output"]


def is_published(uri: str) -> bool:
    """True if ``uri`` is a directory holding a ``_SUCCESS`` marker."""
    return _fs.exists(_fs.join(uri, SUCCESS))


def require_published(uri: str) -> None:
    """``FileNotFoundError`` if ``uri`` is missing, :class:`NotPublishedError` if it lacks ``_SUCCESS``."""
    if not _fs.exists(uri):
        raise not_found(uri)
    if not is_published(uri):
        raise NotPublishedError(uri)


def _check_target(store: Store, loc: Location, overwrite: bool) -> None:
    if loc.is_root:
        raise ValueError(f"cannot publish to the root {loc.uri}")
    if not overwrite and store.exists(loc):
        raise FileExistsError(f"{loc.uri} already exists (pass overwrite=True to replace it)")


def _write_success(tmp: Location) -> None:
    with _fs.open(tmp.child(SUCCESS).uri, "wb"):
        pass


def _commit_rename(store: Store, tmp: Location, final: Location, overwrite: bool) -> None:
    fs = store.fs
    old = None
    if store.exists(final):
        if not overwrite:
            raise FileExistsError(f"{final.uri} already exists (pass overwrite=True to replace it)")
        old = final.parent().child(f".{final.name}{OLD_MARK}{uuid.uuid4().hex[:12]}")
        fs.move(final.path, old.path)
    try:
        fs.move(tmp.path, final.path)
    except BaseException:
        if old is not None:
            fs.move(old.path, final.path)
        raise
    if old is not None:
        _fs.delete(old.uri, recursive=True, missing_ok=True)


def _clear_for_copy(store: Store, final: Location, overwrite: bool) -> None:
    """Remove what is at ``final``, its ``_SUCCESS`` first (readers stop trusting the old content)."""
    if not store.exists(final):
        return
    if not overwrite:
        raise FileExistsError(f"{final.uri} already exists (pass overwrite=True to replace it)")
    marker = dataclasses.replace(final, path=f"{final.path}/{SUCCESS}")
    if store.exists(marker):
        store.delete_paths(final, [marker.path])
    store.delete_tree(final)


def _commit_copy(store: Store, tmp: Location, final: Location, overwrite: bool) -> None:
    _clear_for_copy(store, final, overwrite)
    data = [rel for rel, _ in _fs._walk(store, tmp) if rel != SUCCESS]
    copied: list[str] = []

    def copy_obj(rel: str) -> str:
        dst = f"{final.path}/{rel}"
        store.meta(final, "copy", store.fs.copy_file, f"{tmp.path}/{rel}", dst)
        return dst

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(_fs.COPY_THREADS, len(data)))) as pool:
            futures = [pool.submit(copy_obj, rel) for rel in data]
            errors = []
            for f in futures:
                try:
                    copied.append(f.result())
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)
            if errors:
                raise errors[0]
        copied.append(copy_obj(SUCCESS))  # last: readers treat the prefix as complete from here
    except BaseException:
        store.delete_paths(final, copied)
        raise


def _commit(store: Store, tmp: Location, final: Location, overwrite: bool) -> None:
    if store.caps.atomic_rename:
        _commit_rename(store, tmp, final, overwrite)
    else:
        _commit_copy(store, tmp, final, overwrite)
        _fs.delete(tmp.uri, recursive=True, missing_ok=True)


@contextlib.contextmanager
def staged_output(final_uri: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary *remote* sibling URI to write into; on clean exit write ``_SUCCESS`` and
    commit it to ``final_uri`` (see module doc); on an exception delete it. Used by
    :func:`hdfs_io.write_parquet`; use :func:`publish` when the writer needs a local directory."""
    store, final = backends.resolve(final_uri)
    _check_target(store, final, overwrite)
    tmp = _fs.temp_sibling(final)
    if store.caps.real_directories:
        store.fs.create_dir(tmp.path, recursive=True)
    try:
        yield tmp.uri
        _write_success(tmp)
        _commit(store, tmp, final, overwrite)
    except BaseException:
        with contextlib.suppress(Exception):
            _fs.delete(tmp.uri, recursive=True, missing_ok=True)
        raise


def publish_dir(local_dir: str, final_uri: str, overwrite: bool = False) -> str:
    """Upload the local directory ``local_dir`` so that it appears at ``final_uri`` atomically (see
    module doc), with ``_SUCCESS``. Returns ``final_uri``."""
    local = os.fspath(local_dir)
    if not os.path.isdir(local):
        raise NotADirectoryError(f"publish_dir needs a local directory, got {local!r}")
    with staged_output(final_uri, overwrite=overwrite) as tmp:
        _fs.copy(local, tmp)
    return final_uri


@contextlib.contextmanager
def publish(final_uri: str, overwrite: bool = False) -> Iterator[str]:
    """Context manager: yields a fresh LOCAL directory to write into (TensorFlow writes only to local
    disk here). On clean exit its content is published to ``final_uri`` with :func:`publish_dir`; on
    an exception nothing appears at ``final_uri``. The local directory is removed either way.

    ``FileExistsError`` is raised up front if ``final_uri`` exists and ``overwrite`` is False."""
    store, final = backends.resolve(final_uri)
    _check_target(store, final, overwrite)
    local = tempfile.mkdtemp(prefix="hdfs_io-publish-")
    try:
        yield local
        publish_dir(local, final_uri, overwrite=overwrite)
    finally:
        shutil.rmtree(local, ignore_errors=True)
