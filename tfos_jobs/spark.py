"""One place that builds the SparkSession for jobs, tests, benchmarks and notebooks.

Defaults target the embedded setup: ``local-cluster[2,1,MEM]`` gives two real executor processes
(``local[N]`` would run every TF node inside the driver's working directory) with no daemons to start.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

DEFAULT_EXECUTORS = 2
DEFAULT_EXECUTOR_MEMORY_MB = 2048


class JavaNotFound(RuntimeError):
    """Spark needs Java 17+ and none was found."""


def java_version(java_home: str | None = None) -> int:
    """Return the major Java version on this machine, or raise :class:`JavaNotFound`."""
    java_home = java_home or os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise JavaNotFound(
            "Java 17 or newer is required by Spark and none was found: install it "
            "(Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    try:
        version = out.split('"')[1]
        major = int(version.split(".")[0] if not version.startswith("1.") else version.split(".")[1])
    except (IndexError, ValueError) as err:
        raise JavaNotFound(f"could not read the Java version from `{java} -version`: {out!r}") from err
    if major < 17:
        raise JavaNotFound(f"Spark 4 needs Java 17 or newer; {java} is Java {major}")
    return major


def local_cluster_master(executors: int = DEFAULT_EXECUTORS, cores: int = 1,
                         memory_mb: int = DEFAULT_EXECUTOR_MEMORY_MB) -> str:
    return f"local-cluster[{executors},{cores},{memory_mb}]"


def spark_session(master: str | None = None, app_name: str = "tfos-jobs", conf: dict[str, str] | None = None) -> Any:
    """Build (or return the active) SparkSession with the settings a TF job on Spark needs.

    * ``spark.task.maxFailures=1``: a failed TF node must fail the job at once; the runtime restarts
      whole TF clusters itself (re-running one node task alone can never rejoin a TF cluster).
    * executors use this interpreter, so the toolkit and TF installed beside it are found.
    * ``spark.executorEnv.PYTHONPATH`` carries the driver's path for a source checkout.
    """
    java_version()
    # Under spark-submit (PySpark's gateway is already running) the master, the app name and every
    # --conf / spark-defaults.conf setting come from spark-submit: ours only fill what it left unset,
    # and 127.0.0.1 is used only when SPARK_LOCAL_IP says so (on a real cluster the driver and the
    # executors must reach each other by host name).
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not submitted:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession   # heavy: loaded only when a session is built

    given = _submitted_conf() if submitted else None
    if given is not None:
        master = master or given.get("spark.master", None)
    master = master or os.environ.get("TFOS_SPARK_MASTER") or local_cluster_master()
    builder = SparkSession.builder
    if not (given is not None and given.get("spark.master", None) == master):
        builder = builder.master(master)
    settings = _settings(master, app_name)
    if given is not None:
        settings = {k: v for k, v in settings.items() if not given.contains(k)}
    if master.startswith("local-cluster"):
        # local-cluster executors find Spark's jars through SPARK_HOME.
        import pyspark
        os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("TFOS_SPARK_LOG_LEVEL", "WARN"))
    return spark


def _submitted_conf() -> Any:
    """spark-submit's settings (its master, --conf and spark-defaults.conf) as a ``SparkConf``."""
    from pyspark import SparkConf, SparkContext
    # pyspark 4: SparkConf() is empty until the gateway is up; connect first to read spark-submit's
    SparkContext._ensure_initialized()
    return SparkConf()


def _settings(master: str, app_name: str) -> dict[str, str]:
    """Our settings for a session on ``master`` (before spark-submit's and the caller's take precedence)."""
    settings = {
        "spark.app.name": app_name,
        "spark.task.maxFailures": "1",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    }
    local_ip = os.environ.get("SPARK_LOCAL_IP")
    if local_ip:
        settings.update({"spark.driver.host": local_ip, "spark.driver.bindAddress": local_ip,
                         "spark.executorEnv.SPARK_LOCAL_IP": local_ip})
    if not master.startswith("yarn"):
        # same-host executors (local-cluster, standalone here): carry a source checkout's path. On
        # YARN the code comes with the job (tfos-deploy: --archives/--py-files), never from our paths.
        settings["spark.executorEnv.PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return settings
