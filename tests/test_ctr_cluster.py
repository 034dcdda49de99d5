"""The CTR job on the pseudo-cluster: data, checkpoints and export on HDFS; reports on S3."""
import json
import uuid

import numpy as np
import pytest

import hdfs_io
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig
from tfos_jobs.ctr import schema
from tfos_jobs.ctr import steps as job
from tfos_jobs.ctr import synthetic as generator
from tfos_jobs.ctr.model import CTRTask, ModelConfig
from tfos_jobs.ctr.prep import prep

from test_training_e2e import assert_learned, untrained_predictions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MODEL = ModelConfig(embedding_dim=4, hidden=(16,), learning_rate=0.003)  # at 0.01 its log loss passes a constant's


def test_ctr_job_on_hdfs_and_s3(pseudo_cluster, cluster_env, local_spark):
    hdfs = pseudo_cluster["hdfs"]["uri"].rstrip("/")
    root = f"{hdfs}/tmp/ctr-{uuid.uuid4().hex[:8]}"
    s3_root = f"s3://{pseudo_cluster['s3']['bucket']}/ctr-{uuid.uuid4().hex[:8]}"
    try:
        gen = generator.generate(f"{root}/raw", 4000, files=2, seed=5, malformed_fraction=0.01,
                                 compression="gzip")
        s3_gen = generator.generate(f"{s3_root}/raw", 500, seed=5)
        assert generator.read_report(f"{s3_root}/raw")["rows"] == 500 and s3_gen["bayes_auc"] > 0.5
        report = prep(local_spark, f"{root}/raw", f"{root}/prep", hash_buckets=1000, max_bad_fraction=0.05,
                      validation_fraction=0.25)
        assert report["bad"] == gen["malformed"] and report["train"].startswith("hdfs://")
        assert hdfs_io.read_parquet(report["quarantine"]).num_rows == gen["malformed"]
        result = job.train(local_spark.sparkContext, f"{root}/prep", MODEL,
                           scaling=ScalingConfig(strategy="ps", num_workers=1, num_ps=1),
                           loop=LoopConfig(batch_size=128, steps=40, log_every=20, checkpoint_every=20),
                           run=RunConfig(model_dir=f"{root}/model", export_uri=f"{root}/export"))
        assert result.steps == 40 and hdfs_io.is_published(f"{root}/export")
        assert hdfs_io.exists(f"{root}/model/checkpoints/checkpoint")
        evaluation = job.evaluate(f"{root}/export", report["valid"], output_uri=f"{s3_root}/evaluation.json")
        assert json.loads(hdfs_io.open(f"{s3_root}/evaluation.json", "r").read())["auc"] == evaluation["auc"]
        summary = job.score(local_spark, f"{root}/export", report["valid"], f"{root}/scores",
                            keep=schema.FEATURES + ["label"])
        scored = hdfs_io.read_parquet(f"{root}/scores")
        assert scored.column_names == schema.FEATURES + ["label", "prediction", "model_version"]
        assert summary["rows"] == scored.num_rows == report["valid_rows"]
        labels, predictions = scored.column("label").to_numpy(), scored.column("prediction").to_numpy()
        assert abs(float(np.mean(predictions)) - evaluation["mean_prediction"]) < 1e-4
        # the scores Spark wrote on HDFS beat chance and the untrained model on the same rows (measured
        # here), stay below the generator's Bayes AUC, and are the figures `evaluate` reported
        untrained = untrained_predictions(CTRTask(ModelConfig(**dict(MODEL.__dict__, hash_buckets=1000))),
                                          {n: scored.column(n).to_numpy() for n in schema.FEATURES})
        figures = assert_learned(labels, predictions, untrained, bayes_auc=gen["bayes_auc"])
        assert evaluation["auc"] == pytest.approx(figures["auc"], abs=1e-4), (evaluation, figures)
    finally:
        hdfs_io.delete(root, recursive=True, missing_ok=True)
        hdfs_io.delete(s3_root, recursive=True, missing_ok=True)
