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

import builtins
import concurrent.futures
import dataclasses
import fnmatch
import io
import os
import posixpath
import tempfile
import uuid
from typing import IO

import pyarrow.fs as pafs

from . import _timeout, backends, hdfs
from .errors import not_found
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
S3_SPOOL_BYTES = 16 << 20
READ_BUFFER = 1 << 20
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
    fs, loc = backends.resolve(uri)
    return fs, loc.path


def temp_sibling(loc: Location) -> Location:
    """A hidden, unique sibling of ``loc`` (readers skip names starting with ``.``)."""
    return loc.parent().child(f".{loc.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


# --------------------------------------------------------------------------------------------- info
def _file_info(fs: pafs.FileSystem, loc: Location) -> pafs.FileInfo:
    return backends.meta(loc, "stat", lambda: fs.get_file_info(loc.path))


def _to_info(loc: Location, fi: pafs.FileInfo) -> FileInfo:
    is_dir = fi.type == pafs.FileType.Directory
    return FileInfo(loc.with_path(fi.path), 0 if is_dir else int(fi.size or 0), is_dir)


def info(uri: str) -> FileInfo:
    """Size and type of one file or directory; ``FileNotFoundError`` if it does not exist."""
    fs, loc = backends.resolve(uri)
    fi = _file_info(fs, loc)
    if fi.type == pafs.FileType.NotFound:
        raise not_found(loc.uri)
    return _to_info(loc, fi)


def exists(uri: str) -> bool:
    fs, loc = backends.resolve(uri)
    return _file_info(fs, loc).type != pafs.FileType.NotFound


def _list(fs: pafs.FileSystem, loc: Location, recursive: bool) -> list[pafs.FileInfo]:
    sel = pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=False)
    try:
        return backends.meta(loc, "list", lambda: fs.get_file_info(sel))
    except FileNotFoundError:
        raise not_found(loc.uri) from None


def ls(uri: str, recursive: bool = False) -> list[FileInfo]:
    """Entries of a directory (sorted by URI), or ``[info(uri)]`` for a file."""
    fs, loc = backends.resolve(uri)
    fi = _file_info(fs, loc)
    if fi.type == pafs.FileType.NotFound:
        raise not_found(loc.uri)
    if fi.type == pafs.FileType.File:
        return [_to_info(loc, fi)]
    entries = [_to_info(loc, e) for e in _list(fs, loc, recursive)]
    return sorted(entries, key=lambda e: e.uri)


def walk_files(uri: str) -> list[tuple[str, FileInfo]]:
    """All files under a directory as ``(relative path, FileInfo)``, sorted; a file gives itself."""
    fs, loc = backends.resolve(uri)
    return [(rel, _to_info(loc, fi)) for rel, fi in _walk(fs, loc)]


def _walk(fs: pafs.FileSystem, loc: Location, dirs: bool = False) -> list[tuple[str, pafs.FileInfo]]:
    fi = _file_info(fs, loc)
    if fi.type == pafs.FileType.NotFound:
        raise not_found(loc.uri)
    if fi.type == pafs.FileType.File:
        return [(loc.name, fi)]
    base = loc.path.rstrip("/") + "/"
    out = []
    for e in _list(fs, loc, True):
        if e.type == pafs.FileType.File or (dirs and e.type == pafs.FileType.Directory):
            rel = e.path[len(base):] if e.path.startswith(base) else posixpath.basename(e.path)
            out.append((rel, e))
    return sorted(out, key=lambda t: t[0])


def size(uri: str) -> int:
    """Bytes in a file, or in all files under a directory."""
    fs, loc = backends.resolve(uri)
    return sum(int(fi.size or 0) for _, fi in _walk(fs, loc))


_GLOB_CHARS = set("*?[")


def glob(pattern: str) -> list[str]:
    """URIs matching ``pattern`` (sorted). ``*``, ``?`` and ``[...]`` match within one path
    component, as in Hadoop; a pattern without them gives ``[pattern]`` if it exists, else ``[]``."""
    fs, loc = backends.resolve(pattern)
    parts = loc.path.split("/")
    first = next((i for i, p in enumerate(parts) if _GLOB_CHARS & set(p)), None)
    if first is None:
        return [loc.uri] if exists(pattern) else []
    if loc.scheme == "s3" and first == 0:
        raise ValueError(f"glob in the bucket name is not supported: {pattern!r}")
    base = "/".join(parts[:first]) or "/"
    rest = parts[first:]
    base_loc = dataclasses.replace(loc, path=base)
    matches: list[str] = []
    if loc.scheme == "s3":
        # one recursive listing (paginated by the SDK) beats one request per level on S3
        try:
            entries = _list(fs, base_loc, True)
        except FileNotFoundError:
            return []
        prefix = base.rstrip("/") + "/"
        for e in entries:
            relparts = e.path[len(prefix):].split("/")
            if len(relparts) == len(rest) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(relparts, rest)):
                matches.append(loc.with_path(e.path))
        return sorted(matches)
    level = [base]
    for i, comp in enumerate(rest):
        nxt = []
        for d in level:
            dloc = dataclasses.replace(loc, path=d)
            if not _GLOB_CHARS & set(comp):
                cand = posixpath.join(d, comp)
                if _file_info(fs, dataclasses.replace(loc, path=cand)).type != pafs.FileType.NotFound:
                    nxt.append(cand)
                continue
            try:
                entries = _list(fs, dloc, False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            last = i == len(rest) - 1
            for e in entries:
                if fnmatch.fnmatchcase(posixpath.basename(e.path), comp) and (last or e.type == pafs.FileType.Directory):
                    nxt.append(e.path)
        level = nxt
    return sorted(loc.with_path(p) for p in level)


# ----------------------------------------------------------------------------------------- changes
def mkdirs(uri: str) -> None:
    """Create a directory and its parents (no-op if it exists). On S3 only checks that the bucket
    exists: S3 has no directories, and marker objects would confuse other readers."""
    fs, loc = backends.resolve(uri)
    if loc.scheme == "s3":
        bucket = dataclasses.replace(loc, path=loc.bucket)
        if _file_info(fs, bucket).type == pafs.FileType.NotFound:
            raise not_found(f"{loc.written_scheme}://{loc.bucket}")
        return
    fi = _file_info(fs, loc)
    if fi.type == pafs.FileType.File:
        raise FileExistsError(f"{loc.uri} exists and is a file")
    if fi.type == pafs.FileType.NotFound:
        fs.create_dir(loc.path, recursive=True)


def delete(uri: str, recursive: bool = False, missing_ok: bool = False) -> None:
    """Delete a file, an empty directory, or (``recursive=True``) a whole tree."""
    fs, loc = backends.resolve(uri)
    fi = _file_info(fs, loc)
    if fi.type == pafs.FileType.NotFound:
        if missing_ok:
            return
        raise not_found(loc.uri)
    if fi.type == pafs.FileType.File:
        if loc.scheme == "s3":
            backends.s3_delete(loc, [loc.key])
        else:
            fs.delete_file(loc.path)
        return
    if loc.is_root:
        raise PermissionError(f"refusing to delete the root {loc.uri}")
    if not recursive and _list(fs, loc, False):
        raise OSError(f"directory {loc.uri} is not empty (pass recursive=True)")
    if loc.scheme == "s3":
        backends.s3_delete(loc)
    else:
        fs.delete_dir(loc.path)


def rename(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` on the same file system; ``dst`` must not exist. Atomic on HDFS and
    local disks; on S3 it is copy-then-delete."""
    sfs, sloc = backends.resolve(src)
    dfs, dloc = backends.resolve(dst)
    if (sloc.scheme, sloc.authority if sloc.scheme != "s3" else "") != (
        dloc.scheme, dloc.authority if dloc.scheme != "s3" else ""
    ):
        raise ValueError(f"rename across file systems: {src} -> {dst} (use copy + delete)")
    if _file_info(sfs, sloc).type == pafs.FileType.NotFound:
        raise not_found(sloc.uri)
    if _file_info(dfs, dloc).type != pafs.FileType.NotFound:
        raise FileExistsError(f"rename target {dloc.uri} already exists")
    if sloc.scheme == "s3":
        copy(src, dst)
        delete(src, recursive=True)
        return
    if sloc.scheme == "file":
        os.makedirs(posixpath.dirname(dloc.path), exist_ok=True)
    else:
        parent = dloc.parent()
        if _file_info(dfs, parent).type == pafs.FileType.NotFound:
            dfs.create_dir(parent.path, recursive=True)
    sfs.move(sloc.path, dloc.path)


def _copy_one(sfs, spath: str, dfs, dloc: Location) -> None:
    if dloc.scheme == "file":
        os.makedirs(posixpath.dirname(dloc.path), exist_ok=True)
    if sfs is dfs and dloc.scheme in ("s3", "file"):
        sfs.copy_file(spath, dloc.path)  # server-side CopyObject on S3
        return
    # compression=None: pyarrow would otherwise (de)compress by file extension (.gz, .bz2, ...)
    with sfs.open_input_stream(spath, compression=None) as fin, \
            dfs.open_output_stream(dloc.path, compression=None) as fout:
        while True:
            chunk = fin.read(8 << 20)
            if not chunk:
                break
            fout.write(chunk)


def copy(src: str, dst: str, threads: int = COPY_THREADS) -> list[str]:
    """Copy a file to ``dst``, or a directory tree into ``dst`` (created as needed), between any two
    schemes. Files of the same name are overwritten. Returns the URIs written."""
    sfs, sloc = backends.resolve(src)
    dfs, dloc = backends.resolve(dst)
    entries = _walk(sfs, sloc, dirs=True)
    src_is_file = len(entries) == 1 and entries[0][1].path.rstrip("/") == sloc.path.rstrip("/")
    jobs, subdirs = [], []
    for rel, fi in entries:
        target = dloc if src_is_file else dataclasses.replace(dloc, path=_child_path(dloc, rel))
        if fi.type == pafs.FileType.Directory:
            subdirs.append(target)
        else:
            jobs.append((fi.path, target, int(fi.size or 0)))
    if not src_is_file and dloc.scheme != "s3":
        # directories, empty ones included (a SavedModel's assets/); S3 has none to create
        for d in [dloc] + subdirs:
            if dloc.scheme == "file":
                os.makedirs(d.path, exist_ok=True)
            elif d is dloc or not any(j[1].path.startswith(d.path + "/") for j in jobs):
                if _file_info(dfs, d).type == pafs.FileType.NotFound:
                    dfs.create_dir(d.path, recursive=True)
    if len(jobs) <= 1 or threads <= 1:
        for spath, target, nbytes in jobs:
            _copy_guarded(sfs, sloc, spath, dfs, target, nbytes)
    else:
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(jobs))) as pool:
            for f in [pool.submit(_copy_guarded, sfs, sloc, s, dfs, t, n) for s, t, n in jobs]:
                f.result()
    return [t.uri for _, t, _ in jobs]


def _copy_guarded(sfs, sloc: Location, spath: str, dfs, target: Location, nbytes: int = 0) -> None:
    if sloc.scheme != "s3" and target.scheme != "s3":
        _copy_one(sfs, spath, dfs, target)  # HDFS calls are timed one by one; local ones can't hang
        return
    try:
        _timeout.call(target.uri, "copy to", _copy_one, sfs, spath, dfs, target,
                      timeout=_timeout.transfer_budget(nbytes))
    except OSError as exc:
        raise backends.translate_s3_error(target.uri, exc) from None


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
class _NativeRaw(io.RawIOBase):
    """A pyarrow NativeFile as a Python raw stream (for io.BufferedReader)."""

    def __init__(self, nf, uri: str):
        super().__init__()
        self._nf = nf
        self.name = uri

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        want = min(len(view), 8 << 20)  # each timed call moves at most 8 MiB
        try:
            data = _timeout.call(self.name, "read", self._nf.read, want)
        except OSError as exc:
            raise backends.translate_s3_error(self.name, exc) from None
        n = len(data)
        view[:n] = data
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._nf.seek(offset, whence)

    def tell(self) -> int:
        return self._nf.tell()

    def close(self) -> None:
        if not self.closed:
            self._nf.close()
        super().close()


class AtomicWriter(io.RawIOBase):
    """A binary writer that publishes its file only when ``close()`` succeeds (see module doc)."""

    def __init__(self, uri: str):
        super().__init__()
        self._fs, self._loc = backends.resolve(uri)
        self.name = self._loc.uri
        self._aborted = False
        loc = self._loc
        if loc.scheme == "s3":
            self._sink: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=S3_SPOOL_BYTES)
        elif loc.scheme == "file":
            if os.path.isdir(loc.path):
                raise IsADirectoryError(f"{loc.uri} is a directory")
            parent = posixpath.dirname(loc.path)
            os.makedirs(parent, exist_ok=True)
            self._tmp = temp_sibling(loc)
            self._sink = builtins.open(self._tmp.path, "wb")
        else:
            self._tmp = temp_sibling(loc)
            self._handler: hdfs.HdfsHandler = self._fs.handler
            self._sink = self._handler.create_writer(self._tmp.path)

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
        loc = self._loc
        if loc.scheme == "s3":
            nbytes = self._sink.seek(0, os.SEEK_END)
            self._sink.seek(0)
            try:
                _timeout.call(loc.uri, "upload to", self._upload, timeout=_timeout.transfer_budget(nbytes))
            except OSError as exc:
                raise backends.translate_s3_error(loc.uri, exc) from None
            self._sink.close()
        elif loc.scheme == "file":
            self._sink.close()
            os.replace(self._tmp.path, loc.path)
        else:
            self._sink.close()
            self._handler.rename_over(self._tmp.path, loc.path)

    def _upload(self) -> None:
        with self._fs.open_output_stream(self._loc.path, compression=None) as out:
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
        if self._loc.scheme == "file":
            try:
                os.unlink(self._tmp.path)
            except OSError:
                pass
        elif self._loc.scheme != "s3":
            try:
                self._handler.delete_quietly(self._tmp.path)
            except Exception:  # noqa: BLE001 - best effort; a hidden temp file may remain
                pass

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


def open(uri: str, mode: str = "rb", encoding: str = "utf-8"):  # noqa: A001 - mirrors builtins.open
    """Open a file for reading (``rb``, ``r``), atomic writing (``wb``, ``w``) or appending (``ab``,
    local and HDFS only). Returns an ordinary Python file object."""
    if mode not in ("rb", "r", "wb", "w", "ab"):
        raise ValueError(f"unsupported mode {mode!r}")
    fs, loc = backends.resolve(uri)
    if mode in ("wb", "w"):
        raw = AtomicWriter(uri)
        buffered = _AbortableBuffered(raw, buffer_size=READ_BUFFER)
        return buffered if mode == "wb" else _AtomicText(buffered, encoding=encoding)
    if mode == "ab":
        if loc.scheme == "s3":
            raise ValueError(f"S3 objects cannot be appended to: {uri}")
        if loc.scheme == "file":
            return builtins.open(loc.path, "ab")
        return io.BufferedWriter(fs.handler.create_writer(loc.path, append=True), buffer_size=READ_BUFFER)
    if loc.scheme == "file":
        try:
            f = builtins.open(loc.path, "rb")
        except FileNotFoundError:
            raise not_found(loc.uri) from None
    elif loc.scheme == "s3":
        fi = _file_info(fs, loc)
        if fi.type == pafs.FileType.NotFound:
            raise not_found(loc.uri)
        if fi.type == pafs.FileType.Directory:
            raise IsADirectoryError(f"{loc.uri} is a directory")
        nf = backends.meta(loc, "open", fs.open_input_file, loc.path)
        f = io.BufferedReader(_NativeRaw(nf, loc.uri), buffer_size=READ_BUFFER)
    else:
        f = io.BufferedReader(fs.handler.open_reader(loc.path), buffer_size=READ_BUFFER)
    return f if mode == "rb" else io.TextIOWrapper(f, encoding=encoding)
