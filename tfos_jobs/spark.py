"""One place that builds the SparkSession for jobs, tests, benchmarks and notebooks.

Defaults target the embedded setup: ``local-cluster[2,1,MEM]`` gives two real executor processes
(``local[N]`` would run every TF node inside the driver's working directory) with no daemons to start.

Connectors pyspark does not ship: ``s3a://`` (``hadoop-aws`` and the AWS SDK modules) and Kafka
(``spark-sql-kafka-0-10``). ``tfos-cluster fetch`` caches both (``~/.cache/tfos-jobs/hadoop-aws-3.5.0``
and ``spark-sql-kafka-4.2.0``, see ``cluster.pseudo.jars``); a session built here adds the cached jars
to ``spark.jars`` (merged with the ones already set) and, when ``AWS_ENDPOINT_URL(_S3)`` names an
endpoint (as ``tfos-cluster env`` does for the pseudo-cluster's), points ``spark.hadoop.fs.s3a.*`` at
it. Credentials are never put into the Spark conf: S3A reads them from ``AWS_*`` variables or the
Hadoop configuration.
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
#: spark-sql-kafka-0-10_2.13: the newest Maven Central serves; measured with pyspark 4.3.0.
SPARK_KAFKA_VERSION = "4.2.0"
#: Each cached jar set's directory holds this manifest: a header line, then one jar name a line.
JAR_MANIFEST = "MANIFEST.txt"


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
        settings.update(jar_settings(conf))
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
# jars pyspark lacks, cached by `tfos-cluster fetch` (cluster.pseudo.jars fetches; this only reads)


def jar_cache_home(name: str, version: str, env: str) -> Path:
    """Cache directory of one jar set: ``$env`` or ``~/.cache/tfos-jobs/<name>-<version>``
    (``XDG_CACHE_HOME`` moves the cache)."""
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "tfos-jobs" / f"{name}-{version}").resolve()


def cached_jars(home: Path) -> list[str]:
    """The jars (paths) the manifest in ``home`` lists, or ``[]`` when it is absent or one is missing."""
    try:
        names = (home / JAR_MANIFEST).read_text().splitlines()[1:]
    except OSError:
        return []
    jars = [home / "lib" / n for n in names if n]
    return [str(j) for j in jars] if jars and all(j.is_file() for j in jars) else []


def s3a_jars_home() -> Path:
    """Cache directory of the S3A jars: ``TFOS_HADOOP_AWS_JARS`` or ``~/.cache/tfos-jobs/hadoop-aws-<v>``."""
    return jar_cache_home("hadoop-aws", HADOOP_AWS_VERSION, "TFOS_HADOOP_AWS_JARS")


def s3a_jars() -> list[str]:
    """The cached S3A jars (hadoop-aws and the AWS SDK modules), or ``[]``."""
    return cached_jars(s3a_jars_home())


def spark_kafka_jars_home() -> Path:
    """Cache directory of Spark's Kafka connector: ``TFOS_SPARK_KAFKA_JARS`` or
    ``~/.cache/tfos-jobs/spark-sql-kafka-<v>``."""
    return jar_cache_home("spark-sql-kafka", SPARK_KAFKA_VERSION, "TFOS_SPARK_KAFKA_JARS")


def spark_kafka_jars() -> list[str]:
    """The cached jars of ``spark-sql-kafka-0-10`` less pyspark's own (4 jars), or ``[]``."""
    return cached_jars(spark_kafka_jars_home())


def jar_settings(conf: dict[str, str] | None = None) -> dict[str, str]:
    """``spark.jars`` with the cached S3A and Kafka jars appended to those of
    ``$SPARK_CONF_DIR/spark-defaults.conf`` and of ``conf`` (one ``spark.jars`` setting replaces the
    others, so they are kept); ``{}`` when nothing is cached."""
    jars = [*s3a_jars(), *spark_kafka_jars()]
    if not jars:
        return {}
    conf = conf or {}
    listed = [j.strip() for v in (spark_defaults_file().get("spark.jars"), conf.get("spark.jars")) if v
              for j in v.split(",") if j.strip()]
    return {"spark.jars": ",".join(dict.fromkeys([*listed, *jars]))}


def s3_endpoint() -> str | None:
    """The S3 endpoint the AWS SDKs here are told to use (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3a_settings(conf: dict[str, str] | None = None) -> dict[str, str]:
    """``spark.hadoop.fs.s3a.*`` for the endpoint of :func:`s3_endpoint` (path-style, TLS as its
    scheme says), unless ``conf`` or spark-defaults.conf set them (the jars: :func:`jar_settings`).
    No credentials: S3A's default chain reads ``AWS_ACCESS_KEY_ID``/... and core-site."""
    conf = conf or {}
    defaults = spark_defaults_file()
    settings: dict[str, str] = {}
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
