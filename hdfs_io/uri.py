"""URI parsing and joining.

Accepted forms: ``hdfs://host:port/path``, ``hdfs:///path`` (NameNode from ``fs.defaultFS``),
``viewfs://cluster/path``, ``s3://bucket/key`` and its aliases ``s3a://`` / ``s3n://``,
``file:///abs/path`` and plain local paths (relative ones are made absolute).

A parsed :class:`Location` keeps the scheme the caller wrote, so listing an ``s3a://`` directory gives
``s3a://`` URIs back and listing a plain path gives plain paths. The scheme picks the store class
(:data:`hdfs_io.stores.REGISTRY`), which checks the rest of the URI and owns its layout.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from urllib.parse import urlsplit

from .errors import CredentialsInURIError
from .stores import REGISTRY, Store, store_class

@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed URI.

    ``path`` is what the backend file system takes: an absolute path for file/hdfs/viewfs, and
    ``bucket/key`` for S3.
    """

    scheme: str  # backend: file, hdfs, viewfs, s3
    written_scheme: str  # as the caller wrote it ("" for a plain path)
    authority: str  # host:port, name service, mount table or bucket ("" for local)
    path: str

    @property
    def store_class(self) -> type[Store]:
        return store_class(self.scheme)

    @property
    def _in_buckets(self) -> bool:
        return self.store_class.caps.bucket_namespace

    @property
    def uri(self) -> str:
        return self.with_path(self.path)

    def with_path(self, path: str) -> str:
        """The URI, in the caller's style, of another backend path on the same file system."""
        if self._in_buckets:
            return f"{self.written_scheme}://{path.strip('/')}"
        if self.written_scheme == "":
            return path
        return f"{self.written_scheme}://{self.authority}{path}"

    @property
    def bucket(self) -> str:
        return self.authority

    @property
    def key(self) -> str:
        """For S3: the object key (no bucket, no leading slash)."""
        return self.path.partition("/")[2] if self._in_buckets else self.path

    @property
    def is_root(self) -> bool:
        return "/" not in self.path if self._in_buckets else self.path == "/"

    def root(self) -> "Location":
        """The root of this location's namespace: ``/``, or the bucket."""
        return dataclasses.replace(self, path=self.bucket if self._in_buckets else "/")

    def parent(self) -> "Location":
        if self._in_buckets:
            head = self.path.rpartition("/")[0] if "/" in self.path else self.path
            return dataclasses.replace(self, path=head)
        return dataclasses.replace(self, path=posixpath.dirname(self.path) or "/")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, name: str) -> "Location":
        return dataclasses.replace(self, path=_join_path(self.path, name))


def _join_path(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out or "/"


def userinfo_span(uri: str) -> tuple[int, int] | None:
    """Where the userinfo (``user`` or ``user:password``, before ``@`` in the authority) of ``uri`` is,
    as ``(start, end)`` offsets, or None when it has none. A password with a ``/`` in it (AWS secret keys
    often have one) cuts the authority short, ``s3://KEY:sec/ret@bucket/x``: that counts as userinfo
    too (a port is digits), where ``hdfs://host:8020/dir/a@b`` does not."""
    head, sep, rest = uri.partition("://")
    if not sep:
        return None
    start = len(head) + len(sep)
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:
        return start, start + netloc.rindex("@")
    port = re.sub(r"^\[[^\]]*\]", "", netloc).rpartition(":")[2] if ":" in netloc else ""
    if port and not port.isdigit() and "@" in rest:
        return start, start + rest.index("@")
    return None


def reject_credentials(uri: str) -> None:
    """:class:`~hdfs_io.errors.CredentialsInURIError` when ``uri`` carries a password, or (in a bucket
    namespace, where a bucket name has no ``@``) an access key. A user name alone (``hdfs://user@nn/``)
    passes."""
    span = userinfo_span(uri)
    if span is None:
        return
    scheme = uri[:uri.index("://")].lower()
    cls = REGISTRY.get(scheme)
    in_buckets = cls is not None and cls.caps.bucket_namespace
    if ":" in uri[span[0]:span[1]] or in_buckets:
        raise CredentialsInURIError(
            scheme, re.split(r"[/?#]", uri[span[1] + 1:], maxsplit=1)[0],
            "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or the Hadoop "
            "configuration (fs.s3a.* in core-site.xml, a credential provider)" if in_buckets else
            "the environment (HADOOP_USER_NAME, a Kerberos ticket from kinit) or the Hadoop configuration")


def parse(uri: str | os.PathLike) -> Location:
    """Parse ``uri`` into a :class:`Location`; ``ValueError`` for an unsupported scheme, and
    :class:`~hdfs_io.errors.CredentialsInURIError` for one with credentials in it."""
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"not a URI or path: {uri!r}")
    reject_credentials(uri)
    if "://" not in uri:
        shown, netloc, raw_path = ("file", "", uri[5:]) if uri.startswith("file:") else ("", "", uri)
    else:
        parts = urlsplit(uri)
        shown, netloc = parts.scheme, parts.netloc
        # urlsplit drops ?query and #fragment: keep them as part of the path (they are legal file names)
        raw_path = uri.split("://", 1)[1][len(netloc):]
    written = shown.lower()
    try:
        cls = store_class(written)
    except KeyError:
        raise ValueError(
            f"unsupported URI scheme {shown!r} in {uri!r} (use hdfs, viewfs, s3, s3a, file)"
        ) from None
    return Location(*cls.locate(written, netloc, raw_path, uri))


def join(uri: str, *parts: str) -> str:
    """Join path components onto a URI or path with ``/`` (a leading ``/`` in a part does not reset)."""
    uri = os.fspath(uri)
    if not parts:
        return uri
    if "://" in uri:
        head, _, rest = uri.partition("://")
        netloc, slash, path = rest.partition("/")
        return f"{head}://{netloc}" + _join_path("/" + path if slash else "", *parts)
    base = uri if uri else "."
    if base == "/":
        return _join_path("/", *parts)
    return _join_path(base, *parts)
