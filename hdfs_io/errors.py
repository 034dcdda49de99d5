"""Exceptions raised by :mod:`hdfs_io`.

Every error names the URI it is about. The classes subclass the built-in exception a caller would
already catch (``FileNotFoundError``, ``ConnectionError``, ``TimeoutError``, ``ValueError``), so code
that knows nothing about this package still handles them sensibly.
"""
from __future__ import annotations

import errno


class StorageError(OSError):
    """Base class for storage failures raised by hdfs_io (an ``OSError``)."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The storage service (NameNode, S3 endpoint) refused or dropped the connection."""

    def __init__(self, uri: str, detail: str = ""):
        self.uri = uri
        msg = f"storage service for {uri} is unreachable"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)

    def __str__(self) -> str:  # OSError's __str__ would prepend errno fields
        return self.args[0]


class StorageTimeoutError(StorageError, ConnectionError, TimeoutError):
    """A remote call did not finish within the configured timeout (``HDFS_IO_TIMEOUT_S``)."""

    def __init__(self, uri: str, timeout_s: float, operation: str = ""):
        self.uri = uri
        self.timeout_s = timeout_s
        self.operation = operation
        op = f"{operation} " if operation else ""
        super().__init__(
            f"{op}{uri} did not complete within {timeout_s:g} s (HDFS_IO_TIMEOUT_S): "
            "is the NameNode / S3 endpoint up and reachable?"
        )

    def __str__(self) -> str:
        return self.args[0]


class CorruptFileError(StorageError, ValueError):
    """A data file (Parquet, TFRecord) could not be decoded."""

    def __init__(self, uri: str, detail: str = ""):
        self.uri = uri
        super().__init__(f"corrupt or unreadable data file {uri}" + (f": {detail}" if detail else ""))

    def __str__(self) -> str:
        return self.args[0]


class SchemaMismatchError(StorageError, ValueError):
    """A Parquet file's schema disagrees with the first file of the same read."""

    def __init__(self, uri: str, detail: str = ""):
        self.uri = uri
        super().__init__(f"schema of {uri} does not match the other files" + (f": {detail}" if detail else ""))

    def __str__(self) -> str:
        return self.args[0]


class NotPublishedError(StorageError, FileNotFoundError):
    """A data set / export directory exists but nothing complete is published there: no ``_CURRENT``
    pointer and no ``_SUCCESS`` marker (incomplete, still being published, or not an output)."""

    def __init__(self, uri: str, detail: str = ""):
        self.uri = uri
        self.detail = detail
        super().__init__(f"{uri} is not published: " + (detail or "it has neither a _CURRENT pointer nor a "
                                                                   "_SUCCESS marker (incomplete, still being "
                                                                   "published, or not an output)"))

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.uri, self.detail)


class WrongKindError(StorageError, FileExistsError):
    """Publishing an output of one kind over a published output of another kind (an export over a
    prep, ...); refused even with ``overwrite=True``."""

    def __init__(self, uri: str, existing: str, new: str):
        self.uri, self.existing, self.new = uri, existing, new
        super().__init__(f"{uri} holds a published {existing!r} output; refusing to replace it with a "
                         f"{new!r} output (wrong target? delete it first if you really mean it)")

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.uri, self.existing, self.new)


class CredentialsInURIError(ValueError):
    """A URI carries a password or access key in its authority (``s3://KEY:SECRET@bucket/x``,
    ``hdfs://user:pw@host/x``). URIs end up in logs, process listings and error messages, so they must
    not hold secrets. The message names the scheme and host/bucket only, never the credentials."""

    def __init__(self, scheme: str, host: str, where: str):
        self.scheme, self.host, self.where = scheme, host, where
        super().__init__(f"{scheme}://{host}: credentials in the URI are refused (they would leak into logs "
                         f"and process listings); pass them through {where} instead")

    def __reduce__(self):  # crosses process boundaries (Spark tasks): rebuild from the parts
        return type(self), (self.scheme, self.host, self.where)


def not_found(uri: str) -> FileNotFoundError:
    """``FileNotFoundError`` naming ``uri`` (``str()`` reads "[Errno 2] No such file or directory: 'uri'")."""
    return FileNotFoundError(errno.ENOENT, "No such file or directory", uri)
