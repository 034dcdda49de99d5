"""The DataFrame feed's receiver: runs in each TF worker process.

Accepts the senders' Arrow streams, puts record batches into a queue bounded by
``max_batches_in_flight`` (back-pressure goes through TCP to the Spark task), checks exactly-once per
epoch against the coordinator's ``end`` (a partition delivered twice or only in part raises), and
re-batches to exactly ``batch_size`` rows within an epoch. It hands out a ``tf.data.Dataset`` of
``(features dict, labels)`` batches that ends after the last epoch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
from typing import Iterator

from tfos_jobs.tfnode.datasets import split_labels
from tfos_jobs.wire import auth
from tfos_jobs.wire.feed import RECEIVER_KINDS, FeedClosed, FeedError, FeedSpec, check_message, request, route_to

log = logging.getLogger("tfos_jobs")
MAX_CONNECTIONS = 256   # senders are Spark tasks: a few per executor core


class FeedReceiver:
    """TF-worker side: receives Arrow streams for worker ``index`` into a bounded queue."""

    def __init__(self, spec: FeedSpec, index: int, host: str | None = None):
        self.spec, self.index = spec, index
        self._capacity = threading.Semaphore(spec.max_batches_in_flight)
        self._queue = queue.Queue()            # items: ("data", epoch, batch) | ("end", e) | ("finish",) | ("error", msg)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._complete = {}                    # (epoch, partition) -> rows
        self._partial = set()                  # (epoch, partition) being received or broken
        self._conns = set()
        self.rejected = 0                      # connections dropped: over the cap, unauthenticated, malformed
        self.in_flight = 0                     # data items queued, and their bytes
        self.in_flight_bytes = 0
        self.peak_in_flight = 0
        self.peak_in_flight_bytes = 0
        self.rows_out = 0
        host = host or route_to(spec.coordinator)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.5)
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept_loop, name=f"feed-recv-{index}", daemon=True)
        self._thread.start()

    # -- driver-facing
    def register(self) -> "FeedReceiver":
        """Tell the driver where to send this worker's share; the feed starts once every worker has.
        Idempotent: :meth:`record_batches` registers on its first pull when nobody did before, so a
        consumer that is still building its model does not hold Spark tasks blocked on a full queue."""
        if self._registered:
            return self
        reply = request(self.spec.coordinator, self.spec.secret,
                        {"op": "register", "worker": self.index, "address": self.address})
        if not reply.get("ok"):
            raise FeedError(f"feed coordinator refused worker {self.index}: {reply}")
        self._registered = True
        return self

    _registered = False

    def close(self) -> None:
        """Stop receiving. Tells the driver first, so that producers failing on the closed sockets read as
        an early stop, not as a feed failure."""
        if self._closed.is_set():
            return
        if not self._finished:  # first tell the driver, then close the sockets
            with contextlib.suppress(OSError, ValueError, ConnectionError):
                request(self.spec.coordinator, self.spec.secret, {"op": "closed", "worker": self.index}, timeout=5)
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop now, not at its poll
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    _finished = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- network side
    def _accept_loop(self):
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._conns) >= MAX_CONNECTIONS
                if not full:
                    self._conns.add(conn)
            if full:
                self.rejected += 1
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            with conn.makefile("rb", buffering=1 << 20) as rfile:
                side = auth.ServerSide(conn, rfile, self.spec.secret)
                header = self._authenticate(conn, side)
                if header is not None:
                    conn.settimeout(self.spec.stall_timeout_s)
                    self._dispatch(conn, rfile, side, header)
        except (OSError, ValueError, ConnectionError, FeedClosed):
            pass  # a producer that lost its connection fails its own task; the driver sees that
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _authenticate(self, conn, side):
        """The peer's first message, once it proved it holds the feed's secret, within the handshake
        deadline (a timer cuts a peer that trickles bytes); None (logged) for anything else."""
        conn.settimeout(auth.HANDSHAKE_TIMEOUT_S)
        timer = threading.Timer(auth.HANDSHAKE_TIMEOUT_S, _cut, args=(conn,))
        timer.start()
        try:
            return check_message(side.read_request(auth.LARGE_MESSAGE), "kind", RECEIVER_KINDS, "feed receiver")
        except (auth.AuthError, auth.BadMessage) as err:
            self.rejected += 1
            log.warning("feed receiver %d: rejected a connection: %s", self.index, err)
            return None
        finally:
            timer.cancel()

    def _dispatch(self, conn, rfile, side, header):
        kind = header["kind"]
        if kind == "data":
            self._receive(rfile, side, header["epoch"], header["partition"])
        elif kind == "end":
            side.reply(self._end_epoch(header["epoch"], header["expected"]))
        elif kind == "finish":
            self._finished = True
            side.reply({"ok": True})  # before the consumer can see it and close us
            self._queue.put(("finish",))
        elif kind == "abort":
            self._queue.put(("error", f"the driver aborted the feed: {header['error']}"))
            side.reply({"ok": True})

    def _receive(self, rfile, side, epoch, partition):
        import pyarrow as pa
        key = (epoch, partition)
        with self._lock:
            if key in self._complete:
                side.reply({"dup": self._complete[key]})   # e.g. a speculative task: nothing to send
                return
            if key in self._partial:
                msg = (f"worker {self.index}: partition {partition} of epoch {epoch} was sent again after a "
                       "partial delivery (a Spark task retry): exactly-once delivery cannot hold")
                self._queue.put(("error", msg))
                side.reply({"error": msg})
                return
            self._partial.add(key)
        side.reply({"ok": True})
        mac, rows = side.stream_mac(), 0
        for batch in pa.ipc.open_stream(mac.reader(rfile)):
            if batch.num_rows:
                self._put_data(epoch, batch)
                rows += batch.num_rows
        # An Arrow stream cut off between two batches (the feeding task died) reads like a complete one:
        # only the sender's trailer, written after the end of the stream and sealed with the stream's
        # HMAC, says the partition is whole and came from a holder of the secret. Without it the
        # partition stays partial, so a retry or the epoch's check fails the feed.
        trailer = auth.read_line(rfile, auth.HELLO_LIMIT)
        trailer = json.loads(trailer)
        if not isinstance(trailer, dict) or trailer.get("rows") != rows or not mac.check(rows, trailer.get("mac")):
            log.warning("feed receiver %d: partition %d of epoch %d ended without a valid trailer", self.index,
                        partition, epoch)
            return
        with self._lock:
            self._partial.discard(key)
            self._complete[key] = rows
        side.reply({"rows": rows})

    def _put_data(self, epoch, batch):
        while not self._capacity.acquire(timeout=0.5):
            if self._closed.is_set():
                raise FeedClosed()
        if self._closed.is_set():
            raise FeedClosed()
        with self._lock:
            self.in_flight += 1
            self.in_flight_bytes += batch.nbytes
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.peak_in_flight_bytes = max(self.peak_in_flight_bytes, self.in_flight_bytes)
        self._queue.put(("data", epoch, batch))

    def _end_epoch(self, epoch, expected):
        try:
            expected = {int(p): int(r) for p, r in expected.items()}
        except (TypeError, ValueError):
            return {"error": f"worker {self.index}: malformed expected counts for epoch {epoch}"}
        with self._lock:
            got = {p: r for (e, p), r in self._complete.items() if e == epoch}
            partial = sorted(p for (e, p) in self._partial if e == epoch)
        if got != expected or partial:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            wrong = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])
            msg = (f"worker {self.index}, epoch {epoch}: exactly-once check failed (missing partitions "
                   f"{missing}, unexpected {extra}, row counts differ for {wrong}, incomplete {partial})")
            self._queue.put(("error", msg))
            return {"error": msg}
        self._queue.put(("end", epoch))
        return {"ok": True, "rows": sum(got.values())}

    # -- consumer side
    def record_batches(self, size: int | None = None) -> Iterator:
        """Yield ``(epoch, RecordBatch)`` of exactly ``size`` rows (default ``batch_size``; the last of an
        epoch may be shorter) until the driver's ``finish``; raise :class:`FeedError` on an abort or a
        failed check."""
        import pyarrow as pa
        self.register()
        size = size or self.spec.batch_size
        pending, pending_rows, epoch = [], 0, None
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            kind = item[0]
            if kind == "data":
                _, epoch, batch = item
                with self._lock:
                    self.in_flight -= 1
                    self.in_flight_bytes -= batch.nbytes
                self._capacity.release()
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= size:
                    joined = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                    out, rest = joined.slice(0, size), joined.slice(size)
                    pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
                    self.rows_out += out.num_rows
                    yield epoch, out
            elif kind == "end":
                if pending_rows:
                    out = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                    self.rows_out += out.num_rows
                    yield item[1], out
                pending, pending_rows = [], 0
            elif kind == "finish":
                return
            else:
                raise FeedError(item[1])

    def numpy_batches(self, size: int | None = None) -> Iterator:
        """Yield ``(features dict, labels)`` of numpy arrays (``labels`` omitted when there are none)."""
        for _, batch in self.record_batches(size):
            yield split_labels(self.spec, _to_numpy(batch))

    def dataset(self):  # -> tf.data.Dataset
        """A ``tf.data.Dataset`` of ``(features dict, labels)`` batches of ``batch_size`` rows, finite (all
        epochs; only the very last batch may be shorter).

        Python hands tf.data chunks of several batches, which native ``rebatch`` cuts to size: each
        ``from_generator`` element costs a hop between TF's and Python's threads, about as much as
        converting the rows (halving those hops doubled a local pyarrow -> tf.data loop's rate here).
        The chunk holds half of ``max_batches_in_flight`` batches, so feed memory stays bounded.

        Autotuning is off: nothing here has parallelism to tune, and its model thread sleeps in doubling
        periods (10 ms, 20 ms, ... 5.12 s in all) that deleting the iterator waits out, which delayed the
        end of a 2.6 s feed to 5.1 s."""
        import tensorflow as tf
        size = self.spec.batch_size
        chunk = size * max(1, self.spec.max_batches_in_flight // 2)
        dataset = tf.data.Dataset.from_generator(lambda: self.numpy_batches(chunk),
                                                 output_signature=_signature(self.spec)).rebatch(size)
        return dataset.with_options(no_autotune())

    def stats(self) -> dict:
        return {"worker": self.index, "rows": self.rows_out, "peak_batches_in_flight": self.peak_in_flight,
                "peak_bytes_in_flight": self.peak_in_flight_bytes}


def no_autotune():  # -> tf.data.Options
    import tensorflow as tf
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _to_numpy(batch):
    out = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if column.null_count:
            raise FeedError(f"column {name!r} has null values: fill them in Spark (e.g. df.fillna) before feeding")
        out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _signature(spec):
    import tensorflow as tf
    return split_labels(spec, {name: tf.TensorSpec([None], tf.dtypes.as_dtype(spec.dtypes[name]), name=name)
                               for name in spec.columns})


def _cut(conn):
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
