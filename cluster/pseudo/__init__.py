"""The local pseudo-cluster: HDFS, YARN, Spark standalone and S3 (moto) on 127.0.0.1.

``config`` lays it out (options, ports, directories, config files, service definitions), ``jars``
fetches Hadoop's server jars, ``manager`` starts, checks and stops the processes, ``cli`` is
``tfos-cluster`` and ``testing`` the pytest plugin and test helpers.  Nothing here is shipped to
YARN containers: deployment (``cluster.deployment``) does not depend on it.
"""
from .config import cluster_home
from .errors import ClusterError
from .jars import fetch as fetch_jars
from .manager import client_env, connection, down, is_up, rss_total, status, up

__all__ = ["ClusterError", "up", "down", "status", "connection", "client_env", "is_up",
           "rss_total", "fetch_jars", "cluster_home"]
