"""The driver's small TCP servers (control channel, feed coordinator, cluster formation), on one asyncio
loop thread each: an idle or slow connection costs a few kilobytes, not a thread, so hundreds of them
cannot crowd the real nodes out. Every connection has a deadline in all, lines and messages are
read with a size bound, and at most ``max_connections`` are open at once. When they are, a new
connection evicts the oldest one that has not yet proved itself (sent an authenticated or valid first
message), so a flood of idle connections delays no real peer; only when every open connection is
proven is the new one refused.
"""
from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger("tfos_jobs")


class PeerClosed(ConnectionError):
    """The peer closed the connection before a whole message arrived."""


class LoopServer:
    """Subclasses implement ``async exchange(reader, writer)``; raising ``ValueError`` or
    ``ConnectionError`` (which includes an authentication failure) counts as a rejected peer and is
    logged."""

    def __init__(self, host: str, *, name: str, limit: int, max_connections: int, deadline_s: float):
        self.name, self._limit, self._max, self._deadline = name, limit, max_connections, deadline_s
        self._open = 0
        self._unproven = {}     # writer -> None, oldest first
        self.rejected = 0
        # The loop runs in its own thread from the start and the server is made there: the caller's
        # thread may run an event loop of its own (a Jupyter kernel), which forbids run_until_complete.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tfos-{name}", daemon=True)
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._serve, host, 0, limit=limit + 1, backlog=128), self._loop).result(10)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self.address = "%s:%d" % self._server.sockets[0].getsockname()[:2]

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def start(self):
        """Kept for symmetry with ``stop``: the server serves from construction on."""
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    async def _shutdown(self):
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def prove(self, writer: asyncio.StreamWriter) -> None:
        """Mark a connection as a real peer's (no longer evicted by newcomers)."""
        self._unproven.pop(writer, None)

    async def _serve(self, reader, writer):
        if self._open >= self._max:
            self.rejected += 1
            if not self._unproven:
                writer.close()
                return
            oldest = next(iter(self._unproven))
            self._unproven.pop(oldest)
            oldest.transport.abort()
        self._open += 1
        self._unproven[writer] = None
        try:
            await asyncio.wait_for(self.exchange(reader, writer), self._deadline)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError, PeerClosed,
                ConnectionResetError, BrokenPipeError):
            pass
        except (ValueError, ConnectionError) as err:   # includes a line over the limit, a failed handshake
            self.rejected += 1
            log.warning("%s: rejected a connection from %s: %s", self.name, peer_of(writer), err)
        finally:
            self._open -= 1
            self._unproven.pop(writer, None)
            writer.close()


def peer_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return "%s:%s" % peer[:2] if peer else "?"
