"""What a job trains on: the :class:`Source` protocol and its two kinds.

The driver and the TF roles use a source without knowing which kind it is:

* on the driver, ``source.plan(config)`` checks the data against the config before any TF node starts
  and describes it (:class:`DataPlan`: column types, and the row count when it is known up front);
  ``source.open(sc, config, plan, control)`` is entered around each attempt and yields the small,
  picklable reader the TF nodes get (``tfos_jobs.tfnode.readers``);
* in each TF process, the reader gives an MWMS worker its batches and stages a PS worker's share.

:class:`ParquetSource` is a Parquet data set on storage that the TF workers read themselves;
:class:`DataFrameSource` a Spark DataFrame streamed to them by the feed (``tfos_jobs.driver.feed``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Protocol

import numpy as np

import hdfs_io
from tfos_jobs.config import TrainConfig
from tfos_jobs.driver.feed import start_feed
from tfos_jobs.tfnode.readers import FeedReader, ParquetReader


@dataclass(frozen=True)
class DataPlan:
    """What the driver learns about a data set before training (no rows are read)."""
    files: tuple          # hdfs_io FileInfo, in a stable order (empty for a DataFrame)
    num_rows: int         # 0: unknown until the data is fed
    dtypes: dict          # column -> numpy dtype name
    file_rows: dict       # uri -> rows

    def shard(self, num_workers: int, index: int) -> list:
        return hdfs_io.shard_files(list(self.files), num_workers, index)

    def smallest_shard_rows(self, num_workers: int) -> int:
        return min(sum(self.file_rows[f.uri] for f in self.shard(num_workers, i)) for i in range(num_workers))


class Source(Protocol):
    """The data of one training run, as the runtime sees it."""
    features: tuple
    labels: tuple

    @property
    def columns(self) -> tuple: ...

    def plan(self, config: TrainConfig) -> DataPlan:
        """Driver: check the data against ``config``; raise ``ValueError`` naming what is wrong."""

    def open(self, sc: Any, config: TrainConfig, plan: DataPlan, control: Any) -> ContextManager:
        """Driver, around one attempt: start delivering the data; yield the reader sent to the TF nodes."""


def _names(features, labels) -> tuple[tuple, tuple]:
    labels = (labels,) if isinstance(labels, str) else tuple(labels)
    return tuple(features), labels


@dataclass(frozen=True)
class ParquetSource:
    """A Parquet data set on any storage URI, read by the TF workers themselves (never via the driver).

    ``features`` are scalar numeric columns handed to the model as a dict of ``[batch]`` tensors;
    ``labels`` one or more label columns (a tensor for one, a dict for several).
    """
    uri: str
    features: tuple
    labels: tuple = ()

    def __post_init__(self) -> None:
        features, labels = _names(self.features, self.labels)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "labels", labels)
        if not self.features:
            raise ValueError(f"ParquetSource({self.uri!r}): no feature columns given")

    @property
    def columns(self) -> tuple:
        return self.features + self.labels

    def plan(self, config: TrainConfig) -> DataPlan:
        """Footers only: every worker needs a file and a batch of rows."""
        plan = plan_parquet(self)
        workers, batch = config.scaling.num_workers, config.loop.batch_size
        if len(plan.files) < workers:
            raise ValueError(f"{self.uri} has {len(plan.files)} data file(s) but {workers} TF workers each need "
                             "at least one: write the data set with more files (e.g. repartition)")
        if plan.smallest_shard_rows(workers) < batch:
            raise ValueError(f"{self.uri}: a worker's share has {plan.smallest_shard_rows(workers)} rows, fewer "
                             f"than one batch of {batch}: use a smaller batch_size or more data")
        return plan

    @contextlib.contextmanager
    def open(self, sc: Any, config: TrainConfig, plan: DataPlan, control: Any) -> Iterator[ParquetReader]:
        yield ParquetReader(features=self.features, labels=self.labels, dtypes=plan.dtypes, plan=plan)


def plan_parquet(source: ParquetSource) -> DataPlan:
    """List the data set's files and read their footers: row count and column types."""
    import pyarrow.parquet as pq   # pyarrow is heavy to import and only the driver plans
    files = hdfs_io.list_data_files(source.uri)
    if not files:
        raise FileNotFoundError(f"no Parquet data files under {source.uri}")
    dtypes, file_rows = None, {}
    for info in files:
        with hdfs_io.open(info.uri, "rb") as handle:
            meta = pq.ParquetFile(handle)
            file_rows[info.uri] = meta.metadata.num_rows
            schema = meta.schema_arrow
        missing = [c for c in source.columns if c not in schema.names]
        if missing:
            raise ValueError(f"{info.uri}: missing column(s) {missing}; it has {schema.names}")
        file_types = {c: np.dtype(schema.field(c).type.to_pandas_dtype()).name for c in source.columns}
        if dtypes is not None and file_types != dtypes:
            raise ValueError(f"{info.uri}: column types {file_types} differ from the first file's {dtypes}")
        dtypes = file_types
    return DataPlan(files=tuple(files), num_rows=sum(file_rows.values()), dtypes=dtypes, file_rows=file_rows)


_SPARK_TO_NUMPY = {
    "FloatType": "float32", "DoubleType": "float64", "IntegerType": "int32", "LongType": "int64",
    "ShortType": "int16", "ByteType": "int8", "BooleanType": "bool",
}


@dataclass
class DataFrameSource:
    """Train on a Spark DataFrame directly: ``features`` scalar numeric columns (a dict of ``[batch]``
    tensors for the model), ``labels`` one or more label columns.

    ``max_batches_in_flight``: batches each TF worker buffers (the bound on its feed memory).
    ``stall_timeout_s``: a feeding task that cannot send for this long fails the job (a stuck consumer).
    ``read_parquet_directly``: when ``df`` is a plain Parquet scan (see
    :func:`tfos_jobs.driver.feed.parquet_scan_files`), the feeding tasks read its files with pyarrow
    instead of taking Spark's Parquet -> rows -> Arrow conversion, which is the feed's bottleneck
    (about 3x slower than pyarrow on the same files here).
    """
    df: Any
    features: tuple
    labels: tuple = ()
    max_batches_in_flight: int = 8
    stall_timeout_s: float = 300.0
    register_timeout_s: float = 300.0
    read_parquet_directly: bool = True

    def __post_init__(self) -> None:
        self.features, self.labels = _names(self.features, self.labels)
        if not self.features:
            raise ValueError("DataFrameSource: no feature columns given")
        if self.max_batches_in_flight < 2:
            raise ValueError("DataFrameSource: max_batches_in_flight must be at least 2")

    @property
    def columns(self) -> tuple:
        return self.features + self.labels

    def dtypes(self) -> dict:
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

    def plan(self, config: TrainConfig | None = None) -> DataPlan:
        """The schema only: the rows are known once they are fed."""
        return DataPlan(files=(), num_rows=0, dtypes=self.dtypes(), file_rows={})

    @contextlib.contextmanager
    def open(self, sc: Any, config: TrainConfig, plan: DataPlan, control: Any) -> Iterator[FeedReader]:
        """Start a feed for this attempt (stopped afterwards); its failure reaches the driver's watch
        as a ``failed`` event of node ``feed``."""
        with start_feed(sc, self, config, control) as feed_spec:
            yield FeedReader(features=self.features, labels=self.labels, dtypes=feed_spec.dtypes, feed=feed_spec)
