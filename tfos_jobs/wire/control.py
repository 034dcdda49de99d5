"""The control channel between the driver and the TF node processes.

TFoS's own lifecycle polls Spark's status tracker every 5 s and has no way to tell a parameter-server
worker that the chief is done. Here each TF process talks to a small TCP server on the driver instead:
it reports ``ready``/``progress``/``done``/``failed`` and polls for ``stop``. One short JSON request
per connection, every socket with a timeout, so neither side can wait forever on the other: a node
that cannot reach the driver for ``orphan_timeout_s`` exits on its own.
"""
from __future__ import annotations

import json
import queue
import secrets
import socket
import socketserver
import threading
import time
from typing import Callable

REQUEST_TIMEOUT_S = 10.0


class DriverUnreachable(ConnectionError):
    """A TF node could not reach the driver's control server."""


def json_line_server(host: str, token: str, handle: Callable[[dict], dict]) -> tuple:
    """A threaded TCP server on an ephemeral port: one JSON request line per connection, answered with
    ``handle(msg)`` as one JSON line; requests without ``token`` are dropped. Returns the server and
    the (not yet started) thread that serves it."""

    class Handler(socketserver.StreamRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def handle(self):
            try:
                msg = json.loads(self.rfile.readline())
            except (ValueError, OSError):
                return
            if msg.pop("token", None) != token:
                return
            self.wfile.write((json.dumps(handle(msg)) + "\n").encode())

    tcp = socketserver.ThreadingTCPServer((host, 0), Handler, bind_and_activate=False)
    tcp.daemon_threads = True
    tcp.allow_reuse_address = True
    tcp.server_bind()
    tcp.server_activate()
    return tcp, threading.Thread(target=tcp.serve_forever, args=(0.2,), daemon=True)


class ControlServer:
    """Driver side: collects node events, answers polls. Thread-safe; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1"):
        self.token = secrets.token_hex(16)
        self.events = queue.Queue()
        self._ready = set()
        self._stop = False
        self._lock = threading.Lock()
        self._expected_ready = None
        self.attempt = None
        self._tcp, self._thread = json_line_server(host, self.token, self._handle)

    @property
    def address(self) -> str:
        host, port = self._tcp.server_address[:2]
        return f"{host}:{port}"

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
        while not self.events.empty():
            self.events.get_nowait()

    def _handle(self, msg):
        op = msg.get("op")
        if self.attempt is not None and msg.get("attempt") != self.attempt:
            return {"stop": True, "all_ready": False}
        if op == "ready":
            with self._lock:
                self._ready.add(msg.get("node"))
        if op != "poll":
            self.events.put(dict(msg, received=time.time()))
        with self._lock:
            all_ready = self._expected_ready is not None and len(self._ready) >= self._expected_ready
            return {"stop": self._stop, "all_ready": all_ready}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._tcp.shutdown()
        self._tcp.server_close()
        self._thread.join(timeout=5)


class ControlClient:
    """Node side: sends events to the driver; every call is bounded by a timeout."""

    def __init__(self, address: str, token: str, node: str, attempt: int | None = None):
        host, port = address.rsplit(":", 1)
        self.address = (host, int(port))
        self.token = token
        self.node = node
        self.attempt = attempt

    def send(self, op: str, timeout: float = REQUEST_TIMEOUT_S, **fields) -> dict:
        msg = dict(fields, op=op, node=self.node, token=self.token, attempt=self.attempt)
        try:
            with socket.create_connection(self.address, timeout=timeout) as sock:
                sock.settimeout(timeout)
                sock.sendall((json.dumps(msg, default=float) + "\n").encode())
                data = sock.makefile("rb").readline()
        except OSError as err:
            raise DriverUnreachable(f"driver control server {self.address[0]}:{self.address[1]}: {err}") from err
        if not data:
            raise DriverUnreachable(f"driver control server {self.address[0]}:{self.address[1]} closed the connection")
        return json.loads(data)

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
