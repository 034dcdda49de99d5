"""URI parsing and joining.

Accepted forms: ``hdfs://host:port/path``, ``hdfs:///path`` (NameNode from ``fs.defaultFS``),
``viewfs://cluster/path``, ``s3://bucket/key`` and its aliases ``s3a://`` / ``s3n://``,
``file:///abs/path`` and plain local paths (relative ones are made absolute).

A parsed :class:`Location` keeps the scheme the caller wrote, so listing an ``s3a://`` directory gives
``s3a://`` URIs back and listing a plain path gives plain paths.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
from urllib.parse import urlsplit

from . import config

# scheme as written -> backend scheme
SCHEMES = {
    "hdfs": "hdfs",
    "viewfs": "viewfs",
    "s3": "s3",
    "s3a": "s3",
    "s3n": "s3",
    "file": "file",
    "": "file",
}


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
    def uri(self) -> str:
        return self.with_path(self.path)

    def with_path(self, path: str) -> str:
        """The URI, in the caller's style, of another backend path on the same file system."""
        if self.scheme == "s3":
            return f"{self.written_scheme}://{path.strip('/')}"
        if self.written_scheme == "":
            return path
        if self.scheme == "file":
            return f"file://{path}"
        return f"{self.written_scheme}://{self.authority}{path}"

    @property
    def bucket(self) -> str:
        return self.authority

    @property
    def key(self) -> str:
        """For S3: the object key (no bucket, no leading slash)."""
        return self.path.partition("/")[2] if self.scheme == "s3" else self.path

    @property
    def is_root(self) -> bool:
        return self.path == "/" if self.scheme != "s3" else "/" not in self.path

    def parent(self) -> "Location":
        if self.scheme == "s3":
            head = self.path.rpartition("/")[0] if "/" in self.path else self.path
            return dataclasses.replace(self, path=head)
        return dataclasses.replace(self, path=posixpath.dirname(self.path) or "/")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, name: str) -> "Location":
        return dataclasses.replace(self, path=_join_path(self.path, name))


def _norm(path: str) -> str:
    if not path:
        return "/"
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def _join_path(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out or "/"


def parse(uri: str | os.PathLike) -> Location:
    """Parse ``uri`` into a :class:`Location`; ``ValueError`` for an unsupported scheme."""
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"not a URI or path: {uri!r}")
    if "://" not in uri:
        if uri.startswith("file:"):  # file:/abs/path
            return Location("file", "file", "", _norm(uri[5:]))
        return Location("file", "", "", _norm(os.path.abspath(os.path.expanduser(uri))))
    parts = urlsplit(uri)
    written = parts.scheme.lower()
    scheme = SCHEMES.get(written)
    if scheme is None:
        raise ValueError(f"unsupported URI scheme {parts.scheme!r} in {uri!r} (use hdfs, viewfs, s3, s3a, file)")
    # urlsplit drops ?query and #fragment: keep them as part of the path (they are legal file names)
    raw_path = uri.split("://", 1)[1]
    raw_path = raw_path[len(parts.netloc):]
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a host is not supported: {uri!r}")
        return Location("file", written, "", _norm(raw_path or "/"))
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise ValueError(f"S3 URI without a bucket: {uri!r}")
        key = _norm(raw_path).strip("/") if raw_path.strip("/") else ""
        return Location("s3", written, bucket, f"{bucket}/{key}" if key else bucket)
    authority = parts.netloc
    if scheme == "hdfs" and not authority:
        default = config.default_fs()
        if not default:
            raise ValueError(
                f"{uri!r} has no NameNode and fs.defaultFS is not set "
                f"(HADOOP_CONF_DIR={os.environ.get('HADOOP_CONF_DIR')!r})"
            )
        dparts = urlsplit(default)
        if dparts.scheme not in ("hdfs", "viewfs"):
            raise ValueError(f"fs.defaultFS={default!r} is not an hdfs:// or viewfs:// URI (for {uri!r})")
        written, scheme, authority = dparts.scheme, dparts.scheme, dparts.netloc
    if not authority:
        raise ValueError(f"{written}:// URI without an authority: {uri!r}")
    return Location(scheme, written, authority, _norm(raw_path or "/"))


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
