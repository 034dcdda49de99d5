"""Integration tests against the real pseudo-cluster services (HDFS, YARN, Spark standalone, S3)."""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

import cluster
from cluster.deployment.submit import spark_ui_startup_race
from cluster.pseudo import config, manager
from cluster.pseudo.testing import describe, describe_yarn, run_process
from cluster.pseudo.testing import bounded as with_timeout

pytestmark = pytest.mark.cluster

SPARK_SUBMIT = str(config.spark_home() / "bin" / "spark-submit")



def hdfs_client(conn):
    from hdfs_native import Client
    return Client(conn["hdfs"]["uri"])


def submit(conn, master: str, app: str, *args: str, timeout=300, conf=()):
    """spark-submit ``app`` on ``master``; returns the finished process (output in ``stdout``) once it
    exited 0, else fails with its output's tail (and, on YARN, the application's diagnostics)."""
    env = cluster.client_env(conn)
    argv = [SPARK_SUBMIT, "--master", master]
    for c in conf:
        argv += ["--conf", c]
    argv += [app, *args]
    res = run_process(argv, env=env, timeout=timeout)
    if res.returncode != 0 and spark_ui_startup_race(res.stdout):
        res = run_process(argv, env=env, timeout=timeout)  # Spark's own race, before the app ran
    assert res.returncode == 0, explain(conn, res, master)
    return res


# The apps below hand their results back in a file, not as a line on stdout: spark-submit copies the
# driver's stdout into its own output through a JVM thread while Spark's log lines go to the same
# stream, and print() of several values is several write() calls when stdout is unbuffered (Spark's
# PythonRunner sets PYTHONUNBUFFERED). A log line written at that moment lands between them, e.g.
# "RESULT26/12/04 ... INFO ..." (reproduced with spark-submit; a fresh-machine `make test` once found
# no "RESULT " line in test_spark_application_on_yarn's output).


def explain(conn, res, master):
    """A spark-submit run for an assertion message: describe(), plus the YARN diagnostics on YARN."""
    return describe_yarn(res, conn["yarn"]["web"]) if master.startswith("yarn") else describe(res)


def test_status_and_connection_file(pseudo_cluster):
    conn = pseudo_cluster
    assert conn == cluster.connection()
    assert conn["hdfs"]["uri"].startswith("hdfs://127.0.0.1:")
    assert conn["yarn"]["resourcemanager"].startswith("127.0.0.1:")
    assert conn["spark"]["master"].startswith("spark://127.0.0.1:")
    assert conn["s3"]["endpoint"].startswith("http://127.0.0.1:")
    for key in ("bucket", "access_key", "secret_key", "region"):
        assert conn["s3"][key]
    conf = Path(conn["hadoop_conf_dir"])
    for name in ("core-site.xml", "hdfs-site.xml", "yarn-site.xml"):
        assert (conf / name).is_file()
    assert conn["hdfs"]["uri"] in (conf / "core-site.xml").read_text()
    assert Path(conn["java_home"], "bin", "java").exists()
    rows = cluster.status()
    names = {r["service"] for r in rows}
    assert {"namenode", "datanode", "resourcemanager", "nodemanager", "spark-master", "s3", "kafka"} <= names
    assert sum(n.startswith("spark-worker-") for n in names) == conn["spark"]["workers"]
    for r in rows:
        assert r["alive"] and r["healthy"], r
        assert r["pid"] and r["port"], r
        assert r["ui"].startswith("http://127.0.0.1:") if r["service"] != "kafka" else r["ui"] is None, r
    env = cluster.client_env(conn)
    assert env["AWS_ENDPOINT_URL"] == conn["s3"]["endpoint"]
    assert env["HADOOP_CONF_DIR"] == conn["hadoop_conf_dir"]
    assert env["TFOS_KAFKA_BOOTSTRAP"] == conn["kafka"]["bootstrap"] and conn["kafka"]["bootstrap"].startswith("127.0.0.1:")


def test_up_twice_is_harmless(pseudo_cluster):
    before = {r["service"]: r["pid"] for r in cluster.status()}
    again = cluster.up()
    assert again["hdfs"] == pseudo_cluster["hdfs"]
    assert {r["service"]: r["pid"] for r in cluster.status()} == before


def test_hdfs_file_read_back_through_spark(pseudo_cluster, tmp_path):
    conn = pseudo_cluster
    client = hdfs_client(conn)
    base = f"/tmp/test_cluster/{uuid.uuid4().hex}"
    rows = [f"{i},{2 * i}" for i in range(1000)]

    def write():
        client.mkdirs(base, create_parent=True)
        with client.create(f"{base}/input.csv") as f:
            f.write(("\n".join(rows) + "\n").encode())
    with_timeout(write)

    app = tmp_path / "hdfs_roundtrip.py"
    app.write_text(
        "import json, sys\n"
        "from pyspark.sql import SparkSession\n"
        "src, dst, result = sys.argv[1], sys.argv[2], sys.argv[3]\n"
        "spark = SparkSession.builder.appName('tfos-hdfs-roundtrip').getOrCreate()\n"
        "lines = spark.sparkContext.textFile(src)\n"
        "count, total = lines.count(), lines.map(lambda l: int(l.split(',')[1])).sum()\n"
        "spark.createDataFrame([(count, total)], 'count long, total long')"
        ".coalesce(1).write.mode('overwrite').json(dst)\n"
        "with open(result, 'w') as fh:\n"
        "    json.dump([count, total, spark.sparkContext.master], fh)\n"
        "spark.stop()\n")
    uri = conn["hdfs"]["uri"]
    result = tmp_path / "result.json"
    res = submit(conn, conn["spark"]["master"], str(app), f"{uri}{base}/input.csv",
                 f"{uri}{base}/output", str(result),
                 conf=["spark.executor.memory=512m", "spark.cores.max=2"])
    assert result.exists(), f"the driver wrote no result\n{describe(res)}"
    assert json.loads(result.read_text()) == [1000, sum(2 * i for i in range(1000)), conn["spark"]["master"]], \
        describe(res)

    def read_output():
        parts = [s.path for s in client.list_status(f"{base}/output")
                 if s.path.rsplit("/", 1)[-1].startswith("part-")]
        with client.read(parts[0]) as r:
            return json.loads(r.read().decode().strip())
    assert with_timeout(read_output) == {"count": 1000, "total": 999000}
    with_timeout(lambda: client.delete(base, True))


def test_spark_application_on_yarn(pseudo_cluster, tmp_path):
    conn = pseudo_cluster
    app = tmp_path / "yarn_app.py"
    name = f"tfos-yarn-{uuid.uuid4().hex[:8]}"
    app.write_text(
        "import json, sys\n"
        "from pyspark.sql import SparkSession\n"
        "result = sys.argv[1]\n"
        f"spark = SparkSession.builder.appName('{name}').getOrCreate()\n"
        "sc = spark.sparkContext\n"
        "n = sc.parallelize(range(1000), 2).map(lambda x: x * x).sum()\n"
        "with open(result, 'w') as fh:\n"
        "    json.dump([n, sc.master, sc.applicationId], fh)\n"
        "spark.stop()\n")
    result = tmp_path / "result.json"
    res = submit(conn, "yarn", str(app), str(result), conf=[
        "spark.executor.instances=1", "spark.executor.memory=512m", "spark.executor.cores=1"])
    assert result.exists(), f"the driver wrote no result\n{explain(conn, res, 'yarn')}"
    n, master, app_id = json.loads(result.read_text())
    assert n == sum(x * x for x in range(1000)) and master == "yarn", explain(conn, res, "yarn")
    assert app_id.startswith("application_")
    # The ResourceManager saw it run and succeed.
    info = config.http_json(f"{conn['yarn']['web']}/ws/v1/cluster/apps/{app_id}")["app"]
    assert info["name"] == name
    assert info["state"] == "FINISHED" and info["finalStatus"] == "SUCCEEDED", explain(conn, res, "yarn")
    # Spark's jars came from the local install (spark.yarn.jars=local:...), not an upload.
    assert "__spark_libs__" not in res.stdout, explain(conn, res, "yarn")


def test_s3_object_roundtrip(pseudo_cluster, cluster_env):
    import boto3
    s3 = boto3.client("s3")  # endpoint, keys and region from cluster_env (AWS_* variables)
    bucket = pseudo_cluster["s3"]["bucket"]
    key = f"test_cluster/{uuid.uuid4().hex}.bin"
    payload = os.urandom(3 * 2**20 + 17)
    s3.put_object(Bucket=bucket, Key=key, Body=payload)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="test_cluster/")
    assert key in [o["Key"] for o in listed.get("Contents", [])]
    s3.delete_object(Bucket=bucket, Key=key)
    # pyarrow reads the endpoint from AWS_ENDPOINT_URL too.
    import pyarrow.fs as pafs
    fs = pafs.S3FileSystem(endpoint_override=pseudo_cluster["s3"]["endpoint"],
                           access_key=pseudo_cluster["s3"]["access_key"],
                           secret_key=pseudo_cluster["s3"]["secret_key"],
                           region=pseudo_cluster["s3"]["region"], scheme="http")
    with fs.open_output_stream(f"{bucket}/{key}") as f:
        f.write(b"arrow")
    with fs.open_input_stream(f"{bucket}/{key}") as f:
        assert f.read() == b"arrow"
    fs.delete_file(f"{bucket}/{key}")


def test_cli_status_json(pseudo_cluster):
    res = run_process([sys.executable, "-m", "cluster", "status", "--json"], timeout=120,
                      env={"TFOS_CLUSTER_HOME": pseudo_cluster["home"]})
    assert res.returncode == 0, describe(res)
    rows = json.loads(res.stdout)
    assert all(r["healthy"] for r in rows)
    assert manager.rss_total() > 0
