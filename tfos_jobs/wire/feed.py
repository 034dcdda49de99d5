"""The DataFrame feed's wire protocol, shared by its three ends.

* the **coordinator** (driver, ``tfos_jobs.driver.feed``) serves one JSON request per connection:
  ``register`` (a receiver's address), ``closed`` (a receiver stopped early), ``status`` (rows fed);
* a **sender** (Spark task, ``tfos_jobs.executor.feed``) opens one connection per receiver and writes
  a JSON header ``{"kind": "data", "epoch", "partition"}``, reads ``{"ok"}``, ``{"dup": rows}`` or
  ``{"error"}``, then an Arrow IPC stream and a ``{"rows": n}`` trailer (without it a stream cut off
  between two batches would read as whole), and reads the receiver's ``{"rows": n}`` acknowledgement;
* the coordinator tells each **receiver** (TF process, ``tfos_jobs.tfnode.feed``) ``end`` (the
  partitions and rows it must have got in an epoch), ``finish`` or ``abort``.

Every connection is authenticated both ways with the feed's secret (``tfos_jobs.wire.auth``); a data
stream's trailer carries an HMAC of the whole stream, so a partition counts as delivered only when it
came whole from a holder of the secret. Every message is schema-checked; every socket has a timeout.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from tfos_jobs.wire import auth
from tfos_jobs.wire.auth import BadMessage, check_fields

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
    secret: str = field(repr=False)   # reaches executors only in the Spark task closure
    max_batches_in_flight: int = 8
    stall_timeout_s: float = 300.0

    @property
    def columns(self) -> tuple:
        return self.features + self.labels

    def arrow_schema(self) -> Any:   # pyarrow.Schema (pyarrow imported on use)
        import numpy as np
        import pyarrow as pa
        return pa.schema([pa.field(c, pa.from_numpy_dtype(np.dtype(self.dtypes[c]))) for c in self.columns])


# The fields of each message, by the end that receives it.
COORDINATOR_OPS = {"register": {"worker": int, "address": str}, "closed": {"worker": int}, "status": {}}
RECEIVER_KINDS = {"data": {"epoch": int, "partition": int}, "end": {"epoch": int, "expected": dict},
                  "finish": {}, "abort": {"error": str}}


def check_message(msg: dict, key: str, schema: dict, what: str) -> dict:
    """Reject (BadMessage) an unknown op/kind, a missing field or a field of the wrong type."""
    name = msg.get(key)
    if name not in schema:
        raise BadMessage(f"{what}: unknown {key} {name!r}")
    return check_fields(msg, schema[name], f"{what} {name}")


def request(address: str, secret: str, msg: dict, timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """One authenticated request, one verified reply, on a fresh connection bounded by ``timeout``."""
    return auth.request(address, secret, msg, timeout=timeout)


def route_to(address: str) -> str:
    """This host's address on the interface that reaches ``address`` (the driver)."""
    host, port = address.rsplit(":", 1)
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, int(port)))
        return probe.getsockname()[0]
