"""The URI-based file API: one set of calls for hdfs://, viewfs://, s3://, s3a://, file:// and paths.

Semantics worth knowing:

* Missing paths raise ``FileNotFoundError`` naming the URI. Remote calls are bounded by
  ``HDFS_IO_TIMEOUT_S`` (see :mod:`hdfs_io._timeout`).
* ``open(uri, "wb")`` / ``"w"`` is atomic per file: nothing appears at ``uri`` until ``close()``
  succeeds. Local and HDFS files are written to a hidden sibling and renamed; S3 objects are staged in
  a local spool file (memory up to 16 MiB) and uploaded on close, so a failed or abandoned write never
  reaches S3. Leaving a ``with`` block by an exception, or dropping an unclosed writer, discards it.
* S3 has no directories: ``mkdirs`` only checks the bucket, and a "directory" is a key prefix.
  ``rename`` on S3 is copy-then-delete (not atomic); use :func:`hdfs_io.publish` for outputs.
* ``copy``/``upload``/``download`` merge into the destination, overwriting files of the same name.
  Empty directories are recreated on local disks and HDFS; S3 cannot hold them (no marker objects).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import io
import os
import posixpath
import tempfile
import uuid
from typing import IO, Any

import pyarrow.fs as pafs

from . import backends
from .errors import not_found
from .stores import Store
from .stores.base import READ_BUFFER
from .uri import Location, join, parse

__all__ = [
    "FileInfo",
    "open",
    "info",
    "ls",
    "walk_files",
    "glob",
    "exists",
    "size",
    "mkdirs",
    "delete",
    "rename",
    "copy",
    "upload",
    "download",
    "join",
    "filesystem",
]

COPY_THREADS = 4
S3_SPOOL_BYTES = 16 << 20  # spooled in memory up to this, then on local disk (stores without atomic_rename)
TMP_MARK = "._hdfs_io_tmp-"


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One entry of a listing: the URI (in the caller's style), size in bytes (0 for directories)
    and whether it is a directory."""

    uri: str
    size: int
    is_dir: bool

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs.FileSystem`` serving ``uri`` and the path to give it (for ``pyarrow.dataset``)."""
    store, loc = backends.resolve(uri)
    return store.fs, loc.path


def temp_sibling(loc: Location) -> Location:
    """A hidden, unique sibling of ``loc`` (readers skip names starting with ``.``)."""
    return loc.parent().child(f".{loc.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def read_snapshot(uri: str) -> bytes:
    """A small file's whole content as it was at one instant, even while another writer replaces it
    (one GET on S3, where a reader that takes the size first and then reads ranges can tear).
    ``FileNotFoundError`` naming ``uri`` if it is missing."""
    store, loc = backends.resolve(uri)
    return store.read_snapshot(loc)


def create_new(uri: str, data: bytes) -> bool:
    """Write a small file only if nothing is at ``uri``: True when this call created it, False when
    something was there (then nothing is written). A reader sees it whole or not at all. Of writers
    racing for one name exactly one wins: an atomic rename without overwrite (local disk, HDFS) or a
    conditional PUT (S3). The registry's log of events is built on it."""
    store, loc = backends.resolve(uri)
    if not store.caps.atomic_rename:
        return store.put_new(loc, bytes(data))
    tmp = temp_sibling(loc)
    try:
        with store.open_temp_writer(loc, tmp) as sink:
            sink.write(data)
        store.rename_new(tmp, loc)
        return True
    except FileExistsError:
        return False
    finally:
        store.remove_quietly(tmp)


# --------------------------------------------------------------------------------------------- info
def _to_info(loc: Location, fi: pafs.FileInfo) -> FileInfo:
    is_dir = fi.type == pafs.FileType.Directory
    return FileInfo(loc.with_path(fi.path), 0 if is_dir else int(fi.size or 0), is_dir)


def _existing(store: Store, loc: Location) -> pafs.FileInfo:
    """``stat`` of ``loc``; ``FileNotFoundError`` naming the URI if it does not exist."""
    fi = store.stat(loc)
    if fi.type == pafs.FileType.NotFound:
        raise not_found(loc.uri)
    return fi


def info(uri: str) -> FileInfo:
    """Size and type of one file or directory; ``FileNotFoundError`` if it does not exist. A path
    inside a published URI (``U/x``) that is not there gives ``x`` of ``U``'s current version."""
    store, loc = backends.resolve(uri)
    fi = store.stat(loc)
    if fi.type == pafs.FileType.NotFound:
        inside = _follow_published(uri)
        if inside is None:
            raise not_found(loc.uri)
        return info(inside)
    return _to_info(loc, fi)


def _follow_published(uri: str) -> str | None:
    from .publishing import follow  # publishing builds on this module

    return follow(uri)


def exists(uri: str) -> bool:
    store, loc = backends.resolve(uri)
    return store.exists(loc)


def ls(uri: str, recursive: bool = False) -> list[FileInfo]:
    """Entries of a directory (sorted by URI), or ``[info(uri)]`` for a file."""
    store, loc = backends.resolve(uri)
    fi = _existing(store, loc)
    if fi.type == pafs.FileType.File:
        return [_to_info(loc, fi)]
    entries = [_to_info(loc, e) for e in store.listdir(loc, recursive)]
    return sorted(entries, key=lambda e: e.uri)


def walk_files(uri: str) -> list[tuple[str, FileInfo]]:
    """All files under a directory as ``(relative path, FileInfo)``, sorted; a file gives itself."""
    store, loc = backends.resolve(uri)
    return [(rel, _to_info(loc, fi)) for rel, fi in _walk(store, loc)]


def _walk(store: Store, loc: Location, dirs: bool = False) -> list[tuple[str, pafs.FileInfo]]:
    fi = _existing(store, loc)
    if fi.type == pafs.FileType.File:
        return [(loc.name, fi)]
    base = loc.path.rstrip("/") + "/"
    out = []
    for e in store.listdir(loc, True):
        if e.type == pafs.FileType.File or (dirs and e.type == pafs.FileType.Directory):
            rel = e.path[len(base):] if e.path.startswith(base) else posixpath.basename(e.path)
            out.append((rel, e))
    return sorted(out, key=lambda t: t[0])


def size(uri: str) -> int:
    """Bytes in a file, or in all files under a directory."""
    store, loc = backends.resolve(uri)
    return sum(int(fi.size or 0) for _, fi in _walk(store, loc))


_GLOB_CHARS = set("*?[")


def glob(pattern: str) -> list[str]:
    """URIs matching ``pattern`` (sorted). ``*``, ``?`` and ``[...]`` match within one path
    component, as in Hadoop; a pattern without them gives ``[pattern]`` if it exists, else ``[]``."""
    store, loc = backends.resolve(pattern)
    parts = loc.path.split("/")
    first = next((i for i, p in enumerate(parts) if _GLOB_CHARS & set(p)), None)
    if first is None:
        return [loc.uri] if store.exists(loc) else []
    if store.caps.bucket_namespace and first == 0:
        raise ValueError(f"glob in the bucket name is not supported: {pattern!r}")
    base = dataclasses.replace(loc, path="/".join(parts[:first]) or "/")
    if store.caps.real_directories:
        paths = _glob_by_level(store, base, parts[first:])
    else:
        paths = _glob_by_prefix(store, base, parts[first:])
    return sorted(loc.with_path(p) for p in paths)


def _glob_by_prefix(store: Store, base: Location, rest: list[str]) -> list[str]:
    """One recursive listing of the prefix (paginated by the client) beats a request per level
    where directories are only key prefixes."""
    try:
        entries = store.listdir(base, True)
    except FileNotFoundError:
        return []
    prefix = base.path.rstrip("/") + "/"
    matches = []
    for e in entries:
        relparts = e.path[len(prefix):].split("/")
        if len(relparts) == len(rest) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(relparts, rest)):
            matches.append(e.path)
    return matches


def _glob_by_level(store: Store, base: Location, rest: list[str]) -> list[str]:
    """Walk down one directory level per pattern component."""
    level = [base.path]
    for i, comp in enumerate(rest):
        nxt = []
        for d in level:
            if not _GLOB_CHARS & set(comp):
                cand = posixpath.join(d, comp)
                if store.exists(dataclasses.replace(base, path=cand)):
                    nxt.append(cand)
                continue
            try:
                entries = store.listdir(dataclasses.replace(base, path=d), False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            last = i == len(rest) - 1
            for e in entries:
                if fnmatch.fnmatchcase(posixpath.basename(e.path), comp) and (last or e.type == pafs.FileType.Directory):
                    nxt.append(e.path)
        level = nxt
    return level


# ----------------------------------------------------------------------------------------- changes
def mkdirs(uri: str) -> None:
    """Create a directory and its parents (no-op if it exists). On S3 only checks that the bucket
    exists: S3 has no directories, and marker objects would confuse other readers."""
    store, loc = backends.resolve(uri)
    if not store.caps.real_directories:
        root = loc.root()
        if not store.exists(root):
            raise not_found(root.uri)
        return
    fi = store.stat(loc)
    if fi.type == pafs.FileType.File:
        raise FileExistsError(f"{loc.uri} exists and is a file")
    if fi.type == pafs.FileType.NotFound:
        store.fs.create_dir(loc.path, recursive=True)


def delete(uri: str, recursive: bool = False, missing_ok: bool = False) -> None:
    """Delete a file, an empty directory, or (``recursive=True``) a whole tree."""
    store, loc = backends.resolve(uri)
    fi = store.stat(loc)
    if fi.type == pafs.FileType.NotFound:
        if missing_ok:
            return
        raise not_found(loc.uri)
    if fi.type == pafs.FileType.File:
        store.delete_file(loc)
        return
    if loc.is_root:
        raise PermissionError(f"refusing to delete the root {loc.uri}")
    if not recursive and store.listdir(loc, False):
        raise OSError(f"directory {loc.uri} is not empty (pass recursive=True)")
    store.delete_tree(loc)


def rename(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` on the same file system; ``dst`` must not exist. Atomic on HDFS and
    local disks; on S3 it is copy-then-delete."""
    store, sloc = backends.resolve(src)
    dstore, dloc = backends.resolve(dst)
    if store.client_key(sloc) != dstore.client_key(dloc):
        raise ValueError(f"rename across file systems: {src} -> {dst} (use copy + delete)")
    _existing(store, sloc)
    if store.exists(dloc):
        raise FileExistsError(f"rename target {dloc.uri} already exists")
    if not store.caps.atomic_rename:
        copy(src, dst, follow_published=False)  # a rename moves the whole layout, every version
        delete(src, recursive=True)
        return
    store.ensure_dir(dloc.parent())
    store.fs.move(sloc.path, dloc.path)


def _copy_one(sstore: Store, spath: str, dstore: Store, dloc: Location) -> None:
    if not dstore.caps.writes_create_parents:
        dstore.ensure_dir(dloc.parent())
    if sstore is dstore and dstore.caps.server_side_copy:
        sstore.fs.copy_file(spath, dloc.path)  # server-side CopyObject on S3
        return
    # compression=None: pyarrow would otherwise (de)compress by file extension (.gz, .bz2, ...)
    with sstore.fs.open_input_stream(spath, compression=None) as fin, \
            dstore.fs.open_output_stream(dloc.path, compression=None) as fout:
        while True:
            chunk = fin.read(8 << 20)
            if not chunk:
                break
            fout.write(chunk)


def copy(src: str, dst: str, threads: int = COPY_THREADS, follow_published: bool = True) -> list[str]:
    """Copy a file to ``dst``, or a directory tree into ``dst`` (created as needed), between any two
    schemes. Files of the same name are overwritten. Returns the URIs written. A published source
    directory (see :mod:`hdfs_io.publishing`) gives its current version (``follow_published=False``:
    the raw layout, every version)."""
    if follow_published:
        from .publishing import POINTER, resolve

        try:
            pointed = exists(join(src, POINTER))
        except (NotADirectoryError, FileNotFoundError):
            pointed = False
        if pointed:
            src = resolve(src)
    sstore, sloc = backends.resolve(src)
    dstore, dloc = backends.resolve(dst)
    entries = _walk(sstore, sloc, dirs=True)
    src_is_file = len(entries) == 1 and entries[0][1].path.rstrip("/") == sloc.path.rstrip("/")
    jobs, subdirs = [], []
    for rel, fi in entries:
        target = dloc if src_is_file else dataclasses.replace(dloc, path=_child_path(dloc, rel))
        if fi.type == pafs.FileType.Directory:
            subdirs.append(target)
        else:
            jobs.append((fi.path, target, int(fi.size or 0)))
    if not src_is_file and dstore.caps.real_directories:
        # directories, empty ones included (a SavedModel's assets/); stores without any have none to create
        for d in [dloc] + subdirs:
            if d is dloc or not any(j[1].path.startswith(d.path + "/") for j in jobs):
                dstore.ensure_dir(d)
    if len(jobs) <= 1 or threads <= 1:
        for spath, target, nbytes in jobs:
            _copy_guarded(sstore, spath, dstore, target, nbytes)
    else:
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(jobs))) as pool:
            for f in [pool.submit(_copy_guarded, sstore, s, dstore, t, n) for s, t, n in jobs]:
                f.result()
    return [t.uri for _, t, _ in jobs]


def _copy_guarded(sstore: Store, spath: str, dstore: Store, target: Location, nbytes: int = 0) -> None:
    # bounded (and its errors translated) by whichever side's client does not bound its own calls;
    # HDFS calls are timed one by one and local ones can't hang
    timed = [s for s in (dstore, sstore) if s.caps.caller_timed]
    if not timed:
        _copy_one(sstore, spath, dstore, target)
        return
    timed[0].transfer(target.uri, "copy to", nbytes, _copy_one, sstore, spath, dstore, target)


def _child_path(loc: Location, rel: str) -> str:
    return loc.path.rstrip("/") + "/" + rel.lstrip("/")


def upload(local_dir: str, uri: str) -> list[str]:
    """Copy a local directory (checkpoint, SavedModel, TensorBoard logs) into ``uri``."""
    if "://" in str(local_dir) and not str(local_dir).startswith("file:"):
        raise ValueError(f"upload source must be local, got {local_dir!r}")
    if not os.path.exists(parse(local_dir).path):
        raise not_found(str(local_dir))
    return copy(str(local_dir), uri)


def download(uri: str, local_dir: str) -> list[str]:
    """Copy the directory (or file) at ``uri`` into the local directory ``local_dir``."""
    if "://" in str(local_dir) and not str(local_dir).startswith("file:"):
        raise ValueError(f"download target must be local, got {local_dir!r}")
    return copy(uri, str(local_dir))


# -------------------------------------------------------------------------------------------- open
class AtomicWriter(io.RawIOBase):
    """A binary writer that publishes its file only when ``close()`` succeeds (see module doc).

    Stores with ``atomic_rename`` write a hidden sibling and rename it onto the URI; the others spool
    the bytes locally and upload them in one go on close."""

    def __init__(self, uri: str):
        super().__init__()
        self._store, self._loc = backends.resolve(uri)
        self.name = self._loc.uri
        self._aborted = False
        self._staged = self._store.caps.atomic_rename
        if self._staged:
            self._tmp = temp_sibling(self._loc)
            self._sink: IO[bytes] = self._store.open_temp_writer(self._loc, self._tmp)
        else:
            self._sink = tempfile.SpooledTemporaryFile(max_size=S3_SPOOL_BYTES)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError(f"write to closed file {self.name}")
        self._sink.write(data)
        return memoryview(data).nbytes

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise
        finally:
            super().close()

    def _commit(self) -> None:
        if self._staged:
            self._sink.close()
            self._store.replace(self._tmp, self._loc)
            return
        nbytes = self._sink.seek(0, os.SEEK_END)
        self._sink.seek(0)
        self._store.transfer(self._loc.uri, "upload to", nbytes, self._upload)
        self._sink.close()

    def _upload(self) -> None:
        with self._store.fs.open_output_stream(self._loc.path, compression=None) as out:
            while True:
                chunk = self._sink.read(8 << 20)
                if not chunk:
                    break
                out.write(chunk)

    def _discard(self) -> None:
        try:
            self._sink.close()
        except Exception:  # noqa: BLE001 - best effort
            pass
        if self._staged:
            self._store.remove_quietly(self._tmp)

    def abort(self) -> None:
        """Discard everything written; nothing appears at the URI."""
        if not self.closed:
            self._aborted = True
            self._discard()
            super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        # An unclosed writer is abandoned, not committed (io.IOBase would close = commit).
        try:
            if not self.closed:
                self.abort()
        except Exception:  # noqa: BLE001
            pass


class _AbortableBuffered(io.BufferedWriter):
    """BufferedWriter over an AtomicWriter: an exception in the ``with`` block, or being dropped
    unclosed, discards the file instead of committing it."""

    def _raw(self) -> AtomicWriter:
        return self.raw

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._raw().abort()
        else:
            self.close()

    def __del__(self):
        try:
            if not self._raw().closed:
                self._raw().abort()
        except Exception:  # noqa: BLE001
            pass


class _AtomicText(io.TextIOWrapper):
    def _raw(self) -> AtomicWriter:
        return self.buffer.raw

    __exit__ = _AbortableBuffered.__exit__
    __del__ = _AbortableBuffered.__del__


def open(uri: str, mode: str = "rb", encoding: str = "utf-8") -> IO[Any]:  # noqa: A001 - mirrors builtins.open
    """Open a file for reading (``rb``, ``r``), atomic writing (``wb``, ``w``) or appending (``ab``,
    local and HDFS only). Returns an ordinary Python file object."""
    if mode not in ("rb", "r", "wb", "w", "ab"):
        raise ValueError(f"unsupported mode {mode!r}")
    store, loc = backends.resolve(uri)
    if mode in ("wb", "w"):
        raw = AtomicWriter(uri)
        buffered = _AbortableBuffered(raw, buffer_size=READ_BUFFER)
        return buffered if mode == "wb" else _AtomicText(buffered, encoding=encoding)
    if mode == "ab":
        if not store.caps.appendable:
            raise ValueError(f"{store.label} objects cannot be appended to: {uri}")
        return store.open_append(loc)
    try:
        f = store.open_read(loc)
    except FileNotFoundError:
        inside = _follow_published(uri)
        if inside is None:
            raise
        return open(inside, mode, encoding)
    return f if mode == "rb" else io.TextIOWrapper(f, encoding=encoding)
