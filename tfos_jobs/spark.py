"""One place that builds the SparkSession for jobs, tests, benchmarks and notebooks.

Defaults target the embedded setup: ``local-cluster[2,1,MEM]`` gives two real executor processes
(``local[N]`` would run every TF node inside the driver's working directory) with no daemons to start.

``s3a://``: pyspark ships Hadoop's client but not ``hadoop-aws`` nor the AWS SDK. ``tfos-cluster fetch``
caches them (``~/.cache/tfos-jobs/hadoop-aws-3.5.0``, see ``cluster.pseudo.s3a``); a session built here
adds the cached jars to ``spark.jars`` and, when ``AWS_ENDPOINT_URL(_S3)`` names an endpoint (as
``tfos-cluster env`` does for the pseudo-cluster's), points ``spark.hadoop.fs.s3a.*`` at it. Credentials
are never put into the Spark conf: S3A reads them from ``AWS_*`` variables or the Hadoop configuration.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

DEFAULT_EXECUTORS = 2
DEFAULT_EXECUTOR_MEMORY_MB = 2048

#: hadoop-aws must be the Hadoop version of pyspark's own client jars (hadoop-client-api 3.5.0).
HADOOP_AWS_VERSION = "3.5.0"
S3A_MANIFEST = "MANIFEST.txt"


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
    if given is None:
        # Under spark-submit its --jars and spark-defaults.conf decide: jars set now would miss the
        # driver's class loader.
        settings.update(s3a_settings(conf))
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


# ---------------------------------------------------------------------------------------------------
# s3a://: hadoop-aws and the AWS SDK modules it loads, cached by `tfos-cluster fetch`


def s3a_jars_home() -> Path:
    """Cache directory of the S3A jars: ``TFOS_HADOOP_AWS_JARS`` or ``~/.cache/tfos-jobs/hadoop-aws-<v>``
    (beside the Hadoop server jars of ``cluster.pseudo.jars``; ``XDG_CACHE_HOME`` moves both)."""
    env = os.environ.get("TFOS_HADOOP_AWS_JARS")
    if env:
        return Path(env).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "tfos-jobs" / f"hadoop-aws-{HADOOP_AWS_VERSION}").resolve()


def s3a_jars() -> list[str]:
    """The cached S3A jars (paths), or ``[]`` when the cache is absent or incomplete."""
    home = s3a_jars_home()
    try:
        names = (home / S3A_MANIFEST).read_text().splitlines()[1:]
    except OSError:
        return []
    jars = [home / "lib" / n for n in names if n]
    return [str(j) for j in jars] if jars and all(j.is_file() for j in jars) else []


def s3_endpoint() -> str | None:
    """The S3 endpoint the AWS SDKs here are told to use (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3a_settings(conf: dict[str, str] | None = None) -> dict[str, str]:
    """Spark settings that let ``s3a://`` work: the cached S3A jars appended to ``spark.jars`` (those of
    ``conf`` and of ``$SPARK_CONF_DIR/spark-defaults.conf`` kept: a setting here would replace them),
    and ``spark.hadoop.fs.s3a.*`` for the endpoint of :func:`s3_endpoint` (path-style, TLS as its
    scheme says). No credentials: S3A's default chain reads ``AWS_ACCESS_KEY_ID``/... and core-site."""
    conf = conf or {}
    defaults = spark_defaults_file()
    settings: dict[str, str] = {}
    jars = s3a_jars()
    if jars:
        listed = [j for v in (defaults.get("spark.jars"), conf.get("spark.jars")) if v
                  for j in v.split(",") if j.strip()]
        settings["spark.jars"] = ",".join(dict.fromkeys([*listed, *jars]))
    endpoint = s3_endpoint()
    if endpoint:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        s3a = {"endpoint": endpoint, "path.style.access": "true",
               "connection.ssl.enabled": str(endpoint.lower().startswith("https://")).lower()}
        if region:
            s3a["endpoint.region"] = region
        for key, value in s3a.items():
            key = f"spark.hadoop.fs.s3a.{key}"
            if key not in conf and key not in defaults:
                settings[key] = value
    return settings


def spark_defaults_file() -> dict[str, str]:
    """``spark-defaults.conf`` of ``SPARK_CONF_DIR`` (else ``SPARK_HOME/conf``), as spark-submit reads it
    (``key value`` or ``key=value`` lines, ``#`` comments); ``{}`` when there is none."""
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None)
    if not conf_dir:
        return {}
    try:
        text = Path(conf_dir, "spark-defaults.conf").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, value = re.match(r"([^\s=:]+)\s*[=:\s]?\s*(.*)", line).groups()
            out[key] = value.strip()
    return out
