"""The failure paths the README promises, each provoked for real and checked by its exception and message:

* every training attempt loses its TF cluster (the node processes die without a traceback, as under the
  OOM killer): ``ClusterLost`` after ``max_attempts``;
* fewer data files than TF workers: refused before any Spark job;
* fewer Spark executors than TF nodes: a clear error after ``start_timeout_s``, not a hang;
* a feed partition delivered twice: the receiver's and the driver's exactly-once checks (real receivers
  over sockets, real senders' links; the driver's check with a real Spark feeding job).

The YARN watchdog (an application RUNNING with fewer executors than TF nodes) is in test_deploy_yarn.py.
"""
import contextlib
import os
import re
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import hdfs_io
from tfos_jobs.wire.auth import RequestServer, new_secret
from tfos_jobs.driver.feed import FeedDriver
from tfos_jobs.executor.feed import _Link
from tfos_jobs.sources import DataFrameSource
from tfos_jobs.tfnode.feed import FeedReceiver
from tfos_jobs.wire.feed import FeedError, FeedSpec
from tfos_jobs.wire.feed import request as _request
from tfos_jobs.task import ParquetSource
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.trainer import ClusterLost, TrainingFailed, fit


def source(uri):
    return ParquetSource(uri, NUMERIC + CATEGORICAL, "label")


@pytest.fixture(scope="module")
def ctr_files(tmp_path_factory):
    """4,000 rows in 4 Parquet files (one per TF worker up to 4) and a validation set."""
    root = tmp_path_factory.mktemp("failure-ctr")
    hdfs_io.write_parquet(synthetic_ctr(4_000, seed=11), str(root / "train"), rows_per_file=1_000)
    hdfs_io.write_parquet(synthetic_ctr(500, seed=12), str(root / "valid"))
    assert len(hdfs_io.list_data_files(str(root / "train"))) == 4
    return str(root / "train"), str(root / "valid")


# ----------------------------------------------------------------------------------- training


class DyingTask(DemoCTRTask):
    """Every TF node process kills itself (SIGKILL, as the OOM killer would) while building the model:
    no traceback, no ``failed`` report; each death leaves a marker file so the test can count them."""

    def __init__(self, validation_uri, marker_dir):
        super().__init__(validation_uri)
        self.marker_dir = marker_dir

    def build_model(self):
        with open(os.path.join(self.marker_dir, f"died-{os.getpid()}"), "w") as fh:
            fh.write(os.environ.get("TF_CONFIG", ""))
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_attempt_dying_raises_cluster_lost(local_spark, ctr_files, tmp_path):
    train, valid = ctr_files
    markers = tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(ClusterLost) as err:
        fit(local_spark.sparkContext, DyingTask(valid, str(markers)), source(train), strategy="mwms",
            num_workers=2, model_dir=str(tmp_path / "model"), export_uri=str(tmp_path / "export"),
            batch_size=64, steps=5, max_attempts=2, start_timeout_s=120)
    message = str(err.value)
    assert not isinstance(err.value, TrainingFailed)
    assert "TF cluster lost on all 2 attempts" in message, message
    # the last attempt's reason names the node and how its process ended (killed by signal 9)
    assert "exited with code -9" in message, message
    # both attempts really ran: 2 TF nodes died in each
    assert len(list(markers.iterdir())) == 4, sorted(p.name for p in markers.iterdir())
    assert not hdfs_io.exists(str(tmp_path / "export")), "nothing is published when every attempt died"
    assert local_spark.sparkContext.parallelize(range(3), 3).count() == 3, "the executors are usable again"


@pytest.mark.slow
@pytest.mark.parametrize("strategy, workers", [("mwms", 5), ("ps", 5)])
def test_fewer_data_files_than_workers_is_refused_before_training(local_spark, ctr_files, tmp_path,
                                                                  strategy, workers):
    train, valid = ctr_files
    sc = local_spark.sparkContext
    jobs_before = len(sc.statusTracker().getJobIdsForGroup(None))
    with pytest.raises(ValueError) as err:
        fit(sc, DemoCTRTask(valid), source(train), strategy=strategy, num_workers=workers, num_ps=1,
            model_dir=str(tmp_path / "model"), batch_size=64, steps=5)
    message = str(err.value)
    assert f"{train} has 4 data file(s) but {workers} TF workers each need at least one" in message, message
    assert "repartition" in message, message
    assert len(sc.statusTracker().getJobIdsForGroup(None)) == jobs_before, "no Spark job was started"
    assert not os.path.exists(tmp_path / "model")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fewer_executors_than_tf_nodes_is_a_clear_error(local_spark, ctr_files, tmp_path):
    """local_spark has 3 executors (fewer for a moment after a test killed one); mwms with 4 workers needs
    4 TF nodes, one executor each."""
    train, valid = ctr_files
    sc = local_spark.sparkContext
    with pytest.raises(RuntimeError) as err:
        fit(sc, DemoCTRTask(valid), source(train), strategy="mwms", num_workers=4,
            model_dir=str(tmp_path / "model"), batch_size=64, steps=5, start_timeout_s=3)
    message = str(err.value)
    assert not isinstance(err.value, (ClusterLost, TrainingFailed)), repr(err.value)
    assert re.fullmatch(r"the TF cluster needs 4 Spark executors \(one TF node each\) but only [0-3] registered "
                        r"within 3 s", message), message
    assert not os.path.exists(tmp_path / "model"), "nothing was started"


# ----------------------------------------------------------------------------------- the feed's exactly-once checks


@contextlib.contextmanager
def coordinator():
    """A stand-in for the driver's feed coordinator: accepts registrations and ``closed`` notices."""
    seen = []

    def handle(msg):
        seen.append(msg)
        return {"ok": True}
    secret = new_secret()
    with RequestServer("127.0.0.1", secret, handle, name="test coordinator") as server:
        yield server.address, secret, seen


@contextlib.contextmanager
def receiver(batch_size=10):
    """A real FeedReceiver (worker 0 of 1), registered with a stand-in coordinator, and a consumer thread
    that records what it yields (or the error it raises)."""
    with coordinator() as (address, token, _):
        spec = FeedSpec(features=("x",), labels=("label",), dtypes={"x": "float32", "label": "float32"},
                        num_workers=1, batch_size=batch_size, coordinator=address, secret=token,
                        max_batches_in_flight=64, stall_timeout_s=20)
        recv = FeedReceiver(spec, 0, host="127.0.0.1").register()
        got = {"rows": [], "error": None}

        def consume():
            try:
                for epoch, batch in recv.record_batches():
                    got["rows"].extend(batch.column("x").to_pylist())
            except FeedError as err:
                got["error"] = err
        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        try:
            yield spec, recv, got, consumer
        finally:
            recv.close()
            consumer.join(timeout=10)
            assert not consumer.is_alive(), "the consumer did not end after close()"


def rows(lo, hi):
    ids = np.arange(lo, hi, dtype=np.float32)
    return pa.record_batch({"x": ids, "label": ids % 2})


def send(spec, recv, partition, batches, epoch=0, finish=True):
    """What a Spark feeding task does for one partition (the sender's own link class); ``finish=False``:
    the task dies after the given batches (its socket closes without the end of the stream)."""
    link = _Link(0, recv.address, spec.secret, epoch, partition, spec.arrow_schema(), spec.stall_timeout_s)
    try:
        for batch in batches:
            link.write(batch)
        if not finish:
            return None
        link.end()
        return link.ack()
    finally:
        link.close()


def end_epoch(spec, recv, expected, epoch=0):
    """The driver's end-of-epoch message: the partitions and row counts this worker must have got."""
    return _request(recv.address, spec.secret, {"kind": "end", "epoch": epoch,
                                   "expected": {str(p): r for p, r in expected.items()}})


def finish(spec, recv):
    return _request(recv.address, spec.secret, {"kind": "finish"})


def test_feed_partition_sent_twice_after_it_completed_is_counted_once():
    """A speculative copy of a feeding task that already delivered: told it is a duplicate, sends nothing."""
    with receiver() as (spec, recv, got, consumer):
        assert send(spec, recv, 0, [rows(0, 25), rows(25, 40)]) == 40
        assert send(spec, recv, 0, [rows(0, 25), rows(25, 40)]) == 40, "the duplicate is acknowledged, not sent"
        assert send(spec, recv, 1, [rows(40, 50)]) == 10
        assert end_epoch(spec, recv, {0: 40, 1: 10}) == {"ok": True, "rows": 50}
        assert finish(spec, recv) == {"ok": True}
        consumer.join(timeout=10)
        assert got["error"] is None
        assert sorted(got["rows"]) == list(range(50)), "every row exactly once"


def test_feed_partition_sent_again_after_a_partial_delivery_fails_the_feed():
    """A feeding task died after sending part of its partition (its socket closed between two batches, as
    when an executor is lost) and Spark retried it: the rows already queued cannot be taken back, so
    exactly-once cannot hold and the feed must fail on both sides, never count the partition as done."""
    with receiver() as (spec, recv, got, consumer):
        send(spec, recv, 0, [rows(0, 25)], finish=False)       # dies after one of its two batches
        deadline = time.monotonic() + 10
        while len(got["rows"]) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(FeedError, match="partition 0 of epoch 0 was sent again after a partial delivery"):
            send(spec, recv, 0, [rows(0, 25), rows(25, 40)])  # the retry
        consumer.join(timeout=10)
        assert isinstance(got["error"], FeedError), got
        assert "exactly-once delivery cannot hold" in str(got["error"]), got["error"]


def test_feed_partition_cut_short_fails_the_epochs_check():
    """The same cut-off delivery with no retry: the driver's end-of-epoch check reports the partition as
    incomplete (not as delivered with fewer rows)."""
    with receiver() as (spec, recv, got, consumer):
        send(spec, recv, 0, [rows(0, 25)], finish=False)
        assert send(spec, recv, 1, [rows(40, 50)]) == 10
        time.sleep(0.5)   # the receiver sees the first connection's end
        reply = end_epoch(spec, recv, {0: 40, 1: 10})
        assert "exactly-once check failed" in reply.get("error", ""), reply
        assert "incomplete [0]" in reply["error"], reply
        consumer.join(timeout=10)
        assert isinstance(got["error"], FeedError) and "exactly-once check failed" in str(got["error"]), got


def test_feed_epoch_check_names_missing_and_miscounted_partitions():
    with receiver() as (spec, recv, got, consumer):
        assert send(spec, recv, 0, [rows(0, 30)]) == 30
        assert send(spec, recv, 2, [rows(30, 35)]) == 5
        reply = end_epoch(spec, recv, {0: 31, 1: 7})
        assert reply.get("error") == ("worker 0, epoch 0: exactly-once check failed (missing partitions [1], "
                                      "unexpected [2], row counts differ for [0], incomplete [])"), reply
        consumer.join(timeout=10)
        assert isinstance(got["error"], FeedError) and reply["error"] in str(got["error"]), got


class DuplicatingFeedDriver(FeedDriver):
    """The real driver and Spark feeding job, whose result lists the first partition's report twice."""

    def _send_rows(self, sender):
        reports = list(super()._send_rows(sender))
        return reports + reports[:1]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_feed_driver_rejects_a_partition_reported_twice(local_spark):
    from pyspark.sql import functions as F
    df = local_spark.range(0, 600, numPartitions=3).select(F.col("id").cast("float").alias("x"),
                                                           (F.col("id") % 2).cast("float").alias("label"))
    driver = DuplicatingFeedDriver(local_spark.sparkContext, DataFrameSource(df, ["x"], "label"), num_workers=1,
                                   epochs=1, batch_size=50)
    recv = FeedReceiver(driver.spec, 0).register()
    errors = []

    def consume():
        try:
            for _ in recv.record_batches():
                pass
        except FeedError as err:
            errors.append(err)
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    driver.start()
    try:
        with pytest.raises(FeedError, match=r"partition \d reported twice for worker 0 in epoch 0"):
            driver.wait(timeout=180)
        consumer.join(timeout=30)
        assert not consumer.is_alive(), "the consumer must not wait forever"
        assert errors and "reported twice" in str(errors[0]), errors
    finally:
        recv.close()
        driver.stop()
