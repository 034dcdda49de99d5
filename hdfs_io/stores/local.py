"""``file://`` URIs and plain paths: ``pyarrow.fs.LocalFileSystem`` (C++, releases the GIL).

Plain paths stay plain (listing one gives paths back); relative ones are made absolute. Reads and
writes use Python's own file objects.
"""
from __future__ import annotations

import builtins
import os
import posixpath
from typing import IO, TYPE_CHECKING

import pyarrow.fs as pafs

from ..errors import not_found
from .base import Capabilities, Store, norm_path

if TYPE_CHECKING:
    from ..uri import Location


class LocalStore(Store):
    name = "file"
    label = "local"
    caps = Capabilities(atomic_rename=True, real_directories=True, bucket_namespace=False, ranged_reads=True,
                        server_side_copy=True, appendable=True, caller_timed=False, writes_create_parents=False)

    def _make_fs(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem(use_mmap=False)

    @classmethod
    def locate(cls, written: str, netloc: str, raw_path: str, uri: str) -> tuple[str, str, str, str]:
        if "://" not in uri and not written:  # a plain path
            return cls.name, "", "", norm_path(os.path.abspath(os.path.expanduser(raw_path)))
        if netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a host is not supported: {uri!r}")
        return cls.name, written, "", norm_path(raw_path or "/")

    def ensure_dir(self, loc: Location) -> None:
        os.makedirs(loc.path, exist_ok=True)

    def open_read(self, loc: Location) -> IO[bytes]:
        try:
            return builtins.open(loc.path, "rb")
        except FileNotFoundError:
            raise not_found(loc.uri) from None

    def open_append(self, loc: Location) -> IO[bytes]:
        return builtins.open(loc.path, "ab")

    def open_temp_writer(self, loc: Location, tmp: Location) -> IO[bytes]:
        if os.path.isdir(loc.path):
            raise IsADirectoryError(f"{loc.uri} is a directory")
        os.makedirs(posixpath.dirname(loc.path), exist_ok=True)
        return builtins.open(tmp.path, "wb")

    def replace(self, tmp: Location, loc: Location) -> None:
        os.replace(tmp.path, loc.path)

    def rename_new(self, tmp: Location, loc: Location) -> None:
        os.link(tmp.path, loc.path)     # fails if loc exists: rename(2) would replace it
        os.unlink(tmp.path)

    def remove_quietly(self, tmp: Location) -> None:
        try:
            os.unlink(tmp.path)
        except OSError:
            pass
