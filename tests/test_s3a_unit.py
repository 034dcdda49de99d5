"""Fast checks of ``s3a://`` for Spark that start nothing: which jars are fetched, how a session finds
them, and the settings it gets (never a credential)."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest

from cluster.pseudo import config, jars
from cluster.pseudo.errors import ClusterError
from tfos_jobs import spark as tfos_spark

NS = {"m": "http://maven.apache.org/POM/4.0.0"}
S3A = jars.HADOOP_AWS


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A complete S3A cache of empty jar files (``TFOS_HADOOP_AWS_JARS``); no Kafka connector cache,
    no Spark defaults, no S3 env."""
    home = tmp_path / "hadoop-aws"
    (home / "lib").mkdir(parents=True)
    for name in S3A.required:
        (home / "lib" / name).write_bytes(b"")
    (home / "MANIFEST.txt").write_text("\n".join([S3A.header(), *S3A.required]) + "\n")
    monkeypatch.setenv("TFOS_HADOOP_AWS_JARS", str(home))
    monkeypatch.setenv("TFOS_SPARK_KAFKA_JARS", str(tmp_path / "no-spark-kafka"))
    for var in ("SPARK_CONF_DIR", "SPARK_HOME", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_pom_asks_for_the_sdk_modules_not_the_bundle_nor_what_pyspark_ships():
    root = ET.fromstring(S3A.pom())
    deps = {(d.findtext("m:groupId", namespaces=NS), d.findtext("m:artifactId", namespaces=NS)):
            d for d in root.iterfind("m:dependencies/m:dependency", NS)}
    assert deps[("org.apache.hadoop", "hadoop-aws")].findtext("m:version", namespaces=NS) == tfos_spark.HADOOP_AWS_VERSION
    for module in jars.SDK_MODULES:
        assert deps[("software.amazon.awssdk", module)].findtext("m:version", namespaces=NS) == jars.AWS_SDK_VERSION
    for dep in deps.values():
        excluded = {(e.findtext("m:groupId", namespaces=NS), e.findtext("m:artifactId", namespaces=NS))
                    for e in dep.iterfind("m:exclusions/m:exclusion", NS)}
        assert set(jars.PROVIDED_BY_SPARK) <= excluded
    hadoop_aws_excluded = {e.findtext("m:artifactId", namespaces=NS) for e in
                           deps[("org.apache.hadoop", "hadoop-aws")].iterfind("m:exclusions/m:exclusion", NS)}
    assert "bundle" in hadoop_aws_excluded


def test_a_session_appends_the_cached_jars_and_points_s3a_at_the_endpoint(fake_cache, tmp_path, monkeypatch):
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        "# the cluster's\nspark.jars /k/kafka.jar\nspark.driver.extraJavaOptions=-Da=b -Dc=d\n"
        "spark.hadoop.fs.s3a.endpoint.region eu-west-3\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf_dir))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    assert tfos_spark.spark_defaults_file()["spark.driver.extraJavaOptions"] == "-Da=b -Dc=d"
    settings = {**tfos_spark.jar_settings({"spark.jars": "/mine.jar"}),
                **tfos_spark.s3a_settings({"spark.jars": "/mine.jar"})}
    cached = [str(fake_cache / "lib" / n) for n in S3A.required]
    # spark-defaults' and the caller's jars are kept: one spark.jars setting replaces the others
    assert settings["spark.jars"].split(",") == ["/k/kafka.jar", "/mine.jar", *cached]
    assert settings["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:1"
    assert settings["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert settings["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert "spark.hadoop.fs.s3a.endpoint.region" not in settings        # spark-defaults.conf says it
    assert not [v for v in settings.values() if "s3cr3t" in v or "AKIDEXAMPLE" in v]
    # the caller's own fs.s3a setting wins
    assert "spark.hadoop.fs.s3a.endpoint" not in tfos_spark.s3a_settings({"spark.hadoop.fs.s3a.endpoint": "x"})


def test_no_cache_and_no_endpoint_add_nothing(fake_cache):
    assert jars.is_fetched(S3A) and len(jars.s3a_jars()) == len(S3A.required)
    (fake_cache / "lib" / S3A.required[0]).unlink()       # an incomplete cache counts as none
    assert tfos_spark.s3a_jars() == [] and not jars.is_fetched(S3A)
    assert tfos_spark.jar_settings() == {} and tfos_spark.s3a_settings() == {}


def test_cluster_spark_defaults_load_the_jars_and_hold_no_credentials(fake_cache, tmp_path):
    lay, opts = config.Layout(tmp_path / "c"), config.Options(port_base=21000)
    config.write_conf(lay, opts, sys.executable)
    defaults = (lay.spark_conf / "spark-defaults.conf").read_text()
    assert f"spark.jars {','.join(str(fake_cache / 'lib' / n) for n in S3A.required)}\n" in defaults
    assert f"spark.hadoop.fs.s3a.endpoint http://127.0.0.1:{opts.port('s3')}\n" in defaults
    assert config.S3_SECRET_KEY not in defaults and config.S3_ACCESS_KEY not in defaults
    core = {p.findtext("name"): p.findtext("value") for p in ET.parse(lay.conf / "core-site.xml").getroot()}
    assert core["fs.s3a.secret.key"] == config.S3_SECRET_KEY    # Hadoop clients still find them there


def test_fetch_without_maven_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOS_HADOOP_AWS_JARS", str(tmp_path / "empty"))
    monkeypatch.setattr(jars.shutil, "which", lambda name: None)
    with pytest.raises(ClusterError, match="tfos-cluster fetch"):
        jars.fetch_bundle(S3A, quiet=True)


def test_the_kafka_connector_jars_join_spark_jars_too(fake_cache, tmp_path, monkeypatch):
    """Both Spark-side bundles (S3A, spark-sql-kafka) end up in one ``spark.jars``, after the ones set."""
    kafka = tmp_path / "spark-kafka"
    (kafka / "lib").mkdir(parents=True)
    names = [f"spark-sql-kafka-0-10_2.13-{tfos_spark.SPARK_KAFKA_VERSION}.jar", "kafka-clients-3.9.1.jar"]
    for name in names:
        (kafka / "lib" / name).write_bytes(b"")
    (kafka / "MANIFEST.txt").write_text("\n".join([jars.SPARK_KAFKA.header(), *names]) + "\n")
    monkeypatch.setenv("TFOS_SPARK_KAFKA_JARS", str(kafka))
    assert jars.SPARK_KAFKA.home() == kafka.resolve()
    listed = tfos_spark.jar_settings({"spark.jars": "/mine.jar"})["spark.jars"].split(",")
    assert listed == ["/mine.jar", *(str(fake_cache / "lib" / n) for n in S3A.required),
                      *(str(kafka / "lib" / n) for n in names)]
    lay, opts = config.Layout(tmp_path / "c"), config.Options(port_base=21000)
    assert config.spark_defaults(sys.executable, opts)["spark.jars"].split(",") == listed[1:]


def test_one_fetch_covers_every_bundle():
    assert {b.name for b in jars.BUNDLES} == {"hadoop", "kafka", "spark-sql-kafka", "hadoop-aws"}
    assert len({b.env for b in jars.BUNDLES}) == len(jars.BUNDLES)
