"""What ``package``, ``submit`` and ``emr`` share: the error they raise, the resources a TF job asks
of YARN and the Spark settings those resources become (kept here so that none imports another)."""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable


class DeployError(RuntimeError):
    """Bad deployment input or a cluster that cannot run the job; the message says which."""


@dataclasses.dataclass
class Resources:
    tf_nodes: int = 2                       # executors: one TF node each
    executor_memory: str = "1g"             # JVM heap: Spark itself needs little for a TF node
    executor_memory_overhead: str = "2g"    # off-heap: the Python worker and the TF process
    driver_memory: str = "1g"
    driver_memory_overhead: str = "1g"      # the driver's Python (TF is imported there too)
    am_memory: str = "512m"                 # client mode: YARN's ExecutorLauncher


def mib(text: str | int) -> int:
    """Spark/JVM memory string ('512m', '2g', '1024') -> MiB."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)b?\s*", str(text).lower())
    if not m:
        raise DeployError(f"not a memory size: {text!r} (use e.g. 512m or 2g)")
    n, unit = int(m.group(1)), m.group(2) or "m"
    return {"k": n // 1024, "m": n, "g": n * 1024, "t": n * 1024 * 1024}[unit]


def tf_conf(res: Resources) -> dict:
    """Spark settings every TF-on-YARN job needs (also the EMR spark-defaults classification)."""
    if res.tf_nodes < 1:
        raise DeployError(f"tf_nodes must be at least 1, got {res.tf_nodes}")
    return {
        # one TF node per executor: one task slot per executor, exactly as many executors as nodes
        "spark.executor.instances": str(res.tf_nodes),
        "spark.executor.cores": "1",
        "spark.task.cpus": "1",
        "spark.dynamicAllocation.enabled": "false",
        "spark.executor.memory": res.executor_memory,
        "spark.executor.memoryOverhead": res.executor_memory_overhead,
        "spark.driver.memory": res.driver_memory,
        "spark.driver.memoryOverhead": res.driver_memory_overhead,
        "spark.yarn.am.memory": res.am_memory,
        # a failed TF node fails the job at once; the runtime restarts whole TF clusters itself
        "spark.task.maxFailures": "1",
        "spark.yarn.maxAppAttempts": "1",
        # start the job only once every executor is there (the runtime also waits, with a timeout)
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.yarn.appMasterEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    }


def refuse_credentials(values: Iterable[str], what: str = "") -> None:
    """DeployError when a URI in ``values`` carries credentials (``s3://KEY:SECRET@bucket``). The
    storage layer refuses them too, but only once the job reads them: by then they would have shown in
    steps.json, YARN and process listings. The message names the host, never the secret."""
    from ..redaction import URI
    for value in values:
        if "@" not in value:
            continue
        from hdfs_io.uri import reject_credentials
        for uri in URI.findall(value):
            try:
                reject_credentials(uri)
            except ValueError as exc:
                raise DeployError(f"{what}: {exc}" if what else str(exc)) from None
