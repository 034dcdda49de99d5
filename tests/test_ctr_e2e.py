"""The CTR job end to end on local storage: generate -> prep -> train (ps) -> evaluate -> score."""
import json

import numpy as np
import pytest

import hdfs_io
from tfos_jobs.ctr import generator, job, schema
from tfos_jobs.ctr.model import ModelConfig
from tfos_jobs.ctr.prep import prep

pytestmark = pytest.mark.slow
SMALL = ModelConfig(arch="deepfm", embedding_dim=4, hidden=(16,))


def serving_predictions(export_uri, table):
    import tensorflow as tf
    from tfos_jobs.export import load_serving
    serve = load_serving(export_uri, None)
    out = serve(**{n: tf.constant(table.column(n).to_numpy()) for n in schema.FEATURES})["prediction"]
    return out.numpy().ravel()


@pytest.fixture(scope="module")
def trained(local_spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr-e2e")
    raw, prepped = str(root / "raw"), str(root / "prep")
    gen = generator.generate(raw, 6000, files=2, seed=3, malformed_fraction=0.005)
    prep(local_spark, raw, prepped, hash_buckets=1000, validation_fraction=0.2)
    result = job.train(local_spark.sparkContext, prepped, str(root / "model"), str(root / "export"),
                       model=SMALL, strategy="ps", num_workers=1, num_ps=1, batch_size=128, steps=80,
                       log_every=40, checkpoint_every=40)
    return root, raw, prepped, gen, result


def test_train_exports_with_validation_metrics(trained):
    root, _, prepped, gen, result = trained
    assert sorted(result.nodes) == ["chief:0", "ps:0", "worker:0"]
    metrics = json.loads(hdfs_io.open(hdfs_io.join(result.export_uri, "metrics.json"), "r").read())
    assert metrics["eval_rows"] == hdfs_io.read_parquet(hdfs_io.join(prepped, "valid")).num_rows
    assert 0.5 < metrics["auc"] <= 1.0 and metrics["auc"] < gen["bayes_auc"] + 0.05
    assert job.read_config(result.export_uri)["hash_buckets"] == 1000
    evaluation = job.evaluate(result.export_uri, hdfs_io.join(prepped, "valid"))
    assert evaluation["auc"] == pytest.approx(metrics["auc"], abs=1e-4), "serving signature = Keras model"
    assert hdfs_io.exists(hdfs_io.join(result.export_uri, "evaluation.json"))


def test_scoring_parquet_matches_the_models_predictions(local_spark, trained, tmp_path):
    _, _, prepped, _, result = trained
    valid = hdfs_io.join(prepped, "valid")
    out = str(tmp_path / "scores")
    summary = job.score(local_spark, result.export_uri, valid, out, keep=schema.FEATURES + ["label"])
    table = hdfs_io.read_parquet(valid)
    assert summary["rows"] == table.num_rows and hdfs_io.is_published(out)
    scored = hdfs_io.read_parquet(out)
    # every output row carries the model's own prediction for that row's features
    expected = serving_predictions(result.export_uri, scored)
    np.testing.assert_allclose(scored.column("prediction").to_numpy(), expected, rtol=1e-4, atol=1e-5)
    # and the output rows are the input rows
    assert sorted(scored.column("C3").to_pylist()) == sorted(table.column("C3").to_pylist())
    assert np.isclose(np.sum(scored.column("I2").to_numpy()), np.sum(table.column("I2").to_numpy()), rtol=1e-5)


def test_scoring_raw_criteo_lines(local_spark, trained, tmp_path):
    _, raw, _, gen, result = trained
    out = str(tmp_path / "raw-scores")
    summary = job.score(local_spark, result.export_uri, raw, out, input_format="criteo")
    assert summary["rows"] == gen["well_formed"] and summary["rejected_rows"] == gen["malformed"]
    scored = hdfs_io.read_parquet(out)
    assert scored.column_names == ["source", "row_key", "label", "prediction"]
    p = scored.column("prediction").to_numpy()
    assert np.all((p > 0) & (p < 1)) and p.std() > 0


def test_mwms_from_a_dataframe(local_spark, trained, tmp_path):
    _, _, prepped, _, _ = trained
    frame = local_spark.read.parquet("file://" + hdfs_io.join(prepped, "train"))
    result = job.train(local_spark.sparkContext, prepped, str(tmp_path / "model"), str(tmp_path / "export"),
                       model=SMALL, data=frame, strategy="mwms", num_workers=2, batch_size=64, steps=30,
                       log_every=15, checkpoint_every=30)
    assert result.nodes == ["chief:0", "worker:0"] and 0.4 < result.metrics["auc"] <= 1
    assert hdfs_io.is_published(result.export_uri)
