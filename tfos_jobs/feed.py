"""Spark DataFrame -> TensorFlow feed: partitions travel to the TF workers as Arrow record batches.

TFoS's ``InputMode.SPARK`` pickles every row through a multiprocessing queue (about 9.5k rows/s here).
This feed keeps rows columnar end to end:

* **driver** (:class:`FeedDriver`): a small coordinator socket where receivers register; once every TF
  worker has, a thread runs one Spark job per epoch, ``df.select(columns).mapInArrow(sender)``, so Spark
  hands each partition to Python as Arrow batches (no per-row objects). After an epoch's job it tells
  each receiver which partitions and how many rows it must have got (``end``); after the last epoch,
  ``finish``; on a failure, ``abort`` with the reason.
* **sender** (a Spark task per partition, on any free task slot): opens one TCP connection to every TF
  worker's receiver and writes an Arrow IPC stream to each. Every slice of ``batch_size * workers`` rows
  is split evenly across *all* workers, so each worker gets the same number of rows (+-1 per slice)
  from every partition. That matters for MultiWorkerMirroredStrategy: the workers step in lockstep, and
  if one partition went to one worker only, that worker's full queue could block the only sender while
  another worker starves waiting for data: a deadlock under bounded memory. Split evenly, a sender
  blocked on a full worker means every worker has data, so training always progresses.
* **plain Parquet scans** (``spark.read.parquet(...)`` and column selections of it, see
  :func:`parquet_scan_files`): the feeding tasks read the files themselves with pyarrow (``hdfs_io``, so
  any storage URI) and send them the same way; Spark only schedules them, one task per free task slot
  with the files balanced by bytes. Spark's own path decodes Parquet into rows and converts the rows
  back to Arrow, which on 2 cores delivered 0.3x what pyarrow reads; read directly, the feed reaches
  about 0.9x a local pyarrow loop. Anything else (filters, computed columns, joins, a cached DataFrame)
  goes through ``mapInArrow``.
* **receiver** (:class:`FeedReceiver`, in each TF worker process): accepts the streams, puts record
  batches into a queue bounded by ``max_batches_in_flight`` (back-pressure goes through TCP to the
  Spark task), checks exactly-once per epoch against the driver's ``end`` (a partition delivered twice
  or only in part raises), and re-batches to exactly ``batch_size`` rows within an epoch. It exposes a
  ``tf.data.Dataset`` of ``(features dict, labels)`` batches, ending after the last epoch.

Strategies: ``mwms`` workers train straight from the receiver, the data re-streamed every epoch; TF's
``get_next_as_optional`` keeps their step counts equal when the shares differ by a batch at the end.
``ps`` workers cannot hand a Python-fed dataset to the chief (the dataset function runs on the remote
worker with native ops only), so each PS worker receives one pass into the runtime's staged-TFRecord
format on local disk (one record per batch, memory still bounded) and the chief reads it ``epochs``
times with native ops, exactly like a staged ``ParquetSource``.

Feeding tasks need task slots beside the TF nodes (which hold one slot each for the whole training):
give executors ``spark.executor.cores >= 2`` or add one executor more than TF nodes.
"""
import contextlib
import dataclasses
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass

from tfos_jobs.control import json_line_server

log = logging.getLogger("tfos_jobs")

CONNECT_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0

_SPARK_TO_NUMPY = {
    "FloatType": "float32", "DoubleType": "float64", "IntegerType": "int32", "LongType": "int64",
    "ShortType": "int16", "ByteType": "int8", "BooleanType": "bool",
}


class FeedError(RuntimeError):
    """The feed failed: a Spark feeding task, a receiver, or the exactly-once check."""


class FeedClosed(Exception):
    """The receiver was closed while a producer was still sending (early stop)."""


# ----------------------------------------------------------------------------------- specs


@dataclass
class DataFrameSource:
    """Train on a Spark DataFrame directly: ``features`` scalar numeric columns (a dict of ``[batch]``
    tensors for the model), ``labels`` one or more label columns.

    ``max_batches_in_flight``: batches each TF worker buffers (the bound on its feed memory).
    ``stall_timeout_s``: a feeding task that cannot send for this long fails the job (a stuck consumer).
    ``read_parquet_directly``: when ``df`` is a plain Parquet scan (see :func:`parquet_scan_files`), the
    feeding tasks read its files with pyarrow instead of taking Spark's Parquet -> rows -> Arrow
    conversion, which is the feed's bottleneck (about 3x slower than pyarrow on the same files here).
    """
    df: object
    features: tuple
    labels: tuple = ()
    max_batches_in_flight: int = 8
    stall_timeout_s: float = 300.0
    register_timeout_s: float = 300.0
    read_parquet_directly: bool = True

    def __post_init__(self):
        self.features = tuple(self.features)
        self.labels = (self.labels,) if isinstance(self.labels, str) else tuple(self.labels)
        if not self.features:
            raise ValueError("DataFrameSource: no feature columns given")
        if self.max_batches_in_flight < 2:
            raise ValueError("DataFrameSource: max_batches_in_flight must be at least 2")

    @property
    def columns(self):
        return self.features + self.labels

    def dtypes(self):
        """Column -> numpy dtype name, from the DataFrame's schema (no rows are read)."""
        fields = {f.name: f for f in self.df.schema.fields}
        missing = [c for c in self.columns if c not in fields]
        if missing:
            raise ValueError(f"DataFrameSource: missing column(s) {missing}; the DataFrame has {list(fields)}")
        out = {}
        for name in self.columns:
            kind = type(fields[name].dataType).__name__
            if kind not in _SPARK_TO_NUMPY:
                raise ValueError(f"DataFrameSource: column {name!r} is {kind}; the feed takes numeric scalar "
                                 f"columns ({', '.join(_SPARK_TO_NUMPY)}): index or hash it in Spark first")
            out[name] = _SPARK_TO_NUMPY[kind]
        return out

    def plan(self):
        from tfos_jobs.inputs import DataPlan
        return DataPlan(files=(), num_rows=0, dtypes=self.dtypes(), file_rows={})


@dataclass
class FeedSpec:
    """The picklable side of a feed, sent to every TF worker (stands in for ``spec.source``)."""
    features: tuple
    labels: tuple
    dtypes: dict
    num_workers: int
    batch_size: int
    coordinator: str            # host:port of the driver's FeedDriver
    token: str
    max_batches_in_flight: int = 8
    stall_timeout_s: float = 300.0
    is_feed: bool = True

    @property
    def columns(self):
        return self.features + self.labels

    def arrow_schema(self):
        import numpy as np
        import pyarrow as pa
        return pa.schema([pa.field(c, pa.from_numpy_dtype(np.dtype(self.dtypes[c]))) for c in self.columns])


def parquet_scan_files(df, columns):
    """The data files behind ``df.select(columns)`` when that is a plain Parquet scan, else ``None``.

    Plain means the optimized plan is column references over one Parquet relation with no partition
    columns: no filter, no computed column, no limit, no repartition. Reading those files with pyarrow
    gives exactly the rows and columns Spark would produce, in Spark's column types (cast per batch)."""
    plan = df.select(*columns)._jdf.queryExecution().optimizedPlan()
    node = plan
    while _simple_name(node) == "Project":
        exprs = node.projectList()
        if any(_simple_name(exprs.apply(i)) != "AttributeReference" for i in range(exprs.size())):
            return None
        node = node.child()
    if _simple_name(node) != "LogicalRelation":
        return None
    relation = node.relation()
    if _simple_name(relation) != "HadoopFsRelation" or _simple_name(relation.fileFormat()) != "ParquetFileFormat":
        return None
    if relation.partitionSchema().size():
        return None
    return sorted(urllib.parse.unquote(uri) for uri in df.inputFiles())   # Spark's URIs are %-encoded


def _simple_name(java_object):
    return java_object.getClass().getSimpleName()


def is_feed(source):
    return getattr(source, "is_feed", False) or isinstance(source, DataFrameSource)


# ----------------------------------------------------------------------------------- wire


def _send_json(sock, obj):
    sock.sendall((json.dumps(obj) + "\n").encode())


def _recv_json(rfile):
    line = rfile.readline()
    if not line:
        raise ConnectionError("peer closed the connection")
    return json.loads(line)


def _request(address, msg, timeout=REQUEST_TIMEOUT_S):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=min(timeout, CONNECT_TIMEOUT_S)) as sock:
        sock.settimeout(timeout)
        _send_json(sock, msg)
        with sock.makefile("rb") as rfile:
            return _recv_json(rfile)


# ----------------------------------------------------------------------------------- receiver


class FeedReceiver:
    """TF-worker side: receives Arrow streams for worker ``index`` into a bounded queue."""

    def __init__(self, spec, index, host=None):
        self.spec, self.index = spec, index
        self._capacity = threading.Semaphore(spec.max_batches_in_flight)
        self._queue = queue.Queue()            # items: ("data", epoch, batch) | ("end", e) | ("finish",) | ("error", msg)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._complete = {}                    # (epoch, partition) -> rows
        self._partial = set()                  # (epoch, partition) being received or broken
        self._conns = set()
        self.in_flight = 0                     # data items queued, and their bytes
        self.in_flight_bytes = 0
        self.peak_in_flight = 0
        self.peak_in_flight_bytes = 0
        self.rows_out = 0
        host = host or _route_to(spec.coordinator)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.5)
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept_loop, name=f"feed-recv-{index}", daemon=True)
        self._thread.start()

    # -- driver-facing
    def register(self):
        """Tell the driver where to send this worker's share; the feed starts once every worker has.
        Idempotent: :meth:`record_batches` registers on its first pull when nobody did before, so a
        consumer that is still building its model does not hold Spark tasks blocked on a full queue."""
        if self._registered:
            return self
        reply = _request(self.spec.coordinator, {"op": "register", "token": self.spec.token,
                                                 "worker": self.index, "address": self.address})
        if not reply.get("ok"):
            raise FeedError(f"feed coordinator refused worker {self.index}: {reply}")
        self._registered = True
        return self

    _registered = False

    def close(self):
        """Stop receiving. Tells the driver first, so that producers failing on the closed sockets read as
        an early stop, not as a feed failure."""
        if self._closed.is_set():
            return
        if not self._finished:  # first tell the driver, then close the sockets
            with contextlib.suppress(OSError, ValueError, ConnectionError):
                _request(self.spec.coordinator, {"op": "closed", "token": self.spec.token, "worker": self.index},
                         timeout=5)
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
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with self._lock:
            self._conns.add(conn)
        try:
            conn.settimeout(self.spec.stall_timeout_s)
            with conn.makefile("rb", buffering=1 << 20) as rfile:
                header = _recv_json(rfile)
                if header.get("token") != self.spec.token:
                    return
                kind = header.get("kind")
                if kind == "data":
                    self._receive(conn, rfile, header["epoch"], header["partition"])
                elif kind == "end":
                    _send_json(conn, self._end_epoch(header["epoch"], header["expected"]))
                elif kind == "finish":
                    self._finished = True
                    _send_json(conn, {"ok": True})  # before the consumer can see it and close us
                    self._queue.put(("finish",))
                elif kind == "abort":
                    self._queue.put(("error", f"the driver aborted the feed: {header.get('error')}"))
                    _send_json(conn, {"ok": True})
        except (OSError, ValueError, ConnectionError, FeedClosed):
            pass  # a producer that lost its connection fails its own task; the driver sees that
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _receive(self, conn, rfile, epoch, partition):
        import pyarrow as pa
        key = (epoch, partition)
        with self._lock:
            if key in self._complete:
                _send_json(conn, {"dup": self._complete[key]})   # e.g. a speculative task: nothing to send
                return
            if key in self._partial:
                msg = (f"worker {self.index}: partition {partition} of epoch {epoch} was sent again after a "
                       "partial delivery (a Spark task retry): exactly-once delivery cannot hold")
                self._queue.put(("error", msg))
                _send_json(conn, {"error": msg})
                return
            self._partial.add(key)
        _send_json(conn, {"ok": True})
        rows = 0
        for batch in pa.ipc.open_stream(rfile):
            if batch.num_rows:
                self._put_data(epoch, batch)
                rows += batch.num_rows
        # An Arrow stream cut off between two batches (the feeding task died) reads like a complete one:
        # only the sender's trailer, written after the end of the stream, says the partition is whole.
        # Without it the partition stays partial, so a retry or the epoch's check fails the feed.
        if _recv_json(rfile).get("rows") != rows:
            return
        with self._lock:
            self._partial.discard(key)
            self._complete[key] = rows
        _send_json(conn, {"rows": rows})

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
        expected = {int(p): int(r) for p, r in expected.items()}
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
    def record_batches(self, size=None):
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

    def numpy_batches(self, size=None):
        """Yield ``(features dict, labels)`` of numpy arrays (``labels`` omitted when there are none)."""
        for _, batch in self.record_batches(size):
            yield _split(self.spec, _to_numpy(batch))

    def dataset(self):
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

    def stats(self):
        return {"worker": self.index, "rows": self.rows_out, "peak_batches_in_flight": self.peak_in_flight,
                "peak_bytes_in_flight": self.peak_in_flight_bytes}


def no_autotune():
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


def _split(spec, columns):
    features = {name: columns[name] for name in spec.features}
    if not spec.labels:
        return features
    if len(spec.labels) == 1:
        return features, columns[spec.labels[0]]
    return features, {name: columns[name] for name in spec.labels}


def _signature(spec):
    import tensorflow as tf

    def one(name):
        return tf.TensorSpec([None], tf.dtypes.as_dtype(spec.dtypes[name]), name=name)
    features = {name: one(name) for name in spec.features}
    if not spec.labels:
        return features
    if len(spec.labels) == 1:
        return features, one(spec.labels[0])
    return features, {name: one(name) for name in spec.labels}


def _route_to(address):
    """This host's address on the interface that reaches ``address`` (the driver)."""
    host, port = address.rsplit(":", 1)
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, int(port)))
        return probe.getsockname()[0]


# ----------------------------------------------------------------------------------- sender


def _make_sender(spec, epoch, addresses):
    """The mapInArrow function of one epoch's feeding job (runs in Spark's Python workers)."""
    token, n, size = spec.token, len(addresses), spec.batch_size
    stall, schema_bytes = spec.stall_timeout_s, spec.arrow_schema().serialize().to_pybytes()

    def send_partition(batches):
        import pyarrow as pa
        from pyspark import TaskContext
        schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        partition = TaskContext.get().partitionId()
        if callable(batches):      # a direct Parquet read, started once the schema is known
            batches = batches(schema)
        links = []
        try:
            for worker, address in enumerate(addresses):
                links.append(_Link(worker, address, token, epoch, partition, schema, stall))
            step = size * n
            for batch in batches:
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
                for start in range(0, batch.num_rows, step):
                    piece = batch.slice(start, step)
                    rows = piece.num_rows
                    # rotate which worker gets the larger share of an uneven split
                    for j in range(n):
                        lo, hi = j * rows // n, (j + 1) * rows // n
                        if hi > lo:
                            links[(j + partition) % n].write(piece.slice(lo, hi - lo))
            for link in links:      # end every stream before waiting for any acknowledgement
                link.end()
            counts = [link.ack() for link in links]
        finally:
            for link in links:
                link.close()
        yield pa.RecordBatch.from_pydict({"partition": [partition] * n, "worker": list(range(n)),
                                          "rows": counts},
                                         schema=pa.schema([("partition", pa.int32()), ("worker", pa.int32()),
                                                           ("rows", pa.int64())]))
    return send_partition


class _Link:
    """One feeding task's Arrow stream to one receiver."""

    def __init__(self, worker, address, token, epoch, partition, schema, stall_timeout_s):
        import pyarrow as pa
        host, port = address.rsplit(":", 1)
        self.worker, self.address, self.rows, self.writer = worker, address, 0, None
        self.sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
        self.sock.settimeout(stall_timeout_s)
        _send_json(self.sock, {"token": token, "kind": "data", "epoch": epoch, "partition": partition})
        self.rfile = self.sock.makefile("rb")
        reply = _recv_json(self.rfile)
        if "error" in reply:
            raise FeedError(reply["error"])
        self.dup = reply.get("dup")
        if self.dup is None:
            self.wfile = self.sock.makefile("wb", buffering=1 << 20)
            self.writer = pa.ipc.new_stream(self.wfile, schema)

    def write(self, batch):
        if self.writer is not None:
            self.writer.write_batch(batch)
            # Flush every piece: buffered pieces for one worker while another's queue is full would
            # break the even split and could deadlock lockstep (MWMS) consumers.
            self.wfile.flush()
            self.rows += batch.num_rows

    def end(self):
        if self.writer is not None:
            self.writer.close()
            self.wfile.write((json.dumps({"rows": self.rows}) + "\n").encode())   # the stream is whole
            self.wfile.flush()

    def ack(self):
        if self.writer is None:
            return self.dup
        ack = _recv_json(self.rfile)
        if ack.get("rows") != self.rows:
            raise FeedError(f"worker {self.worker} at {self.address} acknowledged {ack} after {self.rows} rows")
        return self.rows

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


# ----------------------------------------------------------------------------------- driver


class FeedDriver:
    """Driver side of one feed: coordinator socket, then one Spark feeding job per epoch in a thread.

    ``error`` holds the reason once the feed failed (``None`` otherwise); ``on_error(text)`` is called
    once with it. ``stop()`` cancels whatever is still running and is safe to call at any time.
    """

    def __init__(self, sc, source, num_workers, epochs, batch_size, host="127.0.0.1", on_error=None,
                 feeding_slots=None):
        self.sc, self.source, self.epochs = sc, source, int(epochs)
        if self.epochs < 1:
            raise ValueError(f"the feed needs at least one epoch, not {epochs}")
        self.on_error = on_error
        self.error = None
        self.done = threading.Event()
        self.stats = {"epochs": [], "rows": 0}
        self._stop = threading.Event()
        self._addresses = {}
        self._closed_workers = set()
        self._registered = threading.Condition()
        self._group = f"tfos-feed-{uuid.uuid4().hex[:10]}"
        token = secrets.token_hex(16)
        self._tcp, self._server_thread = json_line_server(host, token, self._handle)
        self._server_thread.start()
        self.spec = FeedSpec(features=source.features, labels=source.labels, dtypes=source.dtypes(),
                             num_workers=num_workers, batch_size=batch_size,
                             coordinator=f"{host}:{self._tcp.server_address[1]}", token=token,
                             max_batches_in_flight=source.max_batches_in_flight,
                             stall_timeout_s=source.stall_timeout_s)
        files = parquet_scan_files(source.df, self.spec.columns) if source.read_parquet_directly else None
        self.file_groups = _file_groups(files, feeding_slots or sc.defaultParallelism) if files else None
        self._thread = threading.Thread(target=self._run, name="tfos-feed", daemon=True)

    def _handle(self, msg):
        op = msg.get("op")
        with self._registered:
            if op == "register":
                self._addresses[int(msg["worker"])] = msg["address"]
                self._registered.notify_all()
            elif op == "closed":
                self._closed_workers.add(int(msg["worker"]))
            return {"ok": True, "error": self.error, "done": self.done.is_set(), "rows": self.stats["rows"],
                    "epochs_done": len(self.stats["epochs"])}

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout=60):
        """Cancel the feeding job (early termination or failure elsewhere) and release everything."""
        self._stop.set()
        with self._registered:
            self._registered.notify_all()
        if self._thread.is_alive():
            self.sc.cancelJobGroup(self._group)
            self._thread.join(timeout=timeout)
        self._tcp.shutdown()
        self._tcp.server_close()
        self._server_thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait(self, timeout=None):
        """Wait for the last epoch to be delivered; raise :class:`FeedError` if the feed failed."""
        self._thread.join(timeout)
        if self.error:
            raise FeedError(self.error)
        return self.stats

    @property
    def stopped_early(self):
        return self._stop.is_set() or bool(self._closed_workers)

    # -- the feeding thread
    def _run(self):
        try:
            addresses = self._wait_for_receivers()
            if addresses is None:
                return
            self.stats["started_at"] = time.time()
            for epoch in range(self.epochs):
                if self._stop.is_set():
                    return
                begun = time.monotonic()
                counts = self._feed_epoch(epoch, addresses)
                if counts is None:
                    return
                for worker, address in enumerate(addresses):
                    expected = {str(p): r for (p, w), r in counts.items() if w == worker}
                    reply = self._tell(address, {"kind": "end", "epoch": epoch, "expected": expected})
                    if reply.get("error"):
                        raise FeedError(reply["error"])
                rows = sum(counts.values())
                self.stats["epochs"].append({"epoch": epoch, "rows": rows,
                                             "partitions": len({p for p, _ in counts}),
                                             "seconds": round(time.monotonic() - begun, 2)})
                self.stats["rows"] += rows
            for address in addresses:
                self._tell(address, {"kind": "finish"})
            self.stats["finished_at"] = time.time()
            self.done.set()
        except BaseException as err:  # noqa: BLE001 - every failure becomes the feed's error
            # A worker that stops early or dies breaks its producers' connections: give its "closed"
            # notice (or the node's own failure report, which says more) a moment to arrive first.
            self._stop.wait(2.0)
            if self.stopped_early:
                return
            self._fail(err)

    def _wait_for_receivers(self):
        deadline = time.monotonic() + self.source.register_timeout_s
        n = self.spec.num_workers
        with self._registered:
            while len(self._addresses) < n:
                if self._stop.is_set():
                    return None
                if time.monotonic() > deadline:
                    raise FeedError(f"only {len(self._addresses)} of {n} TF workers registered a feed receiver "
                                    f"within {self.source.register_timeout_s:.0f} s")
                self._registered.wait(0.2)
            return [self._addresses[i] for i in range(n)]

    def _feed_epoch(self, epoch, addresses):
        sender = _make_sender(self.spec, epoch, addresses)
        self.sc.setJobGroup(self._group, f"tfos feed epoch {epoch}", interruptOnCancel=True)
        try:
            if self.file_groups:
                reports = self._send_files(sender)
            else:
                reports = self._send_rows(sender)
        except Exception as err:  # noqa: BLE001
            if self.stopped_early:
                return None
            raise FeedError(f"the Spark feeding job for epoch {epoch} failed: {_spark_reason(err)}") from err
        counts = {}
        for p, w, r in reports:
            if (p, w) in counts:
                raise FeedError(f"partition {p} reported twice for worker {w} in epoch {epoch}")
            counts[(p, w)] = r
        return counts

    def _send_rows(self, sender):
        """Spark's own Arrow path: each partition of the DataFrame is one feeding task."""
        import pyspark.sql.types as T
        schema = T.StructType([T.StructField("partition", T.IntegerType()), T.StructField("worker", T.IntegerType()),
                               T.StructField("rows", T.LongType())])
        result = self.source.df.select(*self.spec.columns).mapInArrow(sender, schema).toArrow()
        return zip(*(result.column(c).to_pylist() for c in ("partition", "worker", "rows")))

    def _send_files(self, sender):
        """A plain Parquet scan: each group of files is one feeding task, read with pyarrow in the task."""
        columns = list(self.spec.columns)

        def read_and_send(groups):
            (uris,) = list(groups)   # read the input to its end, or Spark will not reuse this Python worker
            for report in sender(lambda schema: (b for uri in uris for b in _read_file(uri, columns, schema))):
                yield from zip(*report.to_pydict().values())
        groups = self.file_groups
        return self.sc.parallelize(groups, len(groups)).mapPartitions(read_and_send).collect()

    def _tell(self, address, msg):
        return _request(address, dict(msg, token=self.spec.token), timeout=self.source.stall_timeout_s)

    def _fail(self, err):
        self.error = str(err) if isinstance(err, FeedError) else f"the DataFrame feed failed: {err!r}\n" + \
            traceback.format_exc()
        log.error("%s", self.error)
        for address in list(self._addresses.values()):
            with contextlib.suppress(OSError, ValueError, ConnectionError):
                _request(address, {"kind": "abort", "error": self.error, "token": self.spec.token}, timeout=5)
        if self.on_error:
            self.on_error(self.error)


def _file_groups(uris, slots):
    """One group of files per feeding task slot, balanced by bytes: a Spark task costs about 60 ms here,
    as much as reading 50k rows, so a task per file would spend a third of the epoch starting tasks."""
    import hdfs_io
    infos = [hdfs_io.info(uri) for uri in uris]
    groups = [[f.uri for f in hdfs_io.shard_files(infos, max(1, slots), i)] for i in range(max(1, slots))]
    return [g for g in groups if g]


def _read_file(uri, columns, schema, batch_rows=65536):
    """A feeding task's Parquet file as record batches of ``schema`` (Spark's column types)."""
    import hdfs_io
    for batch in hdfs_io.iter_record_batches([uri], columns, batch_rows):
        try:
            yield batch.select(columns).cast(schema)
        except (ValueError, TypeError) as err:   # pyarrow raises ArrowInvalid, a ValueError
            raise FeedError(f"{uri}: its columns {batch.schema} do not convert to the DataFrame's "
                            f"{schema}: {err}") from err


def _spark_reason(err):
    """The Python exception inside a Spark job failure, without the JVM stack."""
    text = str(err)
    for marker in ("Traceback (most recent call last)",):
        at = text.find(marker)
        if at >= 0:
            tail = text[at:]
            lines = [l for l in tail.splitlines() if l.strip()]
            # the last non-JVM line of the Python traceback names the error
            py = [l for l in lines if not l.lstrip().startswith("at ")]
            return "\n".join(py[-12:])
    return text[:4000]


# ----------------------------------------------------------------------------------- runtime hooks


def free_task_slots(sc, num_nodes):
    """Task slots left beside the TF nodes (each holds one slot for the whole training)."""
    return sc.defaultParallelism - num_nodes


@contextlib.contextmanager
def attempt(sc, data, spec, control, host):
    """Around one runtime attempt: start a feed for a :class:`DataFrameSource` and stop it afterwards.

    Yields the NodeSpec to run with (its ``source`` replaced by the picklable :class:`FeedSpec`); for any
    other source yields ``spec`` unchanged. A feed failure is put on the control channel as a ``failed``
    event of node ``feed``, so the driver raises it like a node's failure.
    """
    if not isinstance(data, DataFrameSource):
        yield spec
        return
    config = spec.config
    slots = free_task_slots(sc, config.num_nodes)
    if slots < 1:
        raise ValueError(f"the DataFrame feed needs at least one Spark task slot beside the {config.num_nodes} TF "
                         f"nodes, but the executors have {sc.defaultParallelism} in all: give executors "
                         "spark.executor.cores >= 2, or start one executor more than TF nodes")
    epochs = 1 if config.strategy == "ps" else max(1, int(round(config.epochs)))
    driver = FeedDriver(sc, data, config.num_workers, epochs, config.batch_size, host=host, feeding_slots=slots,
                        on_error=lambda text: control.events.put(
                            {"op": "failed", "node": "feed", "error": text, "received": time.time()}))
    driver.start()
    try:
        yield dataclasses.replace(spec, source=driver.spec)
    finally:
        driver.stop()


def worker_index(spec):
    """Which receiver a TF node is (None for nodes that take no data)."""
    return spec.data_shard_index


def stage(spec):
    """PS worker: receive one pass of the feed into ``spec.stage_dir`` in the staged-TFRecord format of
    :func:`tfos_jobs.inputs.stage_shard` (one record per batch, raw column bytes); return its rows."""
    import tensorflow as tf
    os.makedirs(spec.stage_dir, exist_ok=True)
    path = os.path.join(spec.stage_dir, "part-0.tfrecord")
    rows = 0
    with FeedReceiver(spec.source, worker_index(spec)) as receiver:
        receiver.register()
        with tf.io.TFRecordWriter(path + ".tmp") as writer:
            for _, batch in receiver.record_batches():
                columns = _to_numpy(batch)
                feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[columns[name].tobytes()]))
                           for name in spec.source.columns}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                rows += batch.num_rows
    os.replace(path + ".tmp", path)
    return rows


def fed_rows(spec):
    """Chief (PS): rows the feed delivered in its one pass, asked from the driver."""
    reply = _request(spec.source.coordinator, {"op": "status", "token": spec.source.token})
    if reply.get("error"):
        raise FeedError(reply["error"])
    return int(reply["rows"])


def train_multi_worker(spec, control):
    """MWMS training straight from the feed: every worker (chief included) has a receiver; the loop runs
    until the feed's last epoch is consumed on all workers (``get_next_as_optional`` keeps the step
    counts equal) or ``config.steps`` is reached (early stop: the receivers close, the driver cancels)."""
    import tensorflow as tf
    from tfos_jobs import loops
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model, optimizer, step, checkpoint = loops._model_state(spec, strategy)
    is_chief = spec.role == "chief"
    checkpoints = loops._checkpoints(spec, checkpoint, writer=is_chief)
    checkpoints.restore_latest()
    receiver = FeedReceiver(spec.source, worker_index(spec)).register()
    print(f"[feed] {spec.node}: receiver {receiver.address} registered as worker {receiver.index}", flush=True)
    try:
        iterator = iter(strategy.distribute_datasets_from_function(lambda _ctx: receiver.dataset().prefetch(1)))

        @tf.function
        def train_step(features, labels):
            per_replica = strategy.run(
                lambda f, l: loops._apply_gradients(spec, model, optimizer, f, l, spec.global_batch),
                args=(features, labels))
            step.assign_add(1)
            return strategy.reduce("SUM", per_replica, axis=None)

        limit = spec.config.steps
        spec.total_steps = limit
        progress = loops.Progress(spec, control, int(step.numpy())) if is_chief else None
        loss, rate, current = float("nan"), 0.0, int(step.numpy())
        while not (limit and current >= limit):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            loss = train_step(*optional.get_value())
            current = int(step.numpy())
            if is_chief and current % spec.config.log_every == 0:
                rate = progress.report(current, loss)
            if current % spec.config.checkpoint_every == 0:
                checkpoints.save(current)
    finally:
        receiver.close()
    spec.total_steps = current
    if current % spec.config.checkpoint_every:
        checkpoints.save(current)
    if not is_chief:
        return {"steps": current, "feed": receiver.stats()}
    if current:
        rate = progress.report(current, loss)
    result = loops._finish_on_chief(spec, model, progress, loss, rate)
    result["metrics"]["feed_rows"] = receiver.rows_out
    return result
