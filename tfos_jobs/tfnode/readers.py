"""The TF-process side of a source: what an MWMS worker trains from and what a PS worker stages.

A reader is built on the driver by ``Source.open`` (``tfos_jobs.sources``), pickled to every TF node,
and used there by the loops without knowing which source it came from:

* ``worker_input(node)`` (MWMS workers): a context manager yielding :class:`WorkerInput`, this worker's
  dataset function and whether the data ends by itself (the feed) or repeats (Parquet);
* ``stage(node)`` (PS workers): write this worker's share in the staged format; its row count;
* ``staged_rows()`` (PS chief): rows staged by all workers, from which the chief counts its steps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import hdfs_io
from tfos_jobs.tfnode.datasets import streaming_dataset
from tfos_jobs.tfnode.feed import FeedReceiver
from tfos_jobs.tfnode.staging import write_staged
from tfos_jobs.wire.feed import FeedError, FeedSpec, request


@dataclass
class WorkerInput:
    """One MWMS worker's data: ``dataset_fn(input_context)`` for ``distribute_datasets_from_function``."""
    dataset_fn: Callable[[Any], Any]
    finite: bool                                        # True: train until it ends (all workers agree)
    metrics: Callable[[], dict] = field(default=dict)   # extra metrics for the chief's result


@dataclass(frozen=True)
class _Reader:
    features: tuple
    labels: tuple
    dtypes: dict          # column -> numpy dtype name

    @property
    def columns(self) -> tuple:
        return self.features + self.labels


@dataclass(frozen=True)
class ParquetReader(_Reader):
    """Each worker reads its own share of the files from storage."""
    plan: Any = None      # tfos_jobs.sources.DataPlan

    def rows(self) -> int:
        return self.plan.num_rows

    def files(self, node) -> list:
        return self.plan.shard(node.spec.config.scaling.num_workers, node.data_shard_index)

    @contextlib.contextmanager
    def worker_input(self, node) -> Iterator[WorkerInput]:
        files, batch = self.files(node), node.spec.config.loop.batch_size
        yield WorkerInput(lambda _ctx: streaming_dataset(self, files, batch).repeat().prefetch(2), finite=False)

    def stage(self, node) -> int:
        files = self.files(node)
        batches = hdfs_io.iter_record_batches(files, list(self.columns), node.spec.config.loop.batch_size)
        rows = write_staged(batches, self.columns, node.stage_dir, f"a batch of {[f.uri for f in files]}")
        if rows == 0:
            raise ValueError(f"worker {node.index} got no rows from its shard {[f.uri for f in files]}")
        return rows

    def staged_rows(self) -> int:
        return self.plan.num_rows

    def metrics(self, rows: int) -> dict:
        return {}


@dataclass(frozen=True)
class FeedReader(_Reader):
    """Each worker receives its share of a Spark DataFrame from the driver's feed."""
    feed: FeedSpec = None

    def rows(self) -> int:
        return 0   # known once fed

    @contextlib.contextmanager
    def worker_input(self, node) -> Iterator[WorkerInput]:
        """The data is re-streamed every epoch; the loop trains until the last epoch ends on all workers
        (``get_next_as_optional`` keeps their step counts equal) or ``steps`` is reached (an early stop:
        the receivers close and the driver cancels the feed)."""
        receiver = FeedReceiver(self.feed, node.data_shard_index).register()
        print(f"[feed] {node.name}: receiver {receiver.address} registered as worker {receiver.index}", flush=True)
        try:
            yield WorkerInput(lambda _ctx: receiver.dataset().prefetch(1), finite=True,
                              metrics=lambda: {"feed_rows": receiver.rows_out})
        finally:
            receiver.close()

    def stage(self, node) -> int:
        """One pass of the feed into the staged format (memory stays bounded by the receiver's queue)."""
        with FeedReceiver(self.feed, node.data_shard_index) as receiver:
            receiver.register()
            batches = (batch for _, batch in receiver.record_batches())
            rows = write_staged(batches, self.columns, node.stage_dir, f"the DataFrame fed to {node.name}")
        if rows == 0:
            raise ValueError(f"worker {node.index} got no rows from the DataFrame feed")
        return rows

    def staged_rows(self) -> int:
        """Rows the feed delivered in its one pass, asked from the driver once the workers have staged."""
        reply = request(self.feed.coordinator, self.feed.secret, {"op": "status"})
        if reply.get("error"):
            raise FeedError(reply["error"])
        return int(reply["rows"])

    def metrics(self, rows: int) -> dict:
        return {"feed_rows": rows}
