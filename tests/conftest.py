"""Shared pytest fixtures.

The pseudo-cluster fixtures live in ``cluster.testing`` so that notebooks and benchmarks can reuse
them; every test that needs Spark gets its session from ``local_spark`` here (one per test session).
"""
import pytest

pytest_plugins = ["cluster.testing"]


@pytest.fixture(scope="session")
def local_spark():
    """Spark ``local-cluster`` with 3 single-core executors: enough for a ps, a chief and a worker."""
    from tfos_jobs.spark import local_cluster_master, spark_session
    spark = spark_session(local_cluster_master(executors=3, memory_mb=1024), app_name="tfos-tests")
    try:
        yield spark
    finally:
        spark.stop()
