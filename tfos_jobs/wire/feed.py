"""The DataFrame feed's wire protocol, shared by its three ends.

* the **coordinator** (driver, ``tfos_jobs.driver.feed``) serves one JSON request per connection:
  ``register`` (a receiver's address), ``closed`` (a receiver stopped early), ``status`` (rows fed);
* a **sender** (Spark task, ``tfos_jobs.executor.feed``) opens one connection per receiver and writes
  a JSON header ``{"kind": "data", "epoch", "partition"}``, reads ``{"ok"}``, ``{"dup": rows}`` or
  ``{"error"}``, then an Arrow IPC stream and a ``{"rows": n}`` trailer (without it a stream cut off
  between two batches would read as whole), and reads the receiver's ``{"rows": n}`` acknowledgement;
* the coordinator tells each **receiver** (TF process, ``tfos_jobs.tfnode.feed``) ``end`` (the
  partitions and rows it must have got in an epoch), ``finish`` or ``abort``.

Every message carries the feed's token; every socket has a timeout.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0


class FeedError(RuntimeError):
    """The feed failed: a Spark feeding task, a receiver, or the exactly-once check."""


class FeedClosed(Exception):
    """The receiver was closed while a producer was still sending (early stop)."""


@dataclass(frozen=True)
class FeedSpec:
    """The picklable side of a feed, sent to every TF worker and every feeding task."""
    features: tuple
    labels: tuple
    dtypes: dict
    num_workers: int
    batch_size: int
    coordinator: str            # host:port of the driver's coordinator
    token: str
    max_batches_in_flight: int = 8
    stall_timeout_s: float = 300.0

    @property
    def columns(self) -> tuple:
        return self.features + self.labels

    def arrow_schema(self) -> Any:   # pyarrow.Schema (pyarrow imported on use)
        import numpy as np
        import pyarrow as pa
        return pa.schema([pa.field(c, pa.from_numpy_dtype(np.dtype(self.dtypes[c]))) for c in self.columns])


def send_json(sock: socket.socket, obj: Any) -> None:
    sock.sendall((json.dumps(obj) + "\n").encode())


def recv_json(rfile) -> Any:
    line = rfile.readline()
    if not line:
        raise ConnectionError("peer closed the connection")
    return json.loads(line)


def request(address: str, msg: dict, timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """One request, one reply line, on a fresh connection bounded by ``timeout``."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=min(timeout, CONNECT_TIMEOUT_S)) as sock:
        sock.settimeout(timeout)
        send_json(sock, msg)
        with sock.makefile("rb") as rfile:
            return recv_json(rfile)


def route_to(address: str) -> str:
    """This host's address on the interface that reaches ``address`` (the driver)."""
    host, port = address.rsplit(":", 1)
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, int(port)))
        return probe.getsockname()[0]
