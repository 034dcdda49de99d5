"""Configuration, the Hadoop and AWS way.

* HDFS: ``$HADOOP_CONF_DIR`` (else ``$HADOOP_HOME/etc/hadoop``) ``core-site.xml`` and ``hdfs-site.xml``.
  ``fs.defaultFS`` gives the NameNode for ``hdfs:///path`` URIs without a host; HA name services
  (``dfs.nameservices``, ``dfs.ha.namenodes.*``, ``dfs.namenode.rpc-address.*``) and viewfs mount
  tables are read by hdfs-native itself from the same directory.
* S3: the standard AWS variables and profiles. ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` pick a
  non-AWS endpoint (http or https), ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` the region. Credentials are
  left to the AWS SDK's default chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` with ``~/.aws/credentials`` and ``~/.aws/config``, instance
  metadata), so secrets never pass through this package and are never logged.
* ``HDFS_IO_TIMEOUT_S``: the bound on each remote call (default 30 s).

Settings are read when a client is first made for a scheme/authority; :func:`hdfs_io.reset` drops the
cached clients so changed variables take effect.
"""
from __future__ import annotations

import configparser
import dataclasses
import os
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from ._timeout import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, timeout_s

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "timeout_s",
    "hadoop_conf_dir",
    "hadoop_conf",
    "default_fs",
    "namenode_addresses",
    "S3Settings",
    "s3_settings",
]

DEFAULT_NAMENODE_PORT = 8020


def hadoop_conf_dir() -> str | None:
    """``$HADOOP_CONF_DIR``, else ``$HADOOP_HOME/etc/hadoop`` if it exists, else None."""
    conf = os.environ.get("HADOOP_CONF_DIR")
    if conf:
        return conf
    home = os.environ.get("HADOOP_HOME")
    if home and os.path.isdir(os.path.join(home, "etc", "hadoop")):
        return os.path.join(home, "etc", "hadoop")
    return None


def _read_site(path: str) -> dict[str, str]:
    props: dict[str, str] = {}
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        return props
    except ET.ParseError as exc:
        raise ValueError(f"cannot parse Hadoop configuration file {path}: {exc}") from None
    for prop in root.iter("property"):
        name = prop.findtext("name")
        value = prop.findtext("value")
        if name is not None and value is not None:
            props[name.strip()] = value.strip()
    return props


def hadoop_conf(conf_dir: str | None = None) -> dict[str, str]:
    """Merged properties of ``core-site.xml`` and ``hdfs-site.xml`` (later file wins)."""
    conf_dir = conf_dir if conf_dir is not None else hadoop_conf_dir()
    props: dict[str, str] = {}
    if conf_dir:
        for name in ("core-site.xml", "hdfs-site.xml"):
            props.update(_read_site(os.path.join(conf_dir, name)))
    return props


def default_fs(conf_dir: str | None = None) -> str | None:
    """``fs.defaultFS`` (or the deprecated ``fs.default.name``), e.g. ``hdfs://127.0.0.1:9000``."""
    props = hadoop_conf(conf_dir)
    value = props.get("fs.defaultFS") or props.get("fs.default.name")
    return value.rstrip("/") if value else None


def namenode_addresses(authority: str, conf_dir: str | None = None) -> list[tuple[str, int]]:
    """RPC addresses behind an ``hdfs://`` authority: ``host:port``, a bare host (port 8020), or an
    HA name service from ``hdfs-site.xml``."""
    props = hadoop_conf(conf_dir)
    namenodes = props.get(f"dfs.ha.namenodes.{authority}")
    if namenodes:
        out = []
        for nn in namenodes.split(","):
            addr = props.get(f"dfs.namenode.rpc-address.{authority}.{nn.strip()}")
            if addr:
                out.append(_host_port(addr, DEFAULT_NAMENODE_PORT))
        return out
    return [_host_port(authority, DEFAULT_NAMENODE_PORT)]


def _host_port(addr: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit("//" + addr)
    return parts.hostname or "localhost", parts.port or default_port


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Where S3 calls go. Holds no secrets: credentials stay with the AWS SDK's chain."""

    endpoint: str | None  # host[:port] of a non-AWS endpoint, None for AWS itself
    scheme: str  # "http" or "https"
    region: str | None
    profile: str | None

    def describe(self) -> str:
        where = f"{self.scheme}://{self.endpoint}" if self.endpoint else "AWS S3"
        return f"{where} (region {self.region or 'default'})"


def _profile_region(profile: str | None) -> str | None:
    path = os.environ.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return None
    name = profile or "default"
    for section in (name, f"profile {name}"):
        if parser.has_option(section, "region"):
            return parser.get(section, "region")
    return None


def s3_settings() -> S3Settings:
    """Read the S3 endpoint and region from the standard AWS variables and the profile's config."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    endpoint, scheme = None, "https"
    if url:
        parts = urlsplit(url if "://" in url else "https://" + url)
        scheme = parts.scheme or "https"
        endpoint = parts.netloc
    profile = os.environ.get("AWS_PROFILE") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or _profile_region(profile)
    if region is None and endpoint:
        region = "us-east-1"  # S3-compatible servers accept any region; avoid a region lookup
    return S3Settings(endpoint=endpoint, scheme=scheme, region=region, profile=profile)
