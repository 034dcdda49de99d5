"""Real distributed training: TFoS on Spark local-cluster executors, data on file:// storage."""
import json
import os

import numpy as np
import pytest

import hdfs_io
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.task import ParquetSource
from tfos_jobs.trainer import TrainingFailed, fit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ctr_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ctr"))
    train, valid = os.path.join(root, "train"), os.path.join(root, "valid")
    hdfs_io.write_parquet(synthetic_ctr(12_000, seed=1), train, rows_per_file=3_000)
    hdfs_io.write_parquet(synthetic_ctr(3_000, seed=2), valid)
    return train, valid


def source(uri):
    return ParquetSource(uri, NUMERIC + CATEGORICAL, "label")


def assert_export_predicts(export_uri, valid_uri):
    import tensorflow as tf
    assert hdfs_io.exists(hdfs_io.join(export_uri, "_SUCCESS"))
    serve = tf.saved_model.load(os.path.join(export_uri, "saved_model")).signatures["serving_default"]
    table = hdfs_io.read_parquet(valid_uri).slice(0, 64)
    out = serve(**{n: tf.constant(table.column(n).to_numpy()) for n in NUMERIC + CATEGORICAL})["prediction"]
    predictions = out.numpy().ravel()
    assert predictions.shape == (64,) and np.all((predictions > 0) & (predictions < 1))
    metrics = json.loads(open(os.path.join(export_uri, "metrics.json")).read())
    return metrics


def test_mwms_two_workers_train_and_export(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    task = DemoCTRTask(valid)
    task.learning_rate = 0.01  # a few dozen steps at the default 1e-3 leave the AUC near chance
    result = fit(local_spark.sparkContext, task, source(train), strategy="mwms", num_workers=2,
                 model_dir=str(tmp_path / "model"), export_uri=str(tmp_path / "export"),
                 batch_size=128, epochs=1, log_every=10, checkpoint_every=20)
    assert result.nodes == ["chief:0", "worker:0"], "both TF workers must report"
    metrics = assert_export_predicts(result.export_uri, valid)
    assert metrics["auc"] == pytest.approx(result.metrics["auc"])
    assert result.metrics["auc"] > 0.6, "a trained model beats chance on the generating model's data"
    assert hdfs_io.exists(str(tmp_path / "model" / "checkpoints" / "checkpoint"))
    assert hdfs_io.glob(str(tmp_path / "model" / "tensorboard" / "*tfevents*"))


def test_ps_strategy_trains_and_exports(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    result = fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), strategy="ps", num_workers=1,
                 num_ps=1, model_dir=str(tmp_path / "model"), export_uri=str(tmp_path / "export"),
                 batch_size=128, steps=60, log_every=20, checkpoint_every=30)
    assert sorted(result.nodes) == ["chief:0", "ps:0", "worker:0"]
    assert_export_predicts(result.export_uri, valid)
    assert result.steps == 60


class FailingTask(DemoCTRTask):
    def per_example_loss(self, labels, predictions):
        raise ValueError("boom: the user's loss is broken")


def test_failing_node_fails_fast_with_its_traceback(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    with pytest.raises(TrainingFailed, match="boom: the user's loss is broken"):
        fit(local_spark.sparkContext, FailingTask(valid), source(train), strategy="mwms", num_workers=2,
            model_dir=str(tmp_path / "model"), batch_size=128, steps=10, start_timeout_s=120)
    assert not hdfs_io.exists(str(tmp_path / "export"))
