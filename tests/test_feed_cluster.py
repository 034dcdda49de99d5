"""The DataFrame feed on the real pseudo-cluster: a Spark application on the standalone master (its two
1-core workers run the feeding tasks) feeds two receivers in the driver for 2 epochs, checks every row
arrived exactly once per epoch, then checks that a failing producer surfaces on both sides. Then the
same for a Parquet data set on HDFS, which the feeding tasks read directly (no Spark row conversion)."""
import json
import os
import sys
import textwrap
import uuid

import pytest

from cluster.testing import describe, run_process

pytestmark = pytest.mark.cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = textwrap.dedent("""
    import json, sys, threading
    import numpy as np
    import pyarrow as pa
    sys.path.insert(0, {repo!r})
    import hdfs_io
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType
    from tfos_jobs.spark import spark_session
    from tfos_jobs.feed import DataFrameSource, FeedDriver, FeedError, FeedReceiver

    spark = spark_session({master!r}, app_name="tfos-feed-cluster-test",
                          conf={{"spark.executor.memory": "512m", "spark.cores.max": "2"}})
    out = {{"master": spark.sparkContext.master}}
    try:
        rows = 20_000
        df = spark.range(0, rows, numPartitions=9).select("id", (F.col("id") % 3).cast("double").alias("y"))

        def run(frame, epochs):
            driver = FeedDriver(spark.sparkContext, DataFrameSource(frame, ["id"], "y", max_batches_in_flight=3),
                                num_workers=2, epochs=epochs, batch_size=256, host="127.0.0.1")
            receivers = [FeedReceiver(driver.spec, i).register() for i in range(2)]
            got, errors = [[], []], [None, None]

            def consume(i):
                try:
                    for epoch, batch in receivers[i].record_batches():
                        got[i].append((epoch, batch.column("id").to_numpy()))
                except Exception as err:
                    errors[i] = str(err)
                finally:
                    receivers[i].close()
            threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            driver.start()
            try:
                driver.wait(timeout=240)
                error = None
            except FeedError as err:
                error = str(err)
            for t in threads:
                t.join(120)
            driver.stop()
            return got, errors, error, [r.stats() for r in receivers], any(t.is_alive() for t in threads)

        got, errors, error, stats, hung = run(df, 2)
        out["exactly_once"] = all(
            np.array_equal(np.sort(np.concatenate([ids for g in got for e, ids in g if e == epoch])), np.arange(rows))
            for epoch in range(2))
        out["shares"] = [sum(len(ids) for e, ids in g) for g in got]
        out["errors"], out["error"], out["hung"] = errors, error, hung
        out["peak_in_flight"] = [s["peak_batches_in_flight"] for s in stats]

        def explode(v):
            if v > 15_000:
                raise ValueError("boom: producer broke on the cluster")
            return float(v)
        broken = df.withColumn("y", F.udf(explode, DoubleType())("id"))
        _, errors, error, _, hung = run(broken, 1)
        out["failure"] = {{"driver": error, "workers": errors, "hung": hung}}

        ids = np.arange(rows, dtype=np.int64)
        hdfs_io.write_parquet(pa.table({{"id": ids, "y": (ids % 3).astype(np.float64)}}), {hdfs_data!r},
                              rows_per_file=3_000, row_group_size=1_000)
        on_hdfs = spark.read.parquet(hdfs_io.resolve({hdfs_data!r}))
        planned = FeedDriver(spark.sparkContext, DataFrameSource(on_hdfs, ["id"], "y"), num_workers=2, epochs=1,
                             batch_size=256)
        out["hdfs_groups"] = planned.file_groups
        planned.stop()   # never started: this only closes its coordinator socket
        got, errors, error, stats, hung = run(on_hdfs, 2)
        out["hdfs"] = {{"exactly_once": all(
            np.array_equal(np.sort(np.concatenate([ids for g in got for e, ids in g if e == epoch])), np.arange(rows))
            for epoch in range(2)), "errors": errors, "error": error, "hung": hung,
            "shares": [sum(len(ids) for e, ids in g) for g in got]}}
    finally:
        spark.stop()
    # one write() after Spark has stopped: no JVM log line can land inside the result line
    sys.stdout.write("RESULT " + json.dumps(out) + "\\n")
    sys.stdout.flush()
""")


def test_feed_on_the_standalone_cluster(pseudo_cluster, tmp_path):
    master = pseudo_cluster["spark"]["master"]
    app = tmp_path / "feed_app.py"
    hdfs_data = f"{pseudo_cluster['hdfs']['uri'].rstrip('/')}/tmp/feed-{uuid.uuid4().hex[:8]}"
    app.write_text(APP.format(repo=REPO, master=master, hdfs_data=hdfs_data))
    res = run_process([sys.executable, str(app)], timeout=480, env={"SPARK_LOCAL_IP": "127.0.0.1"})
    lines = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"feed app failed\n{describe(res)}"
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["master"] == master, describe(res)
    assert out["exactly_once"] and out["errors"] == [None, None] and out["error"] is None and not out["hung"]
    assert abs(out["shares"][0] - out["shares"][1]) <= 2 * 9, out["shares"]
    assert all(1 <= p <= 3 for p in out["peak_in_flight"]), out["peak_in_flight"]
    failure = out["failure"]
    assert "boom: producer broke on the cluster" in failure["driver"] and not failure["hung"]
    assert all(w and "boom" in w for w in failure["workers"]), failure
    hdfs_groups = out["hdfs_groups"]
    assert len(hdfs_groups) == 2 and all(u.startswith("hdfs://") for g in hdfs_groups for u in g), hdfs_groups
    assert sum(len(g) for g in hdfs_groups) == 7, "20k rows in files of 3k: 7 files, each in one group"
    direct = out["hdfs"]
    assert direct["exactly_once"] and direct["errors"] == [None, None] and direct["error"] is None, direct
    assert not direct["hung"] and abs(direct["shares"][0] - direct["shares"][1]) <= 2 * 7, direct
