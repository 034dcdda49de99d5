"""Spark itself on ``s3a://`` against the pseudo-cluster's S3 endpoint, typed as a user would (the
installed console scripts, with the environment of ``tfos-cluster env``): the CTR prep reads and writes
S3, and the streaming file source picks up impression files that land in an S3 directory, with its
checkpoint and its sink on S3 too. The S3A jars (hadoop-aws and the AWS SDK modules it needs) come from
the cache ``tfos-cluster up`` fills; the pseudo-cluster's spark-defaults.conf adds them to jobs."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import hdfs_io
from cluster.pseudo import jars
from tfos_jobs import spark as tfos_spark
from test_cli_e2e import cli, last_json

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def s3_root(pseudo_cluster, cluster_env):
    """A fresh ``s3a://`` prefix in the cluster's bucket, deleted afterwards."""
    root = f"s3a://{pseudo_cluster['s3']['bucket']}/s3a-{uuid.uuid4().hex[:8]}"
    try:
        yield root
    finally:
        hdfs_io.delete(root, recursive=True, missing_ok=True)


def test_s3a_jars_are_cached_apart_from_pysparks(pseudo_cluster):
    """The cluster's start cached hadoop-aws with the SDK modules (not the 686 MB bundle), none of them a
    library pyspark ships, and the cluster's Spark defaults load them and point s3a at its endpoint."""
    s3a_jars = tfos_spark.s3a_jars()
    names = {Path(j).name for j in s3a_jars}
    assert jars.is_fetched(jars.HADOOP_AWS) and set(jars.HADOOP_AWS.required) <= names, names
    assert not any(n.startswith("bundle-") for n in names)
    assert not {jars._artifact_id(n) for n in names} & jars._pyspark_jars()[1]
    assert jars.cache_size(jars.HADOOP_AWS) < 30 * 2**20, jars.cache_size(jars.HADOOP_AWS)
    defaults = pseudo_cluster["spark"]["defaults"]
    assert defaults["spark.jars"].split(",") == [*s3a_jars, *tfos_spark.spark_kafka_jars()]
    assert defaults["spark.hadoop.fs.s3a.endpoint"] == pseudo_cluster["s3"]["endpoint"]
    assert not [k for k in defaults if "secret" in k or "access.key" in k], sorted(defaults)


def test_ctr_prep_reads_and_writes_s3a(pseudo_cluster, s3_root):
    gen = last_json(cli(pseudo_cluster, "tfos-ctr", "generate", "--output", f"{s3_root}/raw", "--rows", "1500",
                        "--files", "2", "--malformed-fraction", "0.01", "--seed", "3"))
    prepped = last_json(cli(pseudo_cluster, "tfos-ctr", "prep", "--input", f"{s3_root}/raw", "--output",
                            f"{s3_root}/prep", "--hash-buckets", "500", "--max-bad-fraction", "0.05",
                            "--validation-fraction", "0.2", "--master", pseudo_cluster["spark"]["master"]))
    assert prepped["input"] == f"{s3_root}/raw" and prepped["output"] == f"{s3_root}/prep"
    assert prepped["train"].startswith(f"{s3_root}/prep/") and prepped["valid"].startswith(f"{s3_root}/prep/")
    assert prepped["rows"] == gen["rows"] and prepped["bad"] == gen["malformed"], (prepped, gen)
    assert prepped["train_rows"] + prepped["valid_rows"] == prepped["good"] == gen["well_formed"]
    # what Spark wrote through S3A, read back through the other S3 client (pyarrow)
    assert hdfs_io.read_parquet(prepped["train"]).num_rows == prepped["train_rows"]
    assert hdfs_io.read_parquet(prepped["valid"]).num_rows == prepped["valid_rows"]
    assert hdfs_io.read_parquet(prepped["quarantine"]).num_rows == gen["malformed"]


def _small_export(path: Path) -> None:
    """A small untrained export of the CTR job's real model (as tests/test_streaming.py builds one)."""
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.export import publish_export
    model = build_model(ModelConfig(embedding_dim=2, hidden=(8,), cross_layers=1, hash_buckets=500).validate())
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    publish_export(str(path), model, dtypes, {"auc": 0.5}, kind="ctr-export",
                   files={"ctr.json": {"hash_buckets": 500}})


def test_stream_score_file_source_on_s3a(pseudo_cluster, s3_root, s3a_spark, tmp_path):
    """Impression files land in an S3 directory in two turns; each turn runs ``stream-score`` to the end
    of what is there (available-now) with its checkpoint and sink on S3: the second resumes from the
    checkpoint, and every well-formed impression has exactly one prediction."""
    files = 3
    gen = json.loads(cli(pseudo_cluster, "tfos-ctr", "generate-stream", "--output", str(tmp_path / "gen"),
                         "--rows", "600", "--files", str(files), "--rows-per-s", "1",
                         "--malformed-fraction", "0.01", "--seed", "4").stdout.strip().splitlines()[-1])
    _small_export(tmp_path / "export")
    impressions = Path(hdfs_io.resolve(str(tmp_path / "gen"))) / "impressions"
    landing, pred, ckpt = f"{s3_root}/landing", f"{s3_root}/pred", f"{s3_root}/ckpt"
    score = ["tfos-ctr", "stream-score", "--export", str(tmp_path / "export"), "--input", landing, "--output", pred,
             "--checkpoint", ckpt, "--trigger", "available-now", "--max-files-per-trigger", "1",
             "--master", pseudo_cluster["spark"]["master"]]
    for turn in (range(files - 1), range(files - 1, files)):
        for i in turn:   # each file lands whole (one PUT)
            hdfs_io.copy(str(impressions / f"part-{i:05d}.tsv"), f"{landing}/part-{i:05d}.tsv")
        assert json.loads(cli(pseudo_cluster, *score).stdout.strip().splitlines()[-1])["predictions"] == pred
    commits = [f.uri for f in hdfs_io.ls(f"{ckpt}/predictions/commits")]
    assert len([c for c in commits if c.rsplit("/", 1)[-1].isdigit()]) == files, commits
    stream = s3a_spark.read.parquet(pred).toPandas()   # the sink's committed files (its _spark_metadata)
    quarantine = s3a_spark.read.parquet(f"{pred}.quarantine").toPandas()
    ids = {line.split("\t", 1)[0] for i in range(files)
           for line in (impressions / f"part-{i:05d}.tsv").read_text().splitlines()}
    assert stream["id"].is_unique, stream["id"][stream["id"].duplicated()].head()
    assert len(stream) == gen["well_formed"] and len(quarantine) == gen["malformed"], (len(stream), len(quarantine), gen)
    assert set(stream["id"]) <= ids
    assert stream["prediction"].between(0, 1).all() and stream["model_version"].notna().all()
