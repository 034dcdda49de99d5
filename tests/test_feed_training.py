"""fit() on a Spark DataFrame through the feed: real TF workers (MWMS) on local-cluster executors."""
import time

import pytest

import hdfs_io
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.feed import DataFrameSource
from tfos_jobs.trainer import TrainingFailed, fit

pytestmark = pytest.mark.slow

ROWS = 4_000


@pytest.fixture(scope="module")
def ctr(local_spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("feed-ctr")
    hdfs_io.write_parquet(synthetic_ctr(ROWS, seed=3), str(root / "train"), rows_per_file=1_000)
    hdfs_io.write_parquet(synthetic_ctr(2_000, seed=4), str(root / "valid"))
    return local_spark.read.parquet(str(root / "train")), str(root / "valid")


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
    assert result.metrics["auc"] > 0.6
    assert hdfs_io.exists(str(tmp_path / "export" / "_SUCCESS"))


def test_mwms_early_stop_cancels_the_feed(local_spark, ctr, tmp_path):
    df, valid = ctr
    begun = time.monotonic()
    result = fit(local_spark.sparkContext, DemoCTRTask(valid), DataFrameSource(df, NUMERIC + CATEGORICAL, "label"),
                 strategy="mwms", num_workers=2, epochs=1000, steps=6, batch_size=64, log_every=3,
                 checkpoint_every=100, model_dir=str(tmp_path / "model"))
    assert result.steps == 6
    assert time.monotonic() - begun < 240
    assert local_spark.sparkContext.parallelize(range(3), 3).count() == 3, "no feeding task holds a slot"


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
