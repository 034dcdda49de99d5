"""The runtime on the pseudo-cluster's real HDFS: data, checkpoints, TensorBoard events and the export."""
import uuid

import numpy as np
import pytest

import hdfs_io
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.export import load_serving
from tfos_jobs.task import ParquetSource
from tfos_jobs.trainer import fit

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def hdfs_root(pseudo_cluster):
    root = hdfs_io.join(pseudo_cluster["hdfs"]["uri"], "tests", f"runtime-{uuid.uuid4().hex[:8]}")
    hdfs_io.write_parquet(synthetic_ctr(8_000, seed=1), hdfs_io.join(root, "train"), rows_per_file=2_000)
    hdfs_io.write_parquet(synthetic_ctr(2_000, seed=2), hdfs_io.join(root, "valid"))
    yield root
    hdfs_io.delete(root, recursive=True, missing_ok=True)


@pytest.mark.parametrize("strategy, workers", [("ps", 1), ("mwms", 2)])
def test_training_reads_and_writes_hdfs(local_spark, hdfs_root, tmp_path, strategy, workers):
    run = hdfs_io.join(hdfs_root, strategy)
    result = fit(local_spark.sparkContext, DemoCTRTask(hdfs_io.join(hdfs_root, "valid")),
                 ParquetSource(hdfs_io.join(hdfs_root, "train"), NUMERIC + CATEGORICAL, "label"),
                 strategy=strategy, num_workers=workers, num_ps=1, batch_size=64, steps=40,
                 checkpoint_every=20, log_every=20,
                 model_dir=hdfs_io.join(run, "model"), export_uri=hdfs_io.join(run, "export"))
    assert result.export_uri.startswith("hdfs://")
    assert hdfs_io.exists(hdfs_io.join(run, "export", "_SUCCESS"))
    assert hdfs_io.exists(hdfs_io.join(run, "model", "checkpoints", "checkpoint"))
    assert hdfs_io.glob(hdfs_io.join(run, "model", "tensorboard", "*tfevents*"))
    serve = load_serving(result.export_uri, str(tmp_path / "export"))
    table = hdfs_io.read_parquet(hdfs_io.join(hdfs_root, "valid")).slice(0, 16)
    import tensorflow as tf
    predictions = serve(**{n: tf.constant(table.column(n).to_numpy()) for n in NUMERIC + CATEGORICAL})
    values = predictions["prediction"].numpy().ravel()
    assert values.shape == (16,) and np.all((values > 0) & (values < 1))
