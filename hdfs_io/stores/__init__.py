"""The stores behind the URI schemes, and the one registry that maps a scheme to its store class.

=========================  =========================  ===========================================
scheme (as written)        store                      client
=========================  =========================  ===========================================
plain path, ``file://``    :class:`LocalStore`        ``pyarrow.fs.LocalFileSystem``
``hdfs://``                :class:`HdfsStore`         hdfs-native as a ``pyarrow.fs.PyFileSystem``
``viewfs://``              :class:`ViewfsStore`       the same, for a mount table
``s3://``, ``s3a://``,     :class:`S3Store`           ``pyarrow.fs.S3FileSystem``, botocore for
``s3n://``                                            deletes
=========================  =========================  ===========================================

Measured here (``benchmarks/storage.py``), all three clients are ``pyarrow.fs.FileSystem`` objects,
so Parquet reading is pyarrow's own code on every scheme and the layer on top adds only a metadata
call per file. What each store can do is in its :class:`Capabilities`.

A new scheme is one module with a :class:`Store` subclass and one line below.
"""
from __future__ import annotations

from .base import Capabilities, Store
from .hdfs import HdfsStore, ViewfsStore
from .local import LocalStore
from .s3 import S3Store

__all__ = ["REGISTRY", "Capabilities", "Store", "store_class", "LocalStore", "HdfsStore", "ViewfsStore", "S3Store"]

# scheme as written ("" for a plain path) -> store class
REGISTRY: dict[str, type[Store]] = {
    "": LocalStore,
    "file": LocalStore,
    "hdfs": HdfsStore,
    "viewfs": ViewfsStore,
    "s3": S3Store,
    "s3a": S3Store,
    "s3n": S3Store,
}


def store_class(scheme: str) -> type[Store]:
    """The store class for a scheme as written (lower case), or ``KeyError``."""
    return REGISTRY[scheme]
