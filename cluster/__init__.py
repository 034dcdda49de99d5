"""Two products, one package:

- ``cluster.pseudo``: a real local pseudo-cluster for tests, notebooks and demos, bound to 127.0.0.1
  (HDFS NameNode + DataNode, YARN ResourceManager + NodeManager, Spark standalone master + workers,
  an S3 endpoint), command line ``tfos-cluster up|down|status|env|fetch``;
- ``cluster.deployment``: packaging the toolkit for YARN, watched spark-submit, EMR-style artefacts
  and the probe, command line ``tfos-deploy package|submit|emr``.

State of the pseudo-cluster lives in ``TFOS_CLUSTER_HOME`` (default ``<repo>/work/cluster``).
``cluster.up()``, ``cluster.down()``, ``cluster.status()``, ``cluster.connection()``,
``cluster.client_env()`` ... are the pseudo-cluster's API, and ``from cluster import config, manager,
jars, deploy, emr`` still finds the modules under their old names.

Everything is imported on first use: this file also ships to YARN containers (the code zip carries
the probe), where the pseudo-cluster is neither shipped nor wanted.
"""
import importlib

__all__ = ["ClusterError", "up", "down", "status", "connection", "client_env", "is_up",
           "rss_total", "fetch_jars", "cluster_home"]

# old module names -> where the module lives now
_MODULES = {"config": "cluster.pseudo.config", "manager": "cluster.pseudo.manager",
            "jars": "cluster.pseudo.jars", "cli": "cluster.pseudo.cli",
            "emr": "cluster.deployment.emr"}


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("cluster.pseudo"), name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__, *_MODULES])
