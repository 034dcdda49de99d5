"""``hdfs://`` and ``viewfs://``: hdfs-native (Rust) wrapped as a ``pyarrow.fs.PyFileSystem`` (see
:mod:`hdfs_io.stores.hdfs_native`). pyarrow's ``HadoopFileSystem`` needs libhdfs and a JVM, which we
cannot ship.

One client per NameNode / name service / mount table. ``hdfs:///path`` (no authority) takes its
NameNode from ``fs.defaultFS``. Reads and writes go straight to the wrapper's timed reader and writer
(no pyarrow layer in between); every call is bounded inside the wrapper, so the store is not
``caller_timed``. Its reads are Python-level calls, so it declares no cheap ``ranged_reads``.
"""
from __future__ import annotations

import io
import os
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from .. import config
from . import hdfs_native
from .base import READ_BUFFER, Capabilities, Store, norm_path

if TYPE_CHECKING:
    from ..uri import Location


class HdfsStore(Store):
    name = "hdfs"
    label = "HDFS"
    client_per_authority = True
    probe_namenode = True  # an hdfs:// authority is a NameNode (or HA name service) to probe
    caps = Capabilities(atomic_rename=True, real_directories=True, bucket_namespace=False, ranged_reads=False,
                        server_side_copy=False, appendable=True, caller_timed=False, writes_create_parents=True)

    def _make_fs(self) -> pafs.FileSystem:
        return hdfs_native.filesystem(self.scheme, self.authority, self.probe_namenode)

    @property
    def handler(self) -> hdfs_native.HdfsHandler:
        return self.fs.handler

    @classmethod
    def locate(cls, written: str, netloc: str, raw_path: str, uri: str) -> tuple[str, str, str, str]:
        scheme, authority = cls.name, netloc
        if not authority and cls.probe_namenode:
            written, scheme, authority = cls._default_fs(uri)
        if not authority:
            raise ValueError(f"{written}:// URI without an authority: {uri!r}")
        return scheme, written, authority, norm_path(raw_path or "/")

    @staticmethod
    def _default_fs(uri: str) -> tuple[str, str, str]:
        """``(scheme, scheme, authority)`` of ``fs.defaultFS``, for a URI that names no NameNode."""
        default = config.default_fs()
        if not default:
            raise ValueError(
                f"{uri!r} has no NameNode and fs.defaultFS is not set "
                f"(HADOOP_CONF_DIR={os.environ.get('HADOOP_CONF_DIR')!r})"
            )
        dparts = urlsplit(default)
        if dparts.scheme not in (HdfsStore.name, ViewfsStore.name):
            raise ValueError(f"fs.defaultFS={default!r} is not an hdfs:// or viewfs:// URI (for {uri!r})")
        return dparts.scheme, dparts.scheme, dparts.netloc

    def read_all(self, loc: Location) -> bytes:
        return self.handler.open_reader(loc.path).read_all()

    def open_read(self, loc: Location) -> IO[bytes]:
        return io.BufferedReader(self.handler.open_reader(loc.path), buffer_size=READ_BUFFER)

    def open_append(self, loc: Location) -> IO[bytes]:
        return io.BufferedWriter(self.handler.create_writer(loc.path, append=True), buffer_size=READ_BUFFER)

    def open_temp_writer(self, loc: Location, tmp: Location) -> IO[bytes]:
        return self.handler.create_writer(tmp.path)

    def replace(self, tmp: Location, loc: Location) -> None:
        self.handler.rename_over(tmp.path, loc.path)

    def rename_new(self, tmp: Location, loc: Location) -> None:
        self.handler.move(tmp.path, loc.path)   # rename without OVERWRITE: FileAlreadyExistsException

    def remove_quietly(self, tmp: Location) -> None:
        try:
            self.handler.delete_quietly(tmp.path)
        except Exception:  # noqa: BLE001 - best effort; a hidden temp file may remain
            pass


class ViewfsStore(HdfsStore):
    """A viewfs mount table: the same client, no NameNode of its own to probe or default to."""

    name = "viewfs"
    probe_namenode = False
