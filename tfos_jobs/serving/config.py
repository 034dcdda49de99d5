"""What a server is told, checked before anything starts."""
from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ModelSource:
    """A served name and where its exports are: a directory of numbered versions (``URI/<n>/``, TF
    Serving's layout; the highest complete one is served), one replaceable export, or a registered
    model and an alias (``URI@champion``: the version the alias points to, followed as it moves)."""
    name: str
    uri: str
    alias: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ValueError(f"model name {self.name!r}: letters, digits, '_', '.' and '-' only (at most 64)")
        if not self.uri:
            raise ValueError(f"model {self.name}: no export URI")

        if self.alias and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", self.alias):
            raise ValueError(f"model {self.name}: alias {self.alias!r}: a letter, then letters, digits, '_' or '-'")

    @classmethod
    def parse(cls, text: str) -> "ModelSource":
        """``name=URI`` or ``name=URI@alias``."""
        name, sep, uri = text.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=URI or NAME=URI@ALIAS, got {text!r}")
        base, at, alias = uri.rpartition("@")
        if at and "/" not in alias:
            return cls(name, base, alias)
        return cls(name, uri)


@dataclass(frozen=True)
class BatchingConfig:
    """Micro-batching of concurrent requests, as TF Serving's batching parameters: a batch closes at
    ``max_batch_size`` instances or ``batch_timeout_ms`` after its first request, whichever comes
    first; at most ``batch_threads`` batches run at once; requests beyond ``max_queued`` queued
    instances are refused (503, ``Retry-After``) instead of waiting without bound."""
    max_batch_size: int = 64
    batch_timeout_ms: float = 2.0
    batch_threads: int = 2
    max_queued: int = 4096

    def __post_init__(self):
        for name in ("max_batch_size", "batch_threads", "max_queued"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.batch_timeout_ms <= 10_000:
            raise ValueError(f"batch_timeout_ms must be in [0, 10000], got {self.batch_timeout_ms}")
        if self.max_queued < self.max_batch_size:
            raise ValueError(f"max_queued ({self.max_queued}) must be at least max_batch_size ({self.max_batch_size})")


@dataclass(frozen=True)
class TlsConfig:
    """HTTPS with the server's certificate and key (PEM). With ``client_ca_file``, it is mutual TLS:
    the handshake fails for a client without a certificate signed by that CA, so nothing reaches the
    application from a peer that has not proved who it is."""
    cert_file: str
    key_file: str
    client_ca_file: str = ""

    def __post_init__(self):
        for flag, path in (("--tls-cert", self.cert_file), ("--tls-key", self.key_file),
                           ("--tls-client-ca", self.client_ca_file)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: no such file")
        if not self.cert_file or not self.key_file:
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        mode = os.stat(self.key_file).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"--tls-key {self.key_file}: readable by others (mode {stat.S_IMODE(mode):o}); "
                             "chmod 600 it")

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_file)


@dataclass(frozen=True)
class ServerConfig:
    """Where it listens and what it accepts. Bound beyond loopback, it needs a bearer ``token`` or
    mutual TLS (or both)."""
    models: tuple[ModelSource, ...]
    host: str = "127.0.0.1"
    port: int = 8501
    token: str | None = field(default=None, repr=False)     # never printed
    batching: BatchingConfig = BatchingConfig()
    max_request_bytes: int = 4 << 20
    max_instances: int = 10_000                 # per request
    poll_s: float = 10.0                        # how often the exports are looked at for a new version
    cache_dir: str = ""                         # "": the user's private root (tfos_jobs.localdirs)
    cache_versions: int = 3                     # cached copies kept per model, served ones included
    drain_s: float = 30.0                       # graceful shutdown: in-flight requests get this long
    tls: TlsConfig | None = None

    def __post_init__(self):
        if not self.models:
            raise ValueError("no model to serve: give --model NAME=URI")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be distinct, got {names}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not is_loopback(self.host) and not self.token and not (self.tls and self.tls.mutual):
            raise ValueError(f"--host {self.host} is reachable beyond this machine: give a bearer token "
                             "(--token-file or $TFOS_SERVE_TOKEN) or mutual TLS (--tls-cert, --tls-key, "
                             "--tls-client-ca), or bind 127.0.0.1")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the bearer token must be at least 16 characters")
        for name in ("max_request_bytes", "max_instances", "cache_versions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.poll_s <= 0 or self.drain_s < 0:
            raise ValueError(f"poll_s must be positive and drain_s not negative, got {self.poll_s}, {self.drain_s}")


    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
