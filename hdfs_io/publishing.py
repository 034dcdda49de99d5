"""Publishing output directories (model exports, predictions, metrics, data sets): one protocol for
every scheme.

Guarantee: at every instant a reader that follows the protocol (every reader in :mod:`hdfs_io`, or
anyone who reads :func:`resolve`'s answer) sees at a published URI either the complete old version or
the complete new one, never neither and never a mix; a crash at any point (exception, SIGKILL, lost
connection) leaves the old version readable, and the next publish cleans up and goes on.

Layout of a published URI ``U``::

    U/_CURRENT                      pointer (JSON): {"version": "_v-...", "previous": ..., "kind": ...}
    U/_v-<utc time>-<random>/...    immutable version directories, each complete with _SUCCESS last
    U/_v-<utc time>-<random>/_SUCCESS

Names starting with ``_`` are hidden from Spark's and pyarrow's data set discovery, so a reader that
does not know the protocol and is given ``U`` itself sees no data files and fails rather than read a
mix; give it ``resolve(U)`` (one immutable, complete directory).

Publishing (:func:`staged_output`, :func:`publish_dir`, :func:`publish`):

1. check the target: ``overwrite=False`` refuses a published ``U`` (or one holding anything but the
   debris of crashed publishes); a ``kind`` different from the published one is refused
   (:class:`WrongKindError`) even with ``overwrite=True``;
2. write the new version directly at its final place ``U/_v-<new>/`` (no copy, no rename of ``U``);
3. write ``_SUCCESS`` into it;
4. replace ``U/_CURRENT`` atomically: this one step switches readers from the old version to the new
   one. Local disk: temporary file + ``os.replace``; HDFS: temporary file + rename with OVERWRITE
   (``rename2``, one NameNode operation); S3: one PUT of the object (S3 writes an object atomically
   and reads are strongly consistent);
5. clean up (best effort, failures only logged): the pointer names the new version and the previous
   one (kept for readers that resolved it just before the switch); every other entry of ``U`` is
   deleted: older versions, debris of crashed runs, and the files of a legacy layout (``_SUCCESS``
   first).

A crash before step 4 leaves the old pointer (old version still complete); a crash after it leaves the
new one; leftovers are deleted by the next successful publish. One publisher per URI at a time.

Legacy layout: an output written before this protocol (data and ``_SUCCESS`` directly in ``U``) is
still read: :func:`resolve` returns ``U`` itself; overwriting it switches it to the new layout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import pyarrow.fs as pafs

from . import backends
from . import fs as _fs
from .errors import CorruptFileError, NotPublishedError, WrongKindError, not_found
from .stores import Store
from .uri import Location

SUCCESS = "_SUCCESS"
POINTER = "_CURRENT"
VERSION_PREFIX = "_v-"
FORMAT = "hdfs_io.publish/1"

log = logging.getLogger(__name__)

__all__ = [
    "SUCCESS",
    "publish_once",
    "POINTER",
    "PublishedInfo",
    "publish",
    "publish_dir",
    "is_published",
    "require_published",
    "resolve",
    "published_info",
    "published_kind",
    "staged_output",
]


@dataclasses.dataclass(frozen=True)
class PublishedInfo:
    """What is published at ``uri``: the directory to read (``data_uri``), and what the pointer
    says (all None / empty for a legacy output)."""

    uri: str
    data_uri: str
    version: str | None
    previous: str | None
    time: str | None
    kind: str | None
    metadata: dict

    @property
    def legacy(self) -> bool:
        return self.version is None


# -------------------------------------------------------------------------------------------- read
def _read_pointer(store: Store, loc: Location) -> dict | None:
    """The pointer of ``loc`` (None when there is none)."""
    ploc = loc.child(POINTER)
    for attempt in range(3):  # a read racing a replacement may fail (HDFS: the old file's blocks go)
        try:
            raw = store.read_snapshot(ploc)  # one version of it; the store's own read, no following here
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            ptr = json.loads(raw.decode("utf-8"))
            if not isinstance(ptr, dict) or not str(ptr.get("version", "")).startswith(VERSION_PREFIX):
                raise ValueError(f"no {VERSION_PREFIX}* version in {ptr!r:.200}")
            return ptr
        except ValueError as exc:
            if attempt == 2:
                raise CorruptFileError(ploc.uri, f"not a publish pointer: {exc}") from None
    return None


def _info_of(store: Store, loc: Location) -> PublishedInfo:
    ptr = _read_pointer(store, loc)
    if ptr is not None:
        version = loc.child(ptr["version"])
        if not store.exists(version.child(SUCCESS)):
            raise NotPublishedError(loc.uri, f"its {POINTER} names {ptr['version']}, which has no {SUCCESS} "
                                             "(deleted by hand?); publish it again")
        return PublishedInfo(loc.uri, version.uri, ptr["version"], ptr.get("previous"), ptr.get("time"),
                             ptr.get("kind"), dict(ptr.get("metadata") or {}))
    if store.exists(loc.child(SUCCESS)):
        return PublishedInfo(loc.uri, loc.uri, None, None, None, None, {})
    if not store.exists(loc):
        raise not_found(loc.uri)
    raise NotPublishedError(loc.uri)


def published_info(uri: str) -> PublishedInfo:
    """What is published at ``uri`` (see :class:`PublishedInfo`). ``FileNotFoundError`` if ``uri``
    does not exist, :class:`NotPublishedError` if nothing complete is published there."""
    return _info_of(*backends.resolve(uri))


def resolve(uri: str) -> str:
    """The URI of the complete version published at ``uri``: ``uri/_v-...`` (an immutable directory
    to hand to Spark, pyarrow or TensorFlow), or ``uri`` itself for a legacy output (data and
    ``_SUCCESS`` directly in it). ``FileNotFoundError`` if ``uri`` does not exist,
    :class:`NotPublishedError` (also a ``FileNotFoundError``) if nothing complete is published there."""
    return published_info(uri).data_uri


def published_kind(uri: str) -> str | None:
    """The ``kind`` the output at ``uri`` was published with (None for a legacy output or none given)."""
    return published_info(uri).kind


def is_published(uri: str) -> bool:
    """True if a complete version is published at ``uri`` (either layout)."""
    try:
        published_info(uri)
    except FileNotFoundError:
        return False
    return True


def require_published(uri: str) -> None:
    """``FileNotFoundError`` if ``uri`` is missing, :class:`NotPublishedError` if nothing complete is
    published there."""
    published_info(uri)


def data_location(store: Store, loc: Location, require_success: bool) -> Location:
    """Where a reader of the directory ``loc`` finds its data: the current version when ``loc`` has a
    pointer; else ``loc`` itself (which must hold ``_SUCCESS`` when ``require_success``)."""
    ptr = _read_pointer(store, loc)
    if ptr is None and not require_success:
        return loc
    return backends.resolve(_info_of(store, loc).data_uri)[1]


def follow(uri: str, max_depth: int = 6) -> str | None:
    """For a path *inside* a published URI (``U/metrics.json``, ``U/variables/x``) that does not
    exist as written: the same path in ``U``'s current version, or None. Looks up ``_CURRENT`` in at
    most ``max_depth`` ancestors (only called on a miss)."""
    store, loc = backends.resolve(uri)
    rel: list[str] = []
    cur = loc
    for _ in range(max_depth):
        if cur.is_root:
            return None
        rel.insert(0, cur.name)
        cur = cur.parent()
        if cur.is_root or rel[0].startswith(VERSION_PREFIX):
            return None
        try:
            ptr = _read_pointer(store, cur)
        except CorruptFileError:
            return None
        if ptr is not None:
            return cur.child(ptr["version"]).uri.rstrip("/") + "/" + "/".join(rel)
    return None


# ------------------------------------------------------------------------------------------ write
def _new_version() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{VERSION_PREFIX}{now}-{uuid.uuid4().hex[:8]}"


def _is_debris(name: str) -> bool:
    """Entries a crashed publish can leave in ``U`` (no pointer names them yet)."""
    return name.startswith(VERSION_PREFIX) or (name.startswith(".") and _fs.TMP_MARK in name)


def _names(store: Store, loc: Location) -> list[str]:
    return [posixpath.basename(e.path.rstrip("/")) for e in store.listdir(loc, False)]


def _check_target(store: Store, loc: Location, overwrite: bool, kind: str | None) -> dict | None:
    """Refuse what may not be published over; returns the current pointer (None if there is none)."""
    if loc.is_root:
        raise ValueError(f"cannot publish to the root {loc.uri}")
    fi = store.stat(loc)
    if fi.type == pafs.FileType.NotFound:
        return None
    if fi.type == pafs.FileType.File:
        raise FileExistsError(f"{loc.uri} exists and is a file, not a published directory")
    ptr = _read_pointer(store, loc)
    if ptr is not None and kind is not None and ptr.get("kind") not in (None, kind):
        raise WrongKindError(loc.uri, ptr["kind"], kind)
    if not overwrite:
        names = _names(store, loc)
        if ptr is not None or any(not _is_debris(n) for n in names):
            raise FileExistsError(f"{loc.uri} already exists (pass overwrite=True to replace it)")
    return ptr


def _write_success(version: Location) -> None:
    with _fs.open(version.child(SUCCESS).uri, "wb"):
        pass


def _write_pointer(final: Location, ptr: dict) -> None:
    """Replace ``final/_CURRENT`` atomically (see module doc): the switch from old to new."""
    with _fs.open(final.child(POINTER).uri, "wb") as f:
        f.write(json.dumps(ptr, sort_keys=True).encode("utf-8"))


def _delete_entry(store: Store, loc: Location) -> None:
    _fs.delete(loc.uri, recursive=True, missing_ok=True)


def _cleanup(store: Store, final: Location, keep: set[str]) -> None:
    """Delete every entry of ``final`` but the pointer and the versions in ``keep``; a legacy
    ``_SUCCESS`` first. Failures are logged, never raised: the publish has already switched."""
    try:
        names = _names(store, final)
    except Exception as exc:  # noqa: BLE001 - best effort
        log.warning("published %s, but could not list it to clean up (left for the next publish): %s",
                    final.uri, exc)
        return
    doomed = [n for n in names if n != POINTER and n not in keep]
    doomed.sort(key=lambda n: n != SUCCESS)  # a legacy layout stops claiming completeness first
    for name in doomed:
        try:
            _delete_entry(store, final.child(name))
        except Exception as exc:  # noqa: BLE001 - best effort
            log.warning("published %s, but could not delete the old %s (left for the next publish): %s",
                        final.uri, name, exc)


def _pointer_names(store: Store, final: Location, version: str) -> bool:
    """After a failed pointer write: does the pointer name ``version`` anyway (reply lost)?"""
    try:
        ptr = _read_pointer(store, final)
    except Exception:  # noqa: BLE001 - unknown: treat as switched, never delete what may be current
        return True
    return ptr is not None and ptr.get("version") == version


@contextlib.contextmanager
def staged_output(final_uri: str, overwrite: bool = False, kind: str | None = None,
                  metadata: dict[str, Any] | None = None) -> Iterator[str]:
    """Yield the URI of a new version directory of ``final_uri`` to write into (remote, at its final
    place, hidden from readers until published); on clean exit write ``_SUCCESS`` into it and switch
    the pointer (see module doc); on an exception delete it, the published version untouched.
    ``kind`` (e.g. ``"ctr-prep"``) and ``metadata`` (JSON-able) are stored in the pointer; publishing
    a kind over an output of another kind raises :class:`WrongKindError`. Used by
    :func:`hdfs_io.write_parquet`; use :func:`publish` when the writer needs a local directory."""
    store, final = backends.resolve(final_uri)
    fresh = not store.exists(final)
    old = _check_target(store, final, overwrite, kind)
    name = _new_version()
    version = final.child(name)
    if store.caps.real_directories:
        store.fs.create_dir(version.path, recursive=True)
    switched = False
    try:
        yield version.uri
        _write_success(version)
        ptr = {"format": FORMAT, "version": name, "previous": old["version"] if old else None, "kind": kind,
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "metadata": dict(metadata or {})}
        try:
            _write_pointer(final, ptr)
        except BaseException:
            switched = _pointer_names(store, final, name)
            if not switched:
                raise
            log.warning("the pointer of %s names the new version although its write reported an error", final.uri)
        switched = True
    except BaseException:
        if not switched:
            with contextlib.suppress(Exception):
                _fs.delete(version.uri, recursive=True, missing_ok=True)
                if fresh and store.caps.real_directories and not store.listdir(final, False):
                    store.delete_tree(final)  # the directory this publish created, left empty
        raise
    _cleanup(store, final, {name} | ({old["version"]} if old else set()))


def publish_dir(local_dir: str, final_uri: str, overwrite: bool = False, kind: str | None = None,
                metadata: dict[str, Any] | None = None) -> str:
    """Upload the local directory ``local_dir`` as a new version of ``final_uri`` and publish it (see
    module doc). Returns ``final_uri``."""
    local = os.fspath(local_dir)
    if not os.path.isdir(local):
        raise NotADirectoryError(f"publish_dir needs a local directory, got {local!r}")
    with staged_output(final_uri, overwrite=overwrite, kind=kind, metadata=metadata) as version:
        _fs.copy(local, version)
    return final_uri


@contextlib.contextmanager
def publish(final_uri: str, overwrite: bool = False, kind: str | None = None,
            metadata: dict[str, Any] | None = None) -> Iterator[str]:
    """Context manager: yields a fresh LOCAL directory to write into (TensorFlow writes only to local
    disk here). On clean exit its content is published to ``final_uri`` with :func:`publish_dir`; on
    an exception nothing changes at ``final_uri``. The local directory is removed either way.

    ``FileExistsError`` (or :class:`WrongKindError`) is raised up front if ``final_uri`` may not be
    published over."""
    store, final = backends.resolve(final_uri)
    _check_target(store, final, overwrite, kind)
    local = tempfile.mkdtemp(prefix="hdfs_io-publish-")
    try:
        yield local
        publish_dir(local, final_uri, overwrite=overwrite, kind=kind, metadata=metadata)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def publish_once(local_dir: str, final_uri: str, last: tuple[str, ...] = ()) -> str:
    """Publish the local directory ``local_dir`` as the write-once directory ``final_uri`` (a numbered
    model version, TF Serving's layout), with ``_SUCCESS``; never replaces anything: raises
    ``FileExistsError`` if ``final_uri`` exists.

    With an atomic rename (HDFS, local disk) the files go to a hidden sibling that is renamed onto
    ``final_uri`` in one step. On S3 the objects are written to their final keys in an order that
    keeps the directory unusable until it is whole: every other file, then the ``last`` names (e.g.
    ``saved_model.pb``, whose presence makes TF Serving load a version), then ``_SUCCESS``, which our
    readers require. A crash leaves a directory without ``_SUCCESS``: readers skip it, and a new
    version number passes over it.
    """
    store, final = backends.resolve(final_uri)
    if store.exists(final):
        raise FileExistsError(f"{final.uri} already exists: versions are write-once")
    files = sorted(os.path.relpath(os.path.join(d, f), local_dir) for d, _, fs_ in os.walk(local_dir) for f in fs_)
    if store.caps.atomic_rename:
        tmp = _fs.temp_sibling(final)
        try:
            _fs.upload(local_dir, tmp.uri)
            _write_success(tmp)
            if store.exists(final):
                raise FileExistsError(f"{final.uri} appeared while it was being published")
            store.fs.move(tmp.path, final.path)
        except BaseException:
            with contextlib.suppress(Exception):
                _fs.delete(tmp.uri, recursive=True, missing_ok=True)
            raise
        return final.uri
    ordered = [f for f in files if f not in last] + [f for f in files if f in last]
    for rel in ordered:
        with open(os.path.join(local_dir, rel), "rb") as src, _fs.open(final.child(rel).uri, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    _write_success(final)
    return final.uri
