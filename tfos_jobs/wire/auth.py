"""Peer authentication for the runtime's own sockets (control channel, feed coordinator, feed streams).

A per-job secret is created on the driver and reaches executors only inside the Spark task closure;
it never crosses our sockets. Every connection starts with an HMAC challenge-response in both
directions, as ``multiprocessing``'s authkey handshake does:

1. server -> client  ``{"nonce": S}``                           (fresh per connection)
2. client -> server  ``{"nonce": C, "body": B, "mac": HMAC(secret, "request", S, C, B)}``
3. server -> client  ``{"body": R, "mac": HMAC(secret, "reply", S, C, R)}``

A message without the secret is dropped before its body is parsed; a sniffed request or reply is
useless on another connection (its MAC covers both fresh nonces); lines are read with a size bound,
so a peer cannot make us buffer more than ``limit`` bytes; every read has a deadline. A data stream
that follows the handshake is covered by :class:`StreamMac`.

Request/reply servers run on one asyncio loop in a thread (:class:`RequestServer`): an idle
connection costs a few kilobytes, not a thread, so hundreds of them cannot crowd real nodes out.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import socket
from typing import Any, BinaryIO, Callable

from tfos_jobs.wire.server import LoopServer, PeerClosed, peer_of

log = logging.getLogger("tfos_jobs")

HELLO_LIMIT = 256            # the server's hello line
SMALL_MESSAGE = 64 << 10     # registration, polls, progress
LARGE_MESSAGE = 4 << 20      # a node's result or traceback, an epoch's expected partition counts
HANDSHAKE_TIMEOUT_S = 10.0


class AuthError(ConnectionError):
    """The peer did not prove it holds the job's secret (or replayed someone else's proof)."""


class BadMessage(ValueError):
    """A message that is authenticated but malformed: too long, not JSON, or failing its schema."""


def new_secret() -> str:
    return secrets.token_hex(32)


def _mac(secret: str, kind: bytes, *parts: bytes) -> str:
    mac = hmac.new(bytes.fromhex(secret), kind, hashlib.sha256)
    for part in parts:
        mac.update(b"\0" + part)
    return mac.hexdigest()


def _nonce() -> str:
    return secrets.token_hex(16)


def read_line(rfile: BinaryIO, limit: int) -> bytes:
    """One ``\\n``-terminated line of at most ``limit`` bytes (reads no more than that)."""
    line = rfile.readline(limit + 1)
    if not line:
        raise PeerClosed("peer closed the connection")
    if not line.endswith(b"\n"):
        raise BadMessage(f"message longer than {limit} bytes")
    return line


def _json_object(text: bytes | str, what: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as err:
        raise BadMessage(f"{what} is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadMessage(f"{what} is a JSON {type(obj).__name__}, not an object")
    return obj


def _field(obj: dict, name: str, what: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > 128:
        raise BadMessage(f"{what}: field {name!r} missing or not a short string")
    return value


def json_line(obj: dict) -> bytes:
    return (json.dumps(obj, default=float) + "\n").encode()


# -- the three handshake lines, as pure functions (shared by the sync and the asyncio ends)
def hello_line(server_nonce: str) -> bytes:
    return json_line({"nonce": server_nonce})


def request_line(secret: str, hello: bytes, msg: dict) -> tuple[bytes, str, str]:
    """The signed request for a server's ``hello``; returns (line, server nonce, client nonce)."""
    server_nonce = _field(_json_object(hello, "hello"), "nonce", "hello")
    client_nonce = _nonce()
    body = json.dumps(msg, default=float)
    mac = _mac(secret, b"request", server_nonce.encode(), client_nonce.encode(), body.encode())
    return json_line({"nonce": client_nonce, "body": body, "mac": mac}), server_nonce, client_nonce


def _open(secret: str, kind: bytes, envelope: dict, server_nonce: str, client_nonce: str, sender: str) -> dict:
    """The body of a signed ``envelope`` once its MAC is checked (constant time), parsed only then."""
    body, mac = envelope.get("body"), envelope.get("mac")
    if not isinstance(body, str) or not isinstance(mac, str):
        raise AuthError(f"{sender} sent no body or MAC")
    expected = _mac(secret, kind, server_nonce.encode(), client_nonce.encode(), body.encode())
    if not hmac.compare_digest(mac, expected):
        raise AuthError(f"{kind.decode()} MAC does not match: the {sender} does not hold the job's secret")
    return _json_object(body, f"{kind.decode()} body")


def open_request(secret: str, server_nonce: str, line: bytes) -> tuple[dict, str]:
    """Check a request line's MAC, then parse its body. Returns (message, client nonce)."""
    envelope = _json_object(line, "request")
    client_nonce = _field(envelope, "nonce", "request")
    return _open(secret, b"request", envelope, server_nonce, client_nonce, "peer"), client_nonce


def reply_line(secret: str, server_nonce: str, client_nonce: str, reply: dict) -> bytes:
    body = json.dumps(reply, default=float)
    mac = _mac(secret, b"reply", server_nonce.encode(), client_nonce.encode(), body.encode())
    return json_line({"body": body, "mac": mac})


def open_reply(secret: str, server_nonce: str, client_nonce: str, line: bytes) -> dict:
    return _open(secret, b"reply", _json_object(line, "reply"), server_nonce, client_nonce, "server")


class Session:
    """The client side of one authenticated connection (sync sockets)."""

    def __init__(self, address: str, secret: str, timeout: float, connect_timeout: float = 30.0):
        host, port = address.rsplit(":", 1)
        self.address, self.secret = address, secret
        self.sock = socket.create_connection((host, int(port)), timeout=min(timeout, connect_timeout))
        self.sock.settimeout(timeout)
        self.rfile = self.sock.makefile("rb", buffering=1 << 16)
        self.server_nonce = self.client_nonce = None

    def request(self, msg: dict, limit: int = LARGE_MESSAGE) -> dict:
        """Send the (one) request of this connection and return the server's verified reply."""
        line, self.server_nonce, self.client_nonce = request_line(self.secret, read_line(self.rfile, HELLO_LIMIT), msg)
        self.sock.sendall(line)
        return self.read_reply(limit)

    def read_reply(self, limit: int = SMALL_MESSAGE) -> dict:
        return open_reply(self.secret, self.server_nonce, self.client_nonce, read_line(self.rfile, limit))

    def stream_mac(self) -> "StreamMac":
        return StreamMac(self.secret, self.server_nonce, self.client_nonce)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(address: str, secret: str, msg: dict, timeout: float = 30.0, limit: int = LARGE_MESSAGE) -> dict:
    """One authenticated request and its verified reply on a fresh connection; every read is bounded
    by ``timeout``."""
    with Session(address, secret, timeout) as session:
        return session.request(msg, limit)


class ServerSide:
    """The server side of one authenticated connection on a sync socket (the feed receiver)."""

    def __init__(self, sock: socket.socket, rfile: BinaryIO, secret: str):
        self.sock, self.rfile, self.secret = sock, rfile, secret
        self.server_nonce, self.client_nonce = _nonce(), None

    def read_request(self, limit: int) -> dict:
        self.sock.sendall(hello_line(self.server_nonce))
        msg, self.client_nonce = open_request(self.secret, self.server_nonce, read_line(self.rfile, limit))
        return msg

    def reply(self, reply: dict) -> None:
        self.sock.sendall(reply_line(self.secret, self.server_nonce, self.client_nonce, reply))

    def stream_mac(self) -> "StreamMac":
        return StreamMac(self.secret, self.server_nonce, self.client_nonce)


class StreamMac:
    """An HMAC over the bytes of a data stream that follows a handshake (bound to its two nonces), so a
    stream altered or cut on the way fails its trailer check."""

    def __init__(self, secret: str, server_nonce: str, client_nonce: str):
        self._mac = hmac.new(bytes.fromhex(secret), b"stream\0" + server_nonce.encode() + b"\0"
                             + client_nonce.encode(), hashlib.sha256)

    def writer(self, wfile: BinaryIO) -> "_Tee":
        return _Tee(wfile, self._mac, write=True)

    def reader(self, rfile: BinaryIO) -> "_Tee":
        return _Tee(rfile, self._mac, write=False)

    def seal(self, rows: int) -> str:
        mac = self._mac.copy()
        mac.update(b"\0rows=%d" % rows)
        return mac.hexdigest()

    def check(self, rows: int, mac: Any) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.seal(rows), mac)


class _Tee:
    """A file wrapper feeding every byte written or read to the stream's MAC (pyarrow accepts it)."""
    closed = False

    def __init__(self, file, mac, write):
        self._file, self._mac = file, mac
        if write:
            self.write = self._write
        else:
            self.read = self._read

    def _write(self, data) -> int:
        self._mac.update(data)
        return self._file.write(data)

    def _read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._mac.update(data)
        return data

    def flush(self) -> None:
        self._file.flush()


class RequestServer(LoopServer):
    """A one-request-per-connection server of authenticated JSON messages.

    ``handle(msg)`` (called on the loop thread; keep it short) returns the reply dict, or raises
    :class:`BadMessage`, answered with ``{"error": ...}``. Unauthenticated or oversized requests are
    logged and the connection is closed without an answer.
    """

    def __init__(self, host: str, secret: str, handle: Callable[[dict], dict], *, name: str,
                 limit: int = SMALL_MESSAGE, max_connections: int = 1024, deadline_s: float = HANDSHAKE_TIMEOUT_S):
        self.secret, self._handle = secret, handle
        super().__init__(host, name=name, limit=limit, max_connections=max_connections, deadline_s=deadline_s)

    async def exchange(self, reader, writer):
        server_nonce = _nonce()
        writer.write(hello_line(server_nonce))
        await writer.drain()
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise PeerClosed("peer closed the connection")
        msg, client_nonce = open_request(self.secret, server_nonce, line)
        self.prove(writer)
        try:
            reply = self._handle(msg)
        except BadMessage as err:
            log.warning("%s: bad message from %s: %s", self.name, peer_of(writer), err)
            reply = {"error": str(err)}
        writer.write(reply_line(self.secret, server_nonce, client_nonce, reply))
        await writer.drain()


def check_fields(msg: dict, fields: dict, what: str, optional: dict | None = None) -> dict:
    """Schema check: each ``name: type`` (or tuple of types) in ``fields`` must be present with that type,
    each in ``optional`` may be absent (``bool`` is not accepted as an ``int``). Raises
    :class:`BadMessage` naming the field."""
    for name, kind in {**(optional or {}), **fields}.items():
        value = msg.get(name, _MISSING)
        if value is _MISSING:
            if name in fields:
                raise BadMessage(f"{what}: field {name!r} is missing")
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise BadMessage(f"{what}: field {name!r} is {type(value).__name__}, not "
                             + "/".join(k.__name__ for k in kinds))
    return msg


_MISSING = object()
