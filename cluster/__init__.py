"""A real local pseudo-cluster for tests, notebooks and demos, bound to 127.0.0.1:

- HDFS: NameNode + DataNode (Apache Hadoop 3.5.0, jars fetched with Maven and cached),
- YARN: ResourceManager + NodeManager able to run Spark applications,
- Spark standalone: a master and N workers (pyspark's own jars),
- S3: an S3-compatible HTTP endpoint (moto server) with a bucket.

State lives in ``TFOS_CLUSTER_HOME`` (default ``<repo>/work/cluster``): logs, data, PIDs, the Hadoop
conf dir ``conf/`` and ``connection.json``.  Command line: ``tfos-cluster up|down|status``.
"""
from .errors import ClusterError
from .jars import fetch as fetch_jars
from .manager import client_env, connection, down, is_up, rss_total, status, up
from .config import cluster_home

__all__ = ["ClusterError", "up", "down", "status", "connection", "client_env", "is_up",
           "rss_total", "fetch_jars", "cluster_home"]
