"""The DataFrame feed's coordinator (runs on the driver).

A small coordinator socket where the TF workers' receivers register; once every worker has, a thread
runs one Spark job per epoch that streams the DataFrame to them (``tfos_jobs.executor.feed``). Spark
hands each partition to Python as Arrow batches through ``df.select(columns).mapInArrow(sender)`` (no
per-row objects) -- except for a plain Parquet scan (:func:`parquet_scan_files`), whose files the
feeding tasks read themselves with pyarrow: Spark's Parquet -> rows -> Arrow path delivered 0.3x what
pyarrow reads on 2 cores, read directly the feed reaches about 0.9x a local pyarrow loop. After an
epoch's job the coordinator tells each receiver which partitions and how many rows it must have got
(``end``); after the last epoch ``finish``; on a failure ``abort`` with the reason.

TFoS's ``InputMode.SPARK`` pickles every row through a multiprocessing queue (about 9.5k rows/s here);
this feed keeps rows columnar end to end. ``mwms`` workers train straight from their receivers, the
data re-streamed every epoch; ``ps`` workers receive one pass into the staged format
(``tfos_jobs.tfnode.staging``) that the chief reads ``epochs`` times.

Feeding tasks need task slots beside the TF nodes (which hold one slot each for the whole training):
give executors ``spark.executor.cores >= 2`` or add one executor more than TF nodes.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import urllib.parse
import uuid

import hdfs_io
from typing import Iterator

from tfos_jobs.config import TrainConfig
from tfos_jobs.executor.feed import make_sender, read_file
from tfos_jobs.wire.auth import BadMessage, RequestServer, new_secret
from tfos_jobs.wire.feed import COORDINATOR_OPS, FeedError, FeedSpec, check_message, request

log = logging.getLogger("tfos_jobs")


def parquet_scan_files(df, columns) -> list[str] | None:
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
        secret = new_secret()
        self._server = RequestServer(host, secret, self._handle, name="feed coordinator").start()
        self.spec = FeedSpec(features=source.features, labels=source.labels, dtypes=source.dtypes(),
                             num_workers=num_workers, batch_size=batch_size,
                             coordinator=self._server.address, secret=secret,
                             max_batches_in_flight=source.max_batches_in_flight,
                             stall_timeout_s=source.stall_timeout_s)
        files = parquet_scan_files(source.df, self.spec.columns) if source.read_parquet_directly else None
        self.file_groups = _file_groups(files, feeding_slots or sc.defaultParallelism) if files else None
        self._thread = threading.Thread(target=self._run, name="tfos-feed", daemon=True)

    def _handle(self, msg):
        op = check_message(msg, "op", COORDINATOR_OPS, "feed coordinator")["op"]
        if op != "status" and not 0 <= msg["worker"] < self.spec.num_workers:
            raise BadMessage(f"feed coordinator: no worker {msg['worker']} in a feed of {self.spec.num_workers}")
        with self._registered:
            if op == "register":
                self._addresses[msg["worker"]] = msg["address"]
                self._registered.notify_all()
            elif op == "closed":
                self._closed_workers.add(msg["worker"])
            return {"ok": True, "error": self.error, "done": self.done.is_set(), "rows": self.stats["rows"],
                    "epochs_done": len(self.stats["epochs"])}

    def start(self) -> FeedDriver:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        """Cancel the feeding job (early termination or failure elsewhere) and release everything."""
        self._stop.set()
        with self._registered:
            self._registered.notify_all()
        if self._thread.is_alive():
            self.sc.cancelJobGroup(self._group)
            self._thread.join(timeout=timeout)
        self._server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the last epoch to be delivered; raise :class:`FeedError` if the feed failed."""
        self._thread.join(timeout)
        if self.error:
            raise FeedError(self.error)
        return self.stats

    @property
    def stopped_early(self) -> bool:
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
        sender = make_sender(self.spec, epoch, addresses)
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
            for report in sender(lambda schema: (b for uri in uris for b in read_file(uri, columns, schema))):
                yield from zip(*report.to_pydict().values())
        groups = self.file_groups
        return self.sc.parallelize(groups, len(groups)).mapPartitions(read_and_send).collect()

    def _tell(self, address, msg):
        return request(address, self.spec.secret, msg, timeout=self.source.stall_timeout_s)

    def _fail(self, err):
        self.error = str(err) if isinstance(err, FeedError) else f"the DataFrame feed failed: {err!r}\n" + \
            traceback.format_exc()
        log.error("%s", self.error)
        for address in list(self._addresses.values()):
            with contextlib.suppress(OSError, ValueError, ConnectionError):
                request(address, self.spec.secret, {"kind": "abort", "error": self.error}, timeout=5)
        if self.on_error:
            self.on_error(self.error)


def _file_groups(uris, slots):
    """One group of files per feeding task slot, balanced by bytes: a Spark task costs about 60 ms here,
    as much as reading 50k rows, so a task per file would spend a third of the epoch starting tasks."""
    infos = [hdfs_io.info(uri) for uri in uris]
    groups = [[f.uri for f in hdfs_io.shard_files(infos, max(1, slots), i)] for i in range(max(1, slots))]
    return [g for g in groups if g]


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


def free_task_slots(sc, num_nodes: int) -> int:
    """Task slots left beside the TF nodes (each holds one slot for the whole training)."""
    return sc.defaultParallelism - num_nodes


@contextlib.contextmanager
def start_feed(sc, source, config: TrainConfig, control) -> Iterator[FeedSpec]:
    """Around one runtime attempt: start a feed of ``source`` (a ``DataFrameSource``) and stop it
    afterwards. Yields the picklable :class:`FeedSpec`. A feed failure is put on the control channel as
    a ``failed`` event of node ``feed``, so the driver raises it like a node's failure."""
    scaling, loop = config.scaling, config.loop
    slots = free_task_slots(sc, scaling.num_nodes)
    if slots < 1:
        raise ValueError(f"the DataFrame feed needs at least one Spark task slot beside the {scaling.num_nodes} TF "
                         f"nodes, but the executors have {sc.defaultParallelism} in all: give executors "
                         "spark.executor.cores >= 2, or start one executor more than TF nodes")
    epochs = 1 if scaling.strategy == "ps" else max(1, int(round(loop.epochs)))
    host = control.address.rsplit(":", 1)[0]   # the interface the TF nodes already reach the driver on
    driver = FeedDriver(sc, source, scaling.num_workers, epochs, loop.batch_size, host=host, feeding_slots=slots,
                        on_error=lambda text: control.events.put(
                            {"op": "failed", "node": "feed", "error": text, "received": time.time()}))
    driver.start()
    try:
        yield driver.spec
    finally:
        driver.stop()


