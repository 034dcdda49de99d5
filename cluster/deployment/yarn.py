"""The YARN ResourceManager as ``submit`` sees it: its address (from yarn-site.xml), its REST API
(cluster metrics, applications) and the preflight check that a job's containers can ever fit."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

from .resources import DeployError, Resources, mib


def site_value(conf_dir: str | None, file: str, key: str) -> str | None:
    """A property of a Hadoop ``*-site.xml`` in ``conf_dir``; None when absent or unreadable."""
    if not conf_dir:
        return None
    try:
        root = ET.parse(os.path.join(conf_dir, file)).getroot()
    except (OSError, ET.ParseError):
        return None
    for prop in root.iter("property"):
        if prop.findtext("name") == key:
            return prop.findtext("value")
    return None


def loopback_conf(conf_dir: str | None = None) -> dict:
    """A single-host cluster bound to 127.0.0.1 (the pseudo-cluster): the driver in the YARN AM and
    the executors must bind to loopback too (YARN cluster mode drops spark.driver.host)."""
    conf_dir = conf_dir or os.environ.get("YARN_CONF_DIR") or os.environ.get("HADOOP_CONF_DIR")
    host = site_value(conf_dir, "yarn-site.xml", "yarn.resourcemanager.hostname") or ""
    if host not in ("127.0.0.1", "localhost"):
        return {}
    return {"spark.yarn.appMasterEnv.SPARK_LOCAL_IP": "127.0.0.1",
            "spark.executorEnv.SPARK_LOCAL_IP": "127.0.0.1"}


def rm_web(conf_dir: str | None = None) -> str:
    """The ResourceManager's web address from yarn-site.xml (HADOOP_CONF_DIR / YARN_CONF_DIR)."""
    if conf_dir is None:
        conf_dir = os.environ.get("YARN_CONF_DIR") or os.environ.get("HADOOP_CONF_DIR")
    if not conf_dir:
        raise DeployError("--master yarn needs HADOOP_CONF_DIR or YARN_CONF_DIR (the directory of "
                          "yarn-site.xml); on the pseudo-cluster: eval \"$(tfos-cluster env)\"")
    addr = site_value(conf_dir, "yarn-site.xml", "yarn.resourcemanager.webapp.address")
    if not addr:
        host = site_value(conf_dir, "yarn-site.xml", "yarn.resourcemanager.hostname") or "0.0.0.0"
        addr = f"{host}:8088"
    return f"http://{addr}"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _rm(url: str, method: str = "GET", body: dict | None = None, timeout: float = 10) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Accept": "application/json", "Content-Type": "application/json"})
    with _OPENER.open(req, timeout=timeout) as resp:
        text = resp.read().decode()
    return json.loads(text) if text.strip() else {}


def check_yarn(web: str, timeout: float = 10) -> dict:
    """Cluster metrics from the ResourceManager, or a DeployError saying it is unreachable."""
    try:
        info = _rm(f"{web}/ws/v1/cluster/info", timeout=timeout)["clusterInfo"]
        metrics = _rm(f"{web}/ws/v1/cluster/metrics", timeout=timeout)["clusterMetrics"]
        nodes = (_rm(f"{web}/ws/v1/cluster/nodes", timeout=timeout).get("nodes") or {}).get("node") or []
    except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
        raise DeployError(f"the YARN ResourceManager at {web} is not reachable ({exc}); is the cluster "
                          "up and does HADOOP_CONF_DIR/YARN_CONF_DIR point at its yarn-site.xml?") from None
    if info.get("state") != "STARTED":
        raise DeployError(f"the YARN ResourceManager at {web} is {info.get('state')}, not STARTED")
    running = [n for n in nodes if n.get("state") == "RUNNING"]
    return {"totalMB": int(metrics.get("totalMB") or 0), "availableMB": int(metrics.get("availableMB") or 0),
            "totalVirtualCores": int(metrics.get("totalVirtualCores") or 0),
            "nodes": len(running),
            "nodeMB": max((int(n.get("usedMemoryMB", 0)) + int(n.get("availMemoryMB", 0)) for n in running),
                          default=0)}


def _container_mib(heap: str, overhead: str | None, min_alloc: int) -> int:
    h = mib(heap)
    o = mib(overhead) if overhead else max(384, h // 10)
    return -(-(h + o) // min_alloc) * min_alloc


def check_resources(cluster: dict, res: Resources, deploy_mode: str, min_alloc: int = 1024) -> dict:
    """Raise DeployError when the cluster can never hold the AM plus one executor per TF node."""
    am = (_container_mib(res.driver_memory, res.driver_memory_overhead, min_alloc) if deploy_mode == "cluster"
          else _container_mib(res.am_memory, None, min_alloc))
    ex = _container_mib(res.executor_memory, res.executor_memory_overhead, min_alloc)
    need = am + res.tf_nodes * ex
    plan = (f"1 application master of {am} MiB + {res.tf_nodes} executor(s) (one per TF node) of "
            f"{ex} MiB = {need} MiB")
    if cluster["nodes"] == 0:
        raise DeployError("YARN has no RUNNING NodeManager: no container can start")
    if max(am, ex) > cluster["nodeMB"]:
        raise DeployError(f"a container of {max(am, ex)} MiB does not fit on any YARN node (largest: "
                          f"{cluster['nodeMB']} MiB); lower the memory settings")
    if need > cluster["totalMB"]:
        raise DeployError(f"too few YARN resources for {res.tf_nodes} TF nodes: the job needs {plan}; "
                          f"the cluster has {cluster['totalMB']} MiB on {cluster['nodes']} node(s). Use fewer "
                          "TF nodes or smaller executor memory/overhead, or add nodes")
    return {"am_mib": am, "executor_mib": ex, "need_mib": need}


def find_app(web: str, tag: str, since_ms: int = 0) -> dict | None:
    """The newest YARN application carrying ``tag`` started after ``since_ms`` (epoch ms)."""
    try:
        apps = (_rm(f"{web}/ws/v1/cluster/apps?applicationTags={tag}").get("apps") or {}).get("app") or []
    except (OSError, urllib.error.URLError, ValueError):
        return None
    apps = [a for a in apps if int(a.get("startedTime") or 0) >= since_ms]
    return max(apps, key=lambda a: a.get("startedTime", 0)) if apps else None


def kill_app(web: str, app_id: str) -> None:
    """Ask the ResourceManager to kill an application; best effort (the watchdog's last resort)."""
    try:
        _rm(f"{web}/ws/v1/cluster/apps/{app_id}/state", method="PUT", body={"state": "KILLED"})
    except (OSError, urllib.error.URLError, ValueError):
        pass
