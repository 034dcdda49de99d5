"""A minimal Kafka protocol client (standard library only) for the pseudo-cluster's health check.

It speaks just enough of the wire protocol (https://kafka.apache.org/protocol) to ask a broker
``ApiVersions`` (v0: answered by every broker, whatever it supports) and ``Metadata`` (v4: the oldest
version Kafka 4 still serves, KIP-896) over one TCP connection with a timeout.  Producing and
consuming are left to real clients.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

API_METADATA = 3
API_VERSIONS = 18
CLIENT_ID = b"tfos-cluster"


class KafkaProtocolError(OSError):
    """The broker answered something this client cannot read, or an error code."""


@dataclass
class Metadata:
    brokers: dict[int, tuple[str, int]]                 # node id -> (host, port)
    cluster_id: str | None
    controller_id: int
    topics: dict[str, dict[int, int]] = field(default_factory=dict)  # topic -> partition -> leader


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise KafkaProtocolError("truncated Kafka response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int8(self) -> int:
        return self._take(">b")

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8")

    def array(self, item) -> list:
        n = self.int32()
        return [item() for _ in range(max(n, 0))]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            raise KafkaProtocolError("the broker closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def request(host: str, port: int, api_key: int, api_version: int, body: bytes,
            timeout: float = 3.0, correlation_id: int = 1) -> _Reader:
    """Send one request (header v1) and return a reader positioned after the response header (v0)."""
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 4 <= size <= 64 << 20:
            raise KafkaProtocolError(f"implausible Kafka response size {size}")
        reader = _Reader(_recv_exact(sock, size))
    got = reader.int32()
    if got != correlation_id:
        raise KafkaProtocolError(f"correlation id {got}, expected {correlation_id}")
    return reader


def api_versions(host: str, port: int, timeout: float = 3.0) -> dict[int, tuple[int, int]]:
    """``ApiVersions`` v0: api key -> (min version, max version) the broker supports."""
    r = request(host, port, API_VERSIONS, 0, b"", timeout)
    error = r.int16()
    if error:
        raise KafkaProtocolError(f"ApiVersions error code {error}")
    return {k: (lo, hi) for k, lo, hi in r.array(lambda: (r.int16(), r.int16(), r.int16()))}


def metadata(host: str, port: int, topics: list[str] | None = None,
             timeout: float = 3.0) -> Metadata:
    """``Metadata`` v4 for ``topics`` (None: every topic); never creates a topic."""
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(
            struct.pack(">h", len(t.encode())) + t.encode() for t in topics)
    body += struct.pack(">b", 0)            # allow_auto_topic_creation = false
    r = request(host, port, API_METADATA, 4, body, timeout)
    r.int32()                               # throttle_time_ms
    brokers = {}
    for node, bhost, bport, _rack in r.array(lambda: (r.int32(), r.string(), r.int32(), r.string())):
        brokers[node] = (bhost, bport)
    cluster_id = r.string()
    controller = r.int32()
    md = Metadata(brokers, cluster_id, controller)

    def partition():
        error, index, leader = r.int16(), r.int32(), r.int32()
        r.array(r.int32)                    # replicas
        r.array(r.int32)                    # in-sync replicas
        return error, index, leader

    for error, name, _internal, parts in r.array(
            lambda: (r.int16(), r.string(), r.int8(), r.array(partition))):
        if error == 0 and name is not None:
            md.topics[name] = {index: leader for _e, index, leader in parts}
    return md
