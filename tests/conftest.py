"""Shared pytest fixtures.

The pseudo-cluster fixtures live in ``cluster.pseudo.testing`` so that notebooks and benchmarks can reuse
them; every test that needs Spark gets its session from ``local_spark`` here (one per test session).
"""
import time

import psutil
import pytest

pytest_plugins = ["cluster.pseudo.testing"]


@pytest.fixture(scope="session")
def local_spark():
    """Spark ``local-cluster`` with 3 single-core executors: enough for a ps, a chief and a worker."""
    from tfos_jobs.spark import local_cluster_master, spark_session
    spark = spark_session(local_cluster_master(executors=3, memory_mb=1024), app_name="tfos-tests")
    try:
        yield spark
    finally:
        spark.stop()


@pytest.fixture
def s3a_spark(local_spark, pseudo_cluster):
    """``local_spark`` with ``s3a://`` on the pseudo-cluster's S3 endpoint (the S3A jars are cached by
    the cluster's start, and ``spark_session`` loads them)."""
    from cluster.pseudo.testing import point_s3a
    if "hadoop-aws" not in local_spark.sparkContext.getConf().get("spark.jars", ""):
        pytest.fail("local_spark started without the S3A jars: run `tfos-cluster fetch` (make hadoop-jars) "
                    "before the tests", pytrace=False)
    return point_s3a(local_spark, pseudo_cluster)


def own_tf_node_processes():
    """TF node processes this test session started (its descendants): other jobs on the same
    machine are none of these tests' business."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "tfos_jobs.tfnode" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leftover_tf_processes():
    """After every test, success or failure, no TF node process of ours may remain (killed by PID)."""
    yield
    deadline = time.monotonic() + 20
    while own_tf_node_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = own_tf_node_processes()
    for proc in leftover:
        proc.kill()
    assert not leftover, f"TF node processes left behind: {[p.pid for p in leftover]}"
