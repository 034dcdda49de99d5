"""The DataFrame feed on its own: a Spark feeding job on local-cluster executors streaming to receivers
that run as threads in the test process (no TF cluster), so each semantic is checked directly."""
import threading
import time

import numpy as np
import pytest

from tfos_jobs.feed import DataFrameSource, FeedDriver, FeedError, FeedReceiver, parquet_scan_files

pytestmark = pytest.mark.slow

ROWS = 6_000


@pytest.fixture(scope="module")
def frame(local_spark):
    """ids 0..ROWS-1 over 7 uneven partitions, a float feature derived from the id and a label."""
    from pyspark.sql import functions as F
    df = local_spark.range(0, ROWS, numPartitions=7)
    return df.select(F.col("id"), (F.col("id") * 0.5).cast("float").alias("x"),
                     (F.col("id") % 2).cast("float").alias("label"))


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """The same rows as ``frame`` in 5 Parquet files of uneven sizes, ``id`` stored as int32, in a
    directory whose name needs escaping in a URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    root = tmp_path_factory.mktemp("feed-parquet") / "a data set"   # Spark's file URIs say a%20data%20set
    root.mkdir()
    bounds = [0, 500, 1_700, 1_800, 4_000, ROWS]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        ids = np.arange(lo, hi)
        pq.write_table(pa.table({"id": ids.astype(np.int32), "x": (ids * 0.5).astype(np.float32),
                                 "label": (ids % 2).astype(np.float32)}), root / f"part-{i}.parquet",
                       row_group_size=300)
    return root


class Consumer(threading.Thread):
    """One TF worker's receiver and its consuming loop, in a thread: records every batch it got."""

    def __init__(self, spec, index, stop_after=None, delay_s=0.0, lazy=False):
        super().__init__(daemon=True)
        self.receiver = FeedReceiver(spec, index)
        if not lazy:   # lazy: the receiver registers on the first pull of record_batches
            self.receiver.register()
        self.stop_after, self.delay_s = stop_after, delay_s
        self.batches, self.error = [], None

    def run(self):
        try:
            for epoch, batch in self.receiver.record_batches():
                self.batches.append((epoch, batch.column("id").to_numpy(), batch.column("x").to_numpy()))
                if self.stop_after and len(self.batches) >= self.stop_after:
                    break
                time.sleep(self.delay_s)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            self.error = err
        finally:
            self.receiver.close()


def start(sc, df, workers=2, epochs=1, batch_size=64, in_flight=4, **consumer_kw):
    driver = FeedDriver(sc, DataFrameSource(df, ["id", "x"], "label", max_batches_in_flight=in_flight),
                        num_workers=workers, epochs=epochs, batch_size=batch_size)
    consumers = [Consumer(driver.spec, i, **consumer_kw) for i in range(workers)]
    for c in consumers:
        c.start()
    driver.start()
    return driver, consumers


def test_feed_waits_for_the_first_pull_of_a_lazy_receiver(local_spark, frame):
    driver = FeedDriver(local_spark.sparkContext, DataFrameSource(frame, ["id", "x"], "label"), num_workers=2,
                        epochs=1, batch_size=256)
    consumers = [Consumer(driver.spec, 0), Consumer(driver.spec, 1, lazy=True)]
    consumers[0].start()
    driver.start()
    try:
        time.sleep(2)
        assert "started_at" not in driver.stats, "no feeding job before every worker is ready to read"
        consumers[1].start()
        assert driver.wait(timeout=120)["rows"] == ROWS
    finally:
        finish(driver, consumers)
    assert [c.error for c in consumers] == [None, None]
    assert sum(len(b[1]) for c in consumers for b in c.batches) == ROWS


def finish(driver, consumers, timeout=120):
    try:
        for c in consumers:
            c.join(timeout)
            assert not c.is_alive(), "a consumer hung"
    finally:
        driver.stop()


def test_every_row_exactly_once_per_epoch_across_workers(local_spark, frame):
    driver, consumers = start(local_spark.sparkContext, frame, workers=2, epochs=3, batch_size=64)
    stats = driver.wait(timeout=180)
    finish(driver, consumers)
    assert [c.error for c in consumers] == [None, None]
    assert stats["rows"] == 3 * ROWS and [e["rows"] for e in stats["epochs"]] == [ROWS] * 3
    for epoch in range(3):
        ids = np.concatenate([b[1] for c in consumers for b in c.batches if b[0] == epoch])
        assert len(ids) == ROWS and np.array_equal(np.sort(ids), np.arange(ROWS)), f"epoch {epoch}"
        shares = [sum(len(b[1]) for b in c.batches if b[0] == epoch) for c in consumers]
        assert abs(shares[0] - shares[1]) <= 7, f"every partition is split evenly: {shares}"
    for c in consumers:
        assert all(np.allclose(x, ids * 0.5) for _, ids, x in c.batches), "columns stay aligned"
        sizes = [len(b[1]) for b in c.batches]
        per_epoch_last = {i for i in range(len(sizes)) if i + 1 == len(sizes) or c.batches[i + 1][0] != c.batches[i][0]}
        assert all(s == 64 for i, s in enumerate(sizes) if i not in per_epoch_last), "exact batch_size within epochs"


def test_early_stop_cancels_the_feed_without_hanging(local_spark, frame):
    sc = local_spark.sparkContext
    driver, consumers = start(sc, frame, workers=2, epochs=50, batch_size=32, in_flight=2, stop_after=5)
    for c in consumers:
        c.join(60)
    begun = time.monotonic()
    finish(driver, consumers)
    assert time.monotonic() - begun < 30
    assert driver.error is None, "an early stop is not a failure"
    assert [len(c.batches) for c in consumers] == [5, 5]
    assert not driver.done.is_set()
    assert sc.parallelize(range(3), 3).count() == 3, "executors are free again"


def test_failing_producer_is_a_clear_error_on_both_sides(local_spark, frame):
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType

    def explode(x):
        if x == 2500.0:
            raise ValueError("boom: bad row in the producer")
        return x
    broken = frame.withColumn("x", F.udf(explode, FloatType())("x"))
    driver, consumers = start(local_spark.sparkContext, broken, workers=2, epochs=1)
    with pytest.raises(FeedError, match="boom: bad row in the producer"):
        driver.wait(timeout=180)
    finish(driver, consumers)
    for c in consumers:
        assert isinstance(c.error, FeedError) and "boom" in str(c.error), "the consumer must not wait forever"


def test_memory_is_bounded_by_batches_in_flight(local_spark, frame):
    driver, consumers = start(local_spark.sparkContext, frame, workers=2, epochs=1, batch_size=50, in_flight=3,
                              delay_s=0.01)
    driver.wait(timeout=180)
    finish(driver, consumers)
    for c in consumers:
        stats = c.receiver.stats()
        assert stats["rows"] == sum(len(b[1]) for b in c.batches)
        assert 1 <= stats["peak_batches_in_flight"] <= 3
        # a queued item is at most one batch_size piece of 3 columns x 8 bytes (+ Arrow padding)
        assert stats["peak_bytes_in_flight"] <= 3 * (50 * 3 * 8 + 3 * 64)


def test_tf_dataset_of_named_columns(local_spark, frame):
    import tensorflow as tf
    driver = FeedDriver(local_spark.sparkContext, DataFrameSource(frame, ["id", "x"], "label"), num_workers=1,
                        epochs=2, batch_size=1000)
    receiver = FeedReceiver(driver.spec, 0).register()
    driver.start()
    try:
        dataset = receiver.dataset()
        assert dataset.element_spec[0]["x"].dtype == tf.float32 and dataset.element_spec[1].dtype == tf.float32
        seen = [(f["id"].numpy(), l.numpy()) for f, l in dataset]
        driver.wait(timeout=120)
    finally:
        receiver.close()
        driver.stop()
    ids = np.concatenate([s[0] for s in seen])
    assert np.array_equal(np.sort(ids), np.sort(np.tile(np.arange(ROWS), 2)))
    assert [len(s[0]) for s in seen] == [1000] * 12, "chunks are cut back to exactly batch_size rows"
    assert all(np.array_equal(l, (i % 2).astype(np.float32)) for i, l in seen)


def test_source_rejects_non_numeric_columns(local_spark):
    df = local_spark.createDataFrame([("a", 1.0)], "c string, y double")
    with pytest.raises(ValueError, match="index or hash it in Spark"):
        DataFrameSource(df, ["c"], "y").dtypes()


def test_only_a_plain_parquet_scan_is_read_directly(local_spark, parquet_dir):
    from pyspark.sql import functions as F
    df = local_spark.read.parquet(str(parquet_dir))
    columns = ["id", "x", "label"]
    assert len(parquet_scan_files(df, columns)) == 5
    assert len(parquet_scan_files(df.withColumn("unused", F.col("x") * 2), columns)) == 5, "pruned away"
    for changed in (df.filter("id > 3"), df.withColumn("x", F.col("x") * 2), df.limit(10), df.repartition(3)):
        assert parquet_scan_files(changed, columns) is None, changed._jdf.queryExecution().optimizedPlan()
    cached = df.cache()     # Spark reads a cached plan from its cache: the feed must too
    try:
        assert parquet_scan_files(local_spark.read.parquet(str(parquet_dir)), columns) is None
    finally:
        cached.unpersist(blocking=True)
    assert parquet_scan_files(local_spark.range(3).select("id", F.col("id").alias("x"), F.col("id").alias("label")),
                              columns) is None


def test_parquet_files_read_directly_exactly_once_per_epoch(local_spark, parquet_dir):
    df = local_spark.read.schema("id long, x float, label float").parquet(str(parquet_dir))   # files: int32 ids
    driver, consumers = start(local_spark.sparkContext, df, workers=2, epochs=2, batch_size=64)
    assert sorted(u for g in driver.file_groups for u in g) == sorted(parquet_scan_files(df, ["id", "x", "label"]))
    stats = driver.wait(timeout=180)
    finish(driver, consumers)
    assert [c.error for c in consumers] == [None, None]
    assert len(driver.file_groups) == 3, "one feeding task per task slot (3 executors)"
    assert [(e["rows"], e["partitions"]) for e in stats["epochs"]] == [(ROWS, 3)] * 2
    for epoch in range(2):
        ids = np.concatenate([b[1] for c in consumers for b in c.batches if b[0] == epoch])
        assert np.array_equal(np.sort(ids), np.arange(ROWS)), f"epoch {epoch}"
        shares = [sum(len(b[1]) for b in c.batches if b[0] == epoch) for c in consumers]
        assert abs(shares[0] - shares[1]) <= 5, f"every file is split evenly: {shares}"
    for c in consumers:
        assert all(ids.dtype == np.int64 for _, ids, _ in c.batches), "Spark's type (long), not the file's int32"
        assert all(np.allclose(x, ids * 0.5) for _, ids, x in c.batches), "columns stay aligned"


def test_a_corrupt_parquet_file_is_a_clear_error_naming_it(local_spark, parquet_dir, tmp_path):
    import shutil
    for name in sorted(p.name for p in parquet_dir.iterdir()):
        shutil.copy(parquet_dir / name, tmp_path / name)
    df = local_spark.read.parquet(str(tmp_path))
    broken = tmp_path / "part-3.parquet"     # Spark listed it intact; it breaks before the feed reads it
    data = broken.read_bytes()
    broken.write_bytes(data[:4] + b"\0" * (len(data) // 2) + data[4 + len(data) // 2:])
    driver, consumers = start(local_spark.sparkContext, df, workers=2, epochs=1)
    assert driver.file_groups
    with pytest.raises(FeedError, match="part-3.parquet"):
        driver.wait(timeout=180)
    finish(driver, consumers)
    for c in consumers:
        assert isinstance(c.error, FeedError) and "part-3.parquet" in str(c.error)
