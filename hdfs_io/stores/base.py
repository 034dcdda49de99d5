"""What a store is: the client for one URI scheme, what it can do, and its primitive operations.

A store wraps one ``pyarrow.fs.FileSystem`` (``self.fs``) and declares its :class:`Capabilities`. The
generic code (:mod:`hdfs_io.fs`, :mod:`hdfs_io.publishing`, :mod:`hdfs_io.parquet`) asks those
capabilities what protocol to follow (rename or copy, create directories or not, time calls itself or
not) and calls the store's primitives where the schemes really differ (opening, deleting). It never
compares scheme names.

A store class also owns its URI layout (:meth:`Store.locate`): :func:`hdfs_io.uri.parse` hands it the
pieces of a URI and gets back the fields of a :class:`hdfs_io.uri.Location`.

Adding a scheme: a module with a :class:`Store` subclass, and one line in
:data:`hdfs_io.stores.REGISTRY`.
"""
from __future__ import annotations

import dataclasses
import posixpath
from typing import IO, TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

import pyarrow.fs as pafs

from .. import _timeout
from ..errors import not_found

if TYPE_CHECKING:
    from ..uri import Location

T = TypeVar("T")

READ_BUFFER = 1 << 20  # buffer of the Python file objects handed out by hdfs_io.open


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a store can do; the generic code picks its protocol from these."""

    atomic_rename: bool
    """Rename is one atomic server-side step. Files are written to a hidden sibling and renamed, and
    outputs published by renaming a directory. Without it rename is copy-then-delete, single files are
    spooled locally and uploaded on close, and outputs are published by copying with ``_SUCCESS``
    last (so readers must check ``_SUCCESS``)."""

    real_directories: bool
    """Directories exist on their own: ``mkdirs`` creates them and copies recreate empty ones.
    Without it a directory is only a key prefix (``mkdirs`` just checks the namespace root), and a
    recursive listing of a prefix is one paginated request (``glob`` lists once, not per level)."""

    bucket_namespace: bool
    """The first path component is a bucket: paths are ``bucket/key``, the bucket is the root, and
    patterns in it cannot be listed."""

    ranged_reads: bool
    """Random-access reads are cheap native calls. Without it a Parquet file that will be decoded
    whole is fetched in one sequential pass instead of being seeked through."""

    server_side_copy: bool
    """``fs.copy_file`` within the store copies natively (S3 CopyObject, a local copy) instead of
    streaming the bytes through Python."""

    appendable: bool
    """Files can be opened for appending (``open(uri, "ab")``)."""

    caller_timed: bool
    """The client does not bound its own calls, so the generic code runs metadata calls and
    transfers through :func:`hdfs_io._timeout.call` and translates the client's errors. (HDFS calls
    are timed inside the hdfs-native wrapper; local calls cannot hang on a network.)"""

    writes_create_parents: bool
    """Writing a file creates its missing parent directories (or there are none to create)."""


class Store:
    """One client for one scheme (or, with ``client_per_authority``, one NameNode / mount table)."""

    caps: ClassVar[Capabilities]
    label: ClassVar[str]  # for messages: "S3", "HDFS", "local"
    name: ClassVar[str]  # the backend scheme a Location carries
    client_per_authority: ClassVar[bool] = False  # one client per authority (else one per scheme)

    def __init__(self, scheme: str, authority: str):
        self.scheme = scheme
        self.authority = authority
        self.fs: pafs.FileSystem = self._make_fs()

    def _make_fs(self) -> pafs.FileSystem:
        raise NotImplementedError

    # -- URI layout ---------------------------------------------------------------------------------
    @classmethod
    def locate(cls, written: str, netloc: str, raw_path: str, uri: str) -> tuple[str, str, str, str]:
        """``(scheme, written_scheme, authority, path)`` of a URI whose scheme (as written), host
        part and raw path are given; ``ValueError`` for a malformed one."""
        raise NotImplementedError

    @classmethod
    def client_key(cls, loc: Location) -> tuple[str, str]:
        """Locations with the same key share one store object (and one client)."""
        return loc.scheme, loc.authority if cls.client_per_authority else ""

    # -- bounded calls ------------------------------------------------------------------------------
    def translate_error(self, uri: str, exc: OSError) -> OSError:
        """The client's error as a specific exception naming ``uri`` (or ``exc`` itself)."""
        return exc

    def meta(self, loc: Location, op: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a metadata call, bounded by the timeout when the client does not bound it itself."""
        if not self.caps.caller_timed:
            return fn(*args)
        try:
            return _timeout.call(loc.uri, op, fn, *args)
        except OSError as exc:
            raise self.translate_error(loc.uri, exc) from None

    def transfer(self, uri: str, op: str, nbytes: int, fn: Callable[..., T], *args: Any) -> T:
        """Run a call that moves ``nbytes``, bounded by the transfer budget when the client does not
        bound it itself."""
        if not self.caps.caller_timed:
            return fn(*args)
        try:
            return _timeout.call(uri, op, fn, *args, timeout=_timeout.transfer_budget(nbytes))
        except OSError as exc:
            raise self.translate_error(uri, exc) from None

    # -- metadata -----------------------------------------------------------------------------------
    def stat(self, loc: Location) -> pafs.FileInfo:
        return self.meta(loc, "stat", lambda: self.fs.get_file_info(loc.path))

    def exists(self, loc: Location) -> bool:
        return self.stat(loc).type != pafs.FileType.NotFound

    def listdir(self, loc: Location, recursive: bool) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=False)
        try:
            return self.meta(loc, "list", lambda: self.fs.get_file_info(sel))
        except FileNotFoundError:
            raise not_found(loc.uri) from None

    # -- changes ------------------------------------------------------------------------------------
    def ensure_dir(self, loc: Location) -> None:
        """Create the directory ``loc`` and its parents unless it exists."""
        if not self.exists(loc):
            self.fs.create_dir(loc.path, recursive=True)

    def delete_file(self, loc: Location) -> None:
        self.fs.delete_file(loc.path)

    def delete_tree(self, loc: Location) -> None:
        """Delete the directory ``loc`` and everything under it."""
        self.fs.delete_dir(loc.path)

    def delete_paths(self, loc: Location, paths: list[str]) -> None:
        """Delete the files at the backend ``paths`` (on ``loc``'s file system)."""
        for path in paths:
            self.fs.delete_file(path)

    # -- file contents ------------------------------------------------------------------------------
    def open_read(self, loc: Location) -> IO[bytes]:
        """A buffered binary reader; ``FileNotFoundError`` naming the URI if it is missing."""
        raise NotImplementedError

    def open_append(self, loc: Location) -> IO[bytes]:
        raise ValueError(f"{self.label} objects cannot be appended to: {loc.uri}")

    def read_all(self, loc: Location) -> bytes:
        """The whole file in one sequential pass."""
        with self.fs.open_input_stream(loc.path, compression=None) as f:
            return f.read()

    def read_snapshot(self, loc: Location) -> bytes:
        """A small file's whole content as it was at one instant (one version of it, even while it is
        being replaced): for the publish pointer. ``FileNotFoundError`` naming the URI if missing."""
        with self.open_read(loc) as f:  # local and HDFS: the open handle keeps reading one file
            return f.read()

    def open_temp_writer(self, loc: Location, tmp: Location) -> IO[bytes]:
        """A raw writer to ``tmp``, the hidden sibling that :meth:`replace` will move onto ``loc``
        (stores with ``atomic_rename``)."""
        raise NotImplementedError

    def replace(self, tmp: Location, loc: Location) -> None:
        """Move the file ``tmp`` onto ``loc``, replacing a file there (stores with ``atomic_rename``)."""
        raise NotImplementedError

    def remove_quietly(self, tmp: Location) -> None:
        """Best-effort removal of an abandoned temporary file."""

    def rename_new(self, tmp: Location, loc: Location) -> None:
        """Move the file ``tmp`` onto ``loc`` in one step only if nothing is at ``loc``, else raise
        ``FileExistsError`` (stores with ``atomic_rename``)."""
        raise NotImplementedError

    def put_new(self, loc: Location, data: bytes) -> bool:
        """Write the object ``loc`` only if it does not exist, in one request: False if it did
        (stores without ``atomic_rename``)."""
        raise NotImplementedError(f"{self.label} cannot create an object only if it is absent")


def norm_path(path: str) -> str:
    """A normalised absolute POSIX path (``/`` for an empty one, no leading ``//``)."""
    if not path:
        return "/"
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm
