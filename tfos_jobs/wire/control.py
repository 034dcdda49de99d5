"""The control channel between the driver and the TF node processes.

TFoS's own lifecycle polls Spark's status tracker every 5 s and has no way to tell a parameter-server
worker that the chief is done. Here each TF process talks to a small TCP server on the driver instead:
it reports ``ready``/``progress``/``done``/``failed`` and polls for ``stop``. One short request per
connection, authenticated both ways with the job's secret (``tfos_jobs.wire.auth``), schema-checked
before it is acted on, every socket with a timeout, so neither side can wait forever on the other: a
node that cannot reach the driver for ``orphan_timeout_s`` exits on its own.
"""
from __future__ import annotations

import queue
import threading
import time

from tfos_jobs.wire.auth import LARGE_MESSAGE, BadMessage, RequestServer, check_fields, new_secret, request

REQUEST_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 200_000     # a node's traceback, cut to fit a control message

# The fields each operation must carry (beyond ``op``, ``node`` and ``attempt``), with their types.
NUMBER = (int, float)
OPS = {
    "started": {}, "ready": {}, "poll": {}, "finishing": {},
    "progress": {"step": int, "loss": NUMBER},
    "done": {"result": dict},
    "failed": {"error": str, "peer_lost": bool},
    "claim": {"executor_id": int, "port": int},     # an executor's TF port, before TFoS registers it
}
OPTIONAL = {"examples_per_s": NUMBER, "elapsed_s": NUMBER, "total_steps": (int, type(None)), "result": dict,
            "error": str, "peer_lost": bool}


class DriverUnreachable(ConnectionError):
    """A TF node could not reach the driver's control server."""


def check_event(msg: dict) -> dict:
    """Reject (BadMessage) an unknown op, a missing field or a field of the wrong type."""
    op = msg.get("op")
    if op not in OPS:
        raise BadMessage(f"control: unknown op {op!r}")
    check_fields(msg, {"node": str, "attempt": (int, type(None))}, f"control {op}")
    return check_fields(msg, OPS[op], f"control {op}", OPTIONAL)


class ControlServer:
    """Driver side: collects node events, answers polls. Thread-safe; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1"):
        self.secret = new_secret()
        self.events = queue.Queue()
        self._ready = set()
        self._stop = False
        self._lock = threading.Lock()
        self._expected_ready = None
        self._claims = {}
        self.attempt = None
        self._server = RequestServer(host, self.secret, self._handle, name="control", limit=LARGE_MESSAGE)

    @property
    def address(self) -> str:
        return self._server.address

    @property
    def rejected(self) -> int:
        """Requests dropped so far: unauthenticated, oversized or malformed."""
        return self._server.rejected

    def claimed_port(self, executor_id: int) -> int | None:
        """The TF port the node of ``executor_id`` claimed in this attempt (None before it did)."""
        with self._lock:
            return self._claims.get(executor_id)

    def expect_ready(self, count: int) -> None:
        """Number of ``ready`` reports after which polls answer ``all_ready``."""
        self._expected_ready = count

    def request_stop(self) -> None:
        """Tell every polling node to finish (the chief is done, or the job is failing)."""
        with self._lock:
            self._stop = True

    def reset(self, attempt: int | None = None) -> None:
        """Forget a previous attempt's state before a TF cluster is started again. From then on,
        messages of other attempts (a dying node of the last cluster) are dropped and told to stop."""
        with self._lock:
            self.attempt = attempt
            self._stop = False
            self._ready.clear()
            self._claims.clear()
        while not self.events.empty():
            self.events.get_nowait()

    def _handle(self, msg):
        op = check_event(msg)["op"]
        if self.attempt is not None and msg.get("attempt") != self.attempt:
            return {"stop": True, "all_ready": False}
        if op == "claim":
            with self._lock:
                self._claims.setdefault(msg["executor_id"], msg["port"])   # the first claim holds
                return {"stop": self._stop, "all_ready": False}
        if op == "ready":
            with self._lock:
                self._ready.add(msg["node"])
        if op != "poll":
            self.events.put(dict(msg, received=time.time()))
        with self._lock:
            all_ready = self._expected_ready is not None and len(self._ready) >= self._expected_ready
            return {"stop": self._stop, "all_ready": all_ready}

    def __enter__(self):
        self._server.start()
        return self

    def __exit__(self, *exc):
        self._server.stop()


class ControlClient:
    """Node side: sends events to the driver; every call is bounded by a timeout."""

    def __init__(self, address: str, secret: str, node: str, attempt: int | None = None):
        self.address, self.secret, self.node, self.attempt = address, secret, node, attempt

    def send(self, op: str, timeout: float = REQUEST_TIMEOUT_S, **fields) -> dict:
        if isinstance(fields.get("error"), str) and len(fields["error"]) > MAX_ERROR_CHARS:
            fields["error"] = "...\n" + fields["error"][-MAX_ERROR_CHARS:]
        msg = dict(fields, op=op, node=self.node, attempt=self.attempt)
        try:
            reply = request(self.address, self.secret, msg, timeout=timeout)
        except (OSError, ValueError) as err:   # AuthError is an OSError; BadMessage a ValueError
            raise DriverUnreachable(f"driver control server {self.address}: {err}") from err
        if "error" in reply:
            raise ValueError(f"the driver rejected {op!r}: {reply['error']}")
        return reply

    def wait_for(self, key: str, poll_s: float = 0.2, orphan_timeout_s: float = 60.0,
                 deadline_s: float | None = None) -> bool:
        """Poll until the driver's answer has ``key`` true; return False if the driver went away.

        ``deadline_s`` bounds the whole wait (raises TimeoutError); ``orphan_timeout_s`` bounds how long
        the driver may stay unreachable before we give up on it.
        """
        start = last_contact = time.monotonic()
        while True:
            try:
                if self.send("poll").get(key):
                    return True
                last_contact = time.monotonic()
            except DriverUnreachable:
                if time.monotonic() - last_contact > orphan_timeout_s:
                    return False
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise TimeoutError(f"waited {deadline_s:.0f} s for the driver to report {key!r}")
            time.sleep(poll_s)
