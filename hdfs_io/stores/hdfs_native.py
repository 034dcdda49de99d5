"""HDFS and viewfs through hdfs-native, exposed as a ``pyarrow.fs`` file system.

hdfs-native (Rust, no JVM, no libhdfs) speaks the NameNode and DataNode protocols itself and reads
``core-site.xml`` / ``hdfs-site.xml`` (HA name services, viewfs mount tables) from
``$HADOOP_CONF_DIR``. pyarrow's own ``HadoopFileSystem`` would need libjvm, ``libhdfs.so`` (in no
package we can install) and the Hadoop CLASSPATH, so it is not an option here.

Wrapping the client in a :class:`pyarrow.fs.FileSystemHandler` lets the rest of the package (and
callers who want ``pyarrow.dataset``) treat HDFS exactly like the local and S3 file systems. The
store for ``hdfs://`` / ``viewfs://`` URIs is :class:`hdfs_io.stores.hdfs.HdfsStore`.

hdfs-native never gives up on a dead NameNode, so:

* before the first call to a NameNode (``hdfs://``; viewfs mount tables are not probed) we open a
  TCP connection to its RPC address(es) (bounded by the timeout): a refused or unroutable address
  fails at once with :class:`StorageUnavailableError`;
* every call, including each read/write on a file, runs through :func:`hdfs_io._timeout.call` and
  raises :class:`StorageTimeoutError` after ``HDFS_IO_TIMEOUT_S``; the client is then dropped so the
  next call probes again.
"""
from __future__ import annotations

import io
import os
import socket
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .. import _timeout, config
from ..errors import StorageError, StorageTimeoutError, StorageUnavailableError, not_found

WRITE_BUFFER = 4 << 20  # bytes gathered in Python before one (timed) call into hdfs-native


def _probe(url: str, addresses: list[tuple[str, int]], limit: float) -> None:
    """Raise StorageUnavailableError unless one of ``addresses`` accepts a TCP connection."""
    deadline = time.monotonic() + limit
    errors = []
    for host, port in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=left):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    if not errors:
        raise StorageTimeoutError(url, limit, "connect to NameNode for")
    raise StorageUnavailableError(url, "NameNode not reachable (" + "; ".join(errors) + ")")


def _translate(uri: str, op: str, exc: Exception) -> Exception:
    """hdfs-native raises RuntimeError("RPCError(<java exception>, <message>)") for server errors."""
    msg = str(exc)
    short = msg.split("\\n\\tat ")[0].split("\n\tat ")[0][:500]
    if "AccessControlException" in msg:
        return PermissionError(f"HDFS refused {op} on {uri}: {short}")
    if "FileAlreadyExistsException" in msg:
        return FileExistsError(f"{uri} already exists: {short}")
    if "FileNotFoundException" in msg:
        return not_found(uri)
    if "SafeModeException" in msg:
        return StorageUnavailableError(uri, f"NameNode is in safe mode: {short}")
    return OSError(f"HDFS {op} {uri} failed: {short}")


# hdfs-native keeps finished DataNode read connections in a process-wide cache. A child forked after
# the parent read HDFS data inherits that cache, and its reads then hang on the parent's sockets
# (measured with hdfs-native 0.14). Metadata calls and writes are unaffected. So a forked child of a
# process that read HDFS data refuses HDFS reads at once instead of hanging until the timeout.
_state = {"read_in_this_process": False, "reads_broken_by_fork": False}


def _after_fork_in_child() -> None:
    _state["reads_broken_by_fork"] = _state["reads_broken_by_fork"] or _state["read_in_this_process"]


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_reads_allowed(uri: str) -> None:
    if _state["reads_broken_by_fork"]:
        raise StorageError(
            f"cannot read {uri}: this process was forked from one that had already read HDFS data, and "
            "hdfs-native's DataNode connection cache does not survive fork(). Read HDFS only in the "
            "child, or start children with the 'spawn'/'forkserver' multiprocessing method."
        )
    _state["read_in_this_process"] = True


def _timed(uri: str, op: str, fn, *args):
    try:
        return _timeout.call(uri, op, fn, *args)
    except RuntimeError as exc:
        raise _translate(uri, op, exc) from None


class _TimedReader(io.RawIOBase):
    """A seekable reader over an hdfs-native FileReader; each read is bounded by the timeout."""

    def __init__(self, inner: Any, uri: str):
        super().__init__()
        self._inner = inner
        self._uri = uri
        self._size = inner.file_length()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._inner.tell()
        elif whence == io.SEEK_END:
            offset += self._size
        self._inner.seek(max(0, min(offset, self._size)))
        return self._inner.tell()

    def read_all(self, chunk: int = 16 << 20) -> bytes:
        """The whole file, in positional reads of ``chunk`` bytes (each bounded by the timeout).
        One sequential pass: the fastest way to fetch a file that will be decoded entirely."""
        if self._size <= chunk:
            return _timed(self._uri, "read", self._inner.read_range, 0, self._size)
        buf = bytearray(self._size)
        view = memoryview(buf)
        for off in range(0, self._size, chunk):
            n = min(chunk, self._size - off)
            view[off:off + n] = _timed(self._uri, "read", self._inner.read_range, off, n)
        return buf

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._inner.tell()
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        return _timed(self._uri, "read", self._inner.read, size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buf) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _TimedWriter(io.RawIOBase):
    """Buffers writes and hands them to an hdfs-native FileWriter in timed calls of ~4 MiB."""

    def __init__(self, inner: Any, uri: str):
        super().__init__()
        self._inner = inner
        self._uri = uri
        self._buf = bytearray()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        self._buf += data
        self._pos += n
        if len(self._buf) >= WRITE_BUFFER:
            self._flush_buf()
        return n

    def _flush_buf(self) -> None:
        if self._buf:
            chunk = bytes(self._buf)
            self._buf.clear()
            _timed(self._uri, "write", self._inner.write, chunk)

    def flush(self) -> None:
        # hdfs-native streams packets on its own; a Python-level flush only empties our buffer.
        if not self.closed:
            self._flush_buf()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._flush_buf()
            _timed(self._uri, "close", self._inner.close)
        finally:
            super().close()


class HdfsHandler(pafs.FileSystemHandler):
    """pyarrow FileSystemHandler over an hdfs-native Client for one ``hdfs://`` or ``viewfs://``
    authority. Paths are absolute (``/user/x/file``)."""

    def __init__(self, scheme: str, authority: str, probe: bool = True):
        self.scheme = scheme
        self.authority = authority
        self.probe = probe  # probe the NameNode's RPC address(es) before the first call
        self.url = f"{scheme}://{authority}"
        self._client = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, HdfsHandler) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _get_client(self):
        with self._lock:
            if self._client is None:
                from hdfs_native import Client

                if self.probe:
                    _probe(self.url, config.namenode_addresses(self.authority), _timeout.timeout_s())
                conf_dir = config.hadoop_conf_dir()
                try:
                    self._client = Client(self.url, config_dir=conf_dir)
                except Exception as exc:  # noqa: BLE001 - hdfs-native reports config errors as RuntimeError
                    raise ValueError(
                        f"cannot set up an HDFS client for {self.url} (HADOOP_CONF_DIR={conf_dir!r}): {exc}"
                        + (" (viewfs needs fs.viewfs.mounttable.<name>.linkFallback)" if "fallback" in str(exc) else "")
                    ) from None
            return self._client

    def _client_for(self, uri: str):
        try:
            return self._get_client()
        except StorageUnavailableError as exc:
            raise StorageUnavailableError(uri, str(exc).split(": ", 1)[-1]) from None

    def _call(self, op: str, path: str, method: str, *args: Any, raw: bool = False) -> Any:
        """Call ``client.<method>(*args)`` bounded by the timeout. ``raw=True`` calls the Rust
        RawClient: its reader/writer objects have no Python wrapper whose ``__del__`` (io.IOBase)
        would close the file behind our back when the wrapper is dropped."""
        uri = self.url + path
        client = self._client_for(uri)
        target = client.inner if raw else client
        try:
            return _timeout.call(uri, op, getattr(target, method), *args)
        except StorageTimeoutError:
            with self._lock:
                self._client = None  # probe again next time
            raise
        except FileNotFoundError:
            raise not_found(uri) from None
        except FileExistsError as exc:
            raise FileExistsError(f"{uri} already exists ({exc})") from None
        except RuntimeError as exc:
            raise _translate(uri, op, exc) from None

    def _status(self, path: str):
        try:
            return self._call("stat", path, "get_file_info", path)
        except FileNotFoundError:
            return None

    @staticmethod
    def _info(path: str, st) -> pafs.FileInfo:
        if st is None:
            return pafs.FileInfo(path, pafs.FileType.NotFound)
        if st.isdir:
            return pafs.FileInfo(path, pafs.FileType.Directory, mtime_ns=st.modification_time * 1_000_000)
        return pafs.FileInfo(path, pafs.FileType.File, size=st.length, mtime_ns=st.modification_time * 1_000_000)

    # -- FileSystemHandler --------------------------------------------------------------------
    def get_type_name(self) -> str:
        return f"hdfs-native:{self.url}"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return [self._info(p, self._status(p)) for p in paths]

    def get_file_info_selector(self, selector):
        base = selector.base_dir.rstrip("/") or "/"
        uri = self.url + base
        client = self._client_for(uri)

        def listing():
            return list(client.list_status(base, selector.recursive))

        try:
            statuses = _timeout.call(uri, "list", listing)
        except FileNotFoundError:
            if selector.allow_not_found:
                return []
            raise not_found(uri) from None
        except StorageTimeoutError:
            with self._lock:
                self._client = None
            raise
        out = []
        for st in statuses:
            p = st.path if st.path.startswith("/") else f"{base.rstrip('/')}/{st.path}"
            out.append(self._info(p, st))
        return out

    def create_dir(self, path, recursive):
        self._call("mkdirs", path, "mkdirs", path, 0o755, bool(recursive))

    def delete_dir(self, path):
        self._call("delete", path, "delete", path, True)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        try:
            entries = self.get_file_info_selector(pafs.FileSelector(path, recursive=False))
        except FileNotFoundError:
            if missing_dir_ok:
                return
            raise
        for info in entries:
            self._call("delete", info.path, "delete", info.path, True)

    def delete_root_dir_contents(self):
        raise PermissionError(f"refusing to delete everything under {self.url}/")

    def delete_file(self, path):
        st = self._status(path)
        if st is None:
            raise not_found(self.url + path)
        if st.isdir:
            raise IsADirectoryError(f"{self.url}{path} is a directory")
        self._call("delete", path, "delete", path, False)

    def move(self, src, dest):
        self._call("rename", src, "rename", src, dest, False)

    def copy_file(self, src, dest):
        with self.open_input_stream(src) as fin, self.open_output_stream(dest, None) as fout:
            while True:
                chunk = fin.read(8 << 20)
                if not chunk:
                    break
                fout.write(chunk)

    # -- used directly by the store (no pyarrow layer in between) ---------------------------------
    def open_reader(self, path: str) -> _TimedReader:
        st = self._status(path)
        if st is None:
            raise not_found(self.url + path)
        if st.isdir:
            raise IsADirectoryError(f"{self.url}{path} is a directory")
        _check_reads_allowed(self.url + path)
        reader = self._call("open", path, "read", path, raw=True)
        return _TimedReader(reader, self.url + path)

    def create_writer(self, path: str, append: bool = False) -> _TimedWriter:
        if append:
            writer = self._call("append", path, "append", path, raw=True)
        else:
            from hdfs_native import WriteOptions

            opts = WriteOptions(overwrite=True, create_parent=True)
            writer = self._call("create", path, "create", path, opts, raw=True)
        return _TimedWriter(writer, self.url + path)

    def rename_over(self, src: str, dst: str) -> None:
        """Rename a file onto ``dst``, replacing an existing file (HDFS rename with OVERWRITE)."""
        self._call("rename", src, "rename", src, dst, True)

    def delete_quietly(self, path: str) -> None:
        try:
            self._call("delete", path, "delete", path, True)
        except FileNotFoundError:
            pass

    def open_input_stream(self, path):
        return self.open_input_file(path)

    def open_input_file(self, path):
        return pa.PythonFile(self.open_reader(path), mode="r")

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(self.create_writer(path), mode="w")

    def open_append_stream(self, path, metadata):
        return pa.PythonFile(self.create_writer(path, append=True), mode="w")


def filesystem(scheme: str, authority: str, probe: bool = True) -> pafs.PyFileSystem:
    return pafs.PyFileSystem(HdfsHandler(scheme, authority, probe))
