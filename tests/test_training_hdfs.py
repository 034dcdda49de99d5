"""The runtime on the pseudo-cluster's real HDFS: data, checkpoints, TensorBoard events and the export."""
import uuid

import pytest

import hdfs_io
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.export import load_serving
from tfos_jobs.task import ParquetSource
from tfos_jobs.trainer import fit

from test_training_e2e import assert_learned, untrained_predictions

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
    valid = hdfs_io.join(hdfs_root, "valid")
    task = DemoCTRTask(valid)
    task.learning_rate = 0.01  # 40 steps at the default 1e-3 leave the AUC near chance
    result = fit(local_spark.sparkContext, task,
                 ParquetSource(hdfs_io.join(hdfs_root, "train"), NUMERIC + CATEGORICAL, "label"),
                 strategy=strategy, num_workers=workers, num_ps=1, batch_size=64, steps=40,
                 checkpoint_every=20, log_every=20,
                 model_dir=hdfs_io.join(run, "model"), export_uri=hdfs_io.join(run, "export"))
    assert result.export_uri.startswith("hdfs://")
    assert hdfs_io.is_published(hdfs_io.join(run, "export"))
    assert hdfs_io.exists(hdfs_io.join(run, "model", "checkpoints", "checkpoint"))
    assert hdfs_io.glob(hdfs_io.join(run, "model", "tensorboard", "*tfevents*"))
    # the export read back from HDFS predicts every validation row better than chance and than the
    # untrained model (both measured here on the same rows), as well as the job reported
    serve = load_serving(result.export_uri, str(tmp_path / "export"))
    table = hdfs_io.read_parquet(valid)
    features = {n: table.column(n).to_numpy() for n in NUMERIC + CATEGORICAL}
    import tensorflow as tf
    predictions = serve(**{n: tf.constant(v) for n, v in features.items()})["prediction"].numpy().ravel()
    assert predictions.shape == (table.num_rows,)
    figures = assert_learned(table.column("label").to_numpy(), predictions,
                             untrained_predictions(DemoCTRTask(valid), features))
    assert result.metrics["auc"] == pytest.approx(figures["auc"], abs=1e-4), (result.metrics, figures)
