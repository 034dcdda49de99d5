"""fit() on a Spark DataFrame through the feed: real TF workers (MWMS) on local-cluster executors."""
import time

import pytest

import hdfs_io
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.feed import DataFrameSource
from tfos_jobs.trainer import TrainingFailed, fit

from test_training_e2e import assert_export_learned

pytestmark = pytest.mark.slow

ROWS = 4_000


@pytest.fixture(scope="module")
def ctr(local_spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("feed-ctr")
    hdfs_io.write_parquet(synthetic_ctr(ROWS, seed=3), str(root / "train"), rows_per_file=1_000)
    hdfs_io.write_parquet(synthetic_ctr(2_000, seed=4), str(root / "valid"))
    return local_spark.read.parquet(hdfs_io.resolve(str(root / "train"))), str(root / "valid")


def test_mwms_trains_from_a_dataframe_for_n_epochs(local_spark, ctr, tmp_path):
    df, valid = ctr
    task = DemoCTRTask(valid)
    task.learning_rate = 0.01  # 32 steps at the default 1e-3 leave the AUC near chance
    result = fit(local_spark.sparkContext, task, DataFrameSource(df, NUMERIC + CATEGORICAL, "label"),
                 strategy="mwms", num_workers=2, epochs=2, batch_size=128, log_every=10, checkpoint_every=20,
                 model_dir=str(tmp_path / "model"), export_uri=str(tmp_path / "export"))
    assert result.nodes == ["chief:0", "worker:0"]
    # each worker gets about half of every partition, every epoch: 2 x ~2000 rows -> 2 x 16 batches of 128
    assert 0.45 * 2 * ROWS <= result.metrics["feed_rows"] <= 0.55 * 2 * ROWS
    assert 31 <= result.steps <= 33
    assert_export_learned(result.export_uri, valid, result.metrics)


def test_mwms_early_stop_cancels_the_feed(local_spark, ctr, tmp_path):
    df, valid = ctr
    sc = local_spark.sparkContext
    result = fit(sc, DemoCTRTask(valid), DataFrameSource(df, NUMERIC + CATEGORICAL, "label"),
                 strategy="mwms", num_workers=2, epochs=1000, steps=6, batch_size=64, log_every=3,
                 checkpoint_every=100, model_dir=str(tmp_path / "model"))
    assert result.steps == 6
    # the 1000-epoch feeding job was cancelled, not left to run (Spark's status store lags its scheduler
    # a little: poll it briefly)
    for _ in range(60):
        active = sc.statusTracker().getActiveJobsIds()
        if not active:
            break
        time.sleep(0.5)
    assert not active, f"Spark jobs still running after fit returned: {active}"
    assert sc.parallelize(range(3), 3).count() == 3, "no feeding task holds a slot"


def test_failing_producer_fails_fit_with_its_error(local_spark, ctr, tmp_path):
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType
    df, valid = ctr

    def explode(x):
        raise ValueError("boom: the producer's UDF is broken")
    broken = df.withColumn("num_0", F.udf(explode, FloatType())("num_0"))
    with pytest.raises(TrainingFailed, match="boom: the producer's UDF is broken"):
        fit(local_spark.sparkContext, DemoCTRTask(valid), DataFrameSource(broken, NUMERIC + CATEGORICAL, "label"),
            strategy="mwms", num_workers=2, batch_size=128, model_dir=str(tmp_path / "model"), start_timeout_s=120)


def test_no_free_task_slot_is_a_clear_error(local_spark, ctr, tmp_path):
    df, valid = ctr
    # ps + chief + worker hold all 3 single-core executors: nothing would be left to feed
    with pytest.raises(ValueError, match="task slot beside the 3 TF nodes"):
        fit(local_spark.sparkContext, DemoCTRTask(valid), DataFrameSource(df, NUMERIC + CATEGORICAL, "label"),
            strategy="ps", num_workers=1, num_ps=1, batch_size=128, model_dir=str(tmp_path / "model"))


PS_APP = """
import json, sys
sys.path.insert(0, {repo!r})
import hdfs_io
from tfos_jobs.feed import DataFrameSource
from tfos_jobs.spark import local_cluster_master, spark_session
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.trainer import fit

root = {root!r}
hdfs_io.write_parquet(synthetic_ctr(4000, seed=3), root + "/train", rows_per_file=1000)
hdfs_io.write_parquet(synthetic_ctr(2000, seed=4), root + "/valid")
# chief, ps and worker hold one single-core executor each; the fourth runs the feeding tasks
spark = spark_session(local_cluster_master(4, 1, 1024), app_name="feed-ps")
try:
    task = DemoCTRTask(root + "/valid")
    task.learning_rate = 0.01
    df = spark.read.parquet(hdfs_io.resolve(root + "/train"))
    result = fit(spark.sparkContext, task, DataFrameSource(df, NUMERIC + CATEGORICAL, "label"), strategy="ps",
                 num_workers=1, num_ps=1, epochs=2, batch_size=128, log_every=10, checkpoint_every=20,
                 model_dir=root + "/model", export_uri=root + "/export")
    # a file, not print(): under PYTHONUNBUFFERED a printed line is several writes, and the JVM's log lines
    # share the stream
    with open(root + "/result.json", "w") as fh:
        fh.write(json.dumps({{"nodes": result.nodes, "steps": result.steps, "metrics": result.metrics}}))
finally:
    spark.stop()
"""


def test_ps_trains_from_a_dataframe(tmp_path):
    """ps + chief + worker and a free slot for the feed need 4 executors: a Spark application of its own."""
    import json
    import os
    import sys

    from cluster.testing import describe, run_process
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = tmp_path / "feed_ps.py"
    app.write_text(PS_APP.format(repo=repo, root=str(tmp_path / "data")))
    res = run_process([sys.executable, str(app)], timeout=480, env={"SPARK_LOCAL_IP": "127.0.0.1"})
    result = tmp_path / "data" / "result.json"
    assert res.returncode == 0 and result.exists(), f"PS feed app failed:\n{describe(res)}"
    out = json.loads(result.read_text())
    assert sorted(out["nodes"]) == ["chief:0", "ps:0", "worker:0"], out["nodes"]
    # one worker receives every row once; the chief reads its staged copy twice: 2 x 4000 / 128 steps
    assert out["metrics"]["feed_rows"] == 4000, out["metrics"]
    assert out["steps"] == 2 * 4000 // 128, out["steps"]
    assert_export_learned(str(tmp_path / "data" / "export"), str(tmp_path / "data" / "valid"), out["metrics"])
