"""Real distributed training: TFoS on Spark local-cluster executors, data on file:// storage."""
import json
import os

import numpy as np
import pytest

import hdfs_io
from tfos_jobs import metrics
from tfos_jobs.export import export_dir, saved_model_path
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


def learning_baselines(labels, scores, untrained_scores=None, draws=200, seed=0):
    """What a model that learned nothing scores on the same rows, measured here, next to the model's own
    AUC and log loss: the same scores against shuffled labels (99th percentile of ``draws`` shuffles),
    a constant (AUC 0.5; its best log loss is that of the rows' own click rate) and, when given, the
    scores of the same architecture freshly initialised (untrained)."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    shuffled = [metrics.auc(rng.permutation(labels), scores) for _ in range(draws)]
    out = {"rows": len(labels), "auc": metrics.auc(labels, scores), "log_loss": metrics.log_loss(labels, scores),
           "shuffled_labels_auc_p99": float(np.quantile(shuffled, 0.99)), "constant_auc": 0.5,
           "constant_log_loss": metrics.log_loss(labels, np.full(len(labels), labels.mean()))}
    if untrained_scores is not None:
        untrained = np.asarray(untrained_scores, dtype=np.float64).ravel()
        out["untrained_auc"] = metrics.auc(labels, untrained)
        out["untrained_log_loss"] = metrics.log_loss(labels, untrained)
    return out


def assert_learned(labels, scores, untrained_scores=None, margin=0.05, bayes_auc=None, log_loss=True):
    """The model's AUC on these rows is clearly (``margin``) above what the scores reach with shuffled
    labels, and above the untrained model's AUC; its log loss beats the best constant's; with a known
    Bayes AUC, it does not exceed it (the figures would then be wrong). Returns the figures."""
    figures = learning_baselines(labels, scores, untrained_scores)
    if bayes_auc is not None:
        figures["bayes_auc"] = bayes_auc
    print("learning check:", figures)
    floor = max(figures["shuffled_labels_auc_p99"], figures.get("untrained_auc", 0.0)) + margin
    assert figures["auc"] > floor, f"AUC not above chance/untrained + {margin}: {figures}"
    if log_loss:
        assert figures["log_loss"] < figures["constant_log_loss"], f"log loss not below a constant's: {figures}"
    if bayes_auc is not None:
        assert figures["auc"] <= bayes_auc + 0.02, f"AUC above the Bayes-optimal AUC: {figures}"
    return figures


def untrained_predictions(task, features):
    """Predictions of ``task``'s model freshly built (random initial weights, seeded)."""
    import keras
    keras.utils.set_random_seed(0)
    return task.build_model().predict(features, batch_size=4096, verbose=0).ravel()


def export_predictions(export_uri, valid_uri):
    """Labels and the export's serving predictions for every validation row, read here."""
    import tensorflow as tf
    assert hdfs_io.is_published(export_uri)
    serve = tf.saved_model.load(saved_model_path(export_dir(export_uri))).signatures["serving_default"]
    table = hdfs_io.read_parquet(valid_uri)
    out = serve(**{n: tf.constant(table.column(n).to_numpy()) for n in NUMERIC + CATEGORICAL})["prediction"]
    return table.column("label").to_numpy(), out.numpy().ravel()


def assert_export_learned(export_uri, valid_uri, reported):
    """The export's predictions on the validation rows beat chance and the untrained model (measured
    here), and the figures the job reported (``reported``: its metrics) are those of these predictions."""
    labels, predictions = export_predictions(export_uri, valid_uri)
    table = hdfs_io.read_parquet(valid_uri)
    untrained = untrained_predictions(DemoCTRTask(valid_uri),
                                      {n: table.column(n).to_numpy() for n in NUMERIC + CATEGORICAL})
    figures = assert_learned(labels, predictions, untrained)
    reported = json.loads(open(os.path.join(export_dir(export_uri), "metrics.json")).read())
    assert reported["auc"] == pytest.approx(figures["auc"], abs=1e-4), (reported, figures)
    assert reported["auc"] == pytest.approx(figures["auc"], abs=1e-4), (reported, figures)
    return figures


def test_mwms_two_workers_train_and_export(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    task = DemoCTRTask(valid)
    task.learning_rate = 0.01  # a few dozen steps at the default 1e-3 leave the AUC near chance
    result = fit(local_spark.sparkContext, task, source(train), strategy="mwms", num_workers=2,
                 model_dir=str(tmp_path / "model"), export_uri=str(tmp_path / "export"),
                 batch_size=128, epochs=1, log_every=10, checkpoint_every=20)
    assert result.nodes == ["chief:0", "worker:0"], "both TF workers must report"
    assert_export_learned(result.export_uri, valid, result.metrics)
    assert hdfs_io.exists(str(tmp_path / "model" / "checkpoints" / "checkpoint"))
    assert hdfs_io.glob(str(tmp_path / "model" / "tensorboard" / "*tfevents*"))


def test_ps_strategy_trains_and_exports(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    task = DemoCTRTask(valid)
    task.learning_rate = 0.01  # a few dozen steps at the default 1e-3 leave the AUC near chance
    result = fit(local_spark.sparkContext, task, source(train), strategy="ps", num_workers=1,
                 num_ps=1, model_dir=str(tmp_path / "model"), export_uri=str(tmp_path / "export"),
                 batch_size=128, steps=60, log_every=20, checkpoint_every=30)
    assert sorted(result.nodes) == ["chief:0", "ps:0", "worker:0"]
    assert result.steps == 60
    assert_export_learned(result.export_uri, valid, result.metrics)


class FailingTask(DemoCTRTask):
    def per_example_loss(self, labels, predictions):
        raise ValueError("boom: the user's loss is broken")


def test_failing_node_fails_fast_with_its_traceback(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    with pytest.raises(TrainingFailed, match="boom: the user's loss is broken"):
        fit(local_spark.sparkContext, FailingTask(valid), source(train), strategy="mwms", num_workers=2,
            model_dir=str(tmp_path / "model"), batch_size=128, steps=10, start_timeout_s=120)
    assert not hdfs_io.exists(str(tmp_path / "export"))
