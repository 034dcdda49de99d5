"""Layout of the pseudo-cluster: options, ports, directories, generated config files and the
definition of every service (command line, dependencies, health check)."""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from xml.sax.saxutils import escape

from . import jars
from . import kafka as kafka_client
from .errors import ClusterError

HOST = "127.0.0.1"
DEFAULT_PORT_BASE = 19800
S3_ACCESS_KEY = "tfos-access-key"
S3_SECRET_KEY = "tfos-secret-key"
S3_REGION = "us-east-1"

# Port offsets from the port base.  Every port a daemon binds is pinned here, on 127.0.0.1.
OFFSETS = {
    "nn.rpc": 0, "nn.http": 1, "dn.data": 2, "dn.http": 3, "dn.ipc": 4,
    "nn.https": 5, "nn.secondary": 6, "dn.https": 7,
    "rm.address": 10, "rm.scheduler": 11, "rm.tracker": 12, "rm.admin": 13, "rm.web": 14,
    "rm.https": 15,
    "nm.address": 20, "nm.localizer": 21, "nm.web": 22, "nm.collector": 23, "nm.amrmproxy": 24,
    "nm.https": 25,
    "kafka": 27, "kafka.controller": 28,
    "s3": 29,
    "spark.master": 30, "spark.master.web": 31,
    # spark workers: 40 + 2*i (rpc) and 41 + 2*i (web UI)
}
MAX_WORKERS = 30


def repo_root() -> Path | None:
    """The source checkout this package runs from (cluster/pseudo/ is two levels down), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.cfg").is_file() else None


def cluster_home() -> Path:
    """State directory: ``TFOS_CLUSTER_HOME`` or ``<repo>/work/cluster``."""
    env = os.environ.get("TFOS_CLUSTER_HOME")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root() or Path.cwd()
    return (root / "work" / "cluster").resolve()


def default_port_base() -> int:
    return int(os.environ.get("TFOS_CLUSTER_PORT_BASE", DEFAULT_PORT_BASE))


@dataclass(frozen=True)
class Options:
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "1g"
    port_base: int = DEFAULT_PORT_BASE
    bucket: str = "tfos"
    nm_memory_mb: int = 4096
    nm_vcores: int = 4

    def validate(self) -> "Options":
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ClusterError(f"workers must be between 0 and {MAX_WORKERS}")
        if self.worker_cores < 1:
            raise ClusterError("worker_cores must be at least 1")
        if not re.fullmatch(r"\d+[mMgG]", self.worker_memory):
            raise ClusterError(f"worker_memory must look like 512m or 1g, not {self.worker_memory!r}")
        if not 1024 <= self.port_base <= 65535 - 41 - 2 * MAX_WORKERS:
            raise ClusterError(f"port_base {self.port_base} out of range")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{2,62}", self.bucket):
            raise ClusterError(f"invalid bucket name {self.bucket!r}")
        return self

    def port(self, key: str) -> int:
        return self.port_base + OFFSETS[key]

    def worker_ports(self, i: int) -> tuple[int, int]:
        return self.port_base + 40 + 2 * i, self.port_base + 41 + 2 * i

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Layout:
    """Paths inside the state directory."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.conf = self.home / "conf"
        self.spark_conf = self.home / "spark-conf"
        self.kafka_conf = self.home / "kafka-conf"
        self.data = self.home / "data"
        self.logs = self.home / "logs"
        self.run = self.home / "run"
        self.state = self.home / "state.json"
        self.connection = self.home / "connection.json"
        self.lock = self.home / ".lock"
        self.name_dir = self.data / "hdfs" / "name"
        self.data_dir = self.data / "hdfs" / "data"
        self.tmp = self.data / "tmp"
        self.nm_local = self.data / "yarn" / "local"
        self.nm_logs = self.logs / "yarn-containers"
        self.kafka_data = self.data / "kafka"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def formatted(self) -> bool:
        return (self.name_dir / "current" / "VERSION").is_file()

    def kafka_formatted(self) -> bool:
        """The broker's log dir was formatted (``kafka-storage format`` wrote its meta.properties)."""
        return (self.kafka_data / "meta.properties").is_file()


# ---------------------------------------------------------------------------------------------
# Java


def find_java() -> tuple[str, int]:
    """Return (JAVA_HOME, major version); raise ClusterError if no Java 17+ is found."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    import shutil
    exe = shutil.which("java")
    if exe:
        candidates.append(Path(os.path.realpath(exe)).parent.parent)
    for jh in candidates:
        java = jh / "bin" / "java"
        if not os.access(java, os.X_OK):
            continue
        try:
            out = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                                 timeout=30).stderr
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        if not m:
            continue
        major = int(m.group(1))
        if major == 1 and m.group(2):
            major = int(m.group(2))
        if major >= 17:
            return str(jh), major
        raise ClusterError(f"Java {major} found at {jh}, but the pseudo-cluster needs Java 17 or "
                           "newer (pyspark 4.3 and Hadoop 3.5). Set JAVA_HOME to a JDK 17+.")
    raise ClusterError("Java not found: the pseudo-cluster (Hadoop 3.5, Spark 4.3) needs Java 17 "
                       "or newer. Install it (e.g. apt-get install openjdk-17-jre-headless) and set "
                       "JAVA_HOME or put 'java' on PATH.")


def spark_home() -> Path:
    import pyspark
    return Path(pyspark.__file__).resolve().parent


def spark_scala_version() -> str:
    for jar in (spark_home() / "jars").glob("spark-core_*.jar"):
        m = re.match(r"spark-core_(\d+\.\d+)-", jar.name)
        if m:
            return m.group(1)
    return "2.13"


# Lean JVM settings: small heaps, serial GC, C1 only (fast start, small code cache).
JVM_LEAN = [
    "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:ReservedCodeCacheSize=48m",
    "-XX:MaxMetaspaceSize=192m", "-Xss512k", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.net.preferIPv4Stack=true", "-Djava.awt.headless=true",
]
# What Spark's launcher adds for Java 17; Hadoop's web apps need some of it too.
ADD_OPENS = ["-XX:+IgnoreUnrecognizedVMOptions"] + [
    f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
        "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio",
        "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "jdk.internal.ref",
        "sun.nio.ch", "sun.nio.cs", "sun.security.action", "sun.util.calendar")
] + ["-Djdk.reflect.useDirectMethodHandle=false", "-Dio.netty.tryReflectionSetAccessible=true"]

HEAPS = {"namenode": "256m", "datanode": "160m", "resourcemanager": "320m",
         "nodemanager": "224m", "spark-master": "192m", "spark-worker": "128m", "kafka": "256m"}


# ---------------------------------------------------------------------------------------------
# Config files


def _site(props: dict) -> str:
    body = "\n".join(
        f"  <property><name>{escape(k)}</name><value>{escape(str(v))}</value></property>"
        for k, v in props.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{body}\n</configuration>\n'


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _core_site(lay: Layout, opts: Options) -> dict:
    p, h = opts.port, HOST
    return {
        "fs.defaultFS": f"hdfs://{h}:{p('nn.rpc')}",
        "hadoop.tmp.dir": str(lay.tmp),
        "hadoop.security.authentication": "simple",
        "ipc.client.connect.retry.interval": 500,
        # S3A for Hadoop/Spark clients: the endpoint (as in spark-defaults.conf, see s3a_conf) and the
        # credentials, which only this file and connection.json hold (never the Spark conf).
        **s3a_conf(opts),
        "fs.s3a.access.key": S3_ACCESS_KEY,
        "fs.s3a.secret.key": S3_SECRET_KEY,
    }


def s3a_conf(opts: Options) -> dict:
    """``fs.s3a.*`` that point S3A at this cluster's S3 endpoint (no credentials)."""
    return {
        "fs.s3a.endpoint": f"http://{HOST}:{opts.port('s3')}",
        "fs.s3a.endpoint.region": S3_REGION,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
    }


def _hdfs_site(lay: Layout, opts: Options) -> dict:
    return {
        "dfs.replication": 1,
        "dfs.namenode.name.dir": f"file://{lay.name_dir}",
        "dfs.datanode.data.dir": f"file://{lay.data_dir}",
        **_loopback(opts, {
            "dfs.namenode.rpc-address": "nn.rpc",
            "dfs.namenode.http-address": "nn.http",
            "dfs.namenode.https-address": "nn.https",
            "dfs.namenode.secondary.http-address": "nn.secondary",
            "dfs.datanode.address": "dn.data",
            "dfs.datanode.http.address": "dn.http",
            "dfs.datanode.https.address": "dn.https",
            "dfs.datanode.ipc.address": "dn.ipc"}),
        "dfs.datanode.hostname": HOST,
        "dfs.namenode.datanode.registration.ip-hostname-check": "false",
        "dfs.permissions.enabled": "false",
        "dfs.namenode.safemode.extension": 0,
        "dfs.namenode.handler.count": 5,
        "dfs.namenode.service.handler.count": 5,
        "dfs.datanode.handler.count": 3,
        "dfs.heartbeat.interval": 1,
        "dfs.webhdfs.enabled": "true",
    }


def _loopback(opts: Options, ports: dict[str, str]) -> dict:
    """``{property: port key}`` -> ``{property: "127.0.0.1:PORT"}``: every address a daemon binds."""
    return {prop: f"{HOST}:{opts.port(key)}" for prop, key in ports.items()}


def _resourcemanager_site(opts: Options) -> dict:
    return {
        "yarn.resourcemanager.hostname": HOST,
        **_loopback(opts, {
            "yarn.resourcemanager.address": "rm.address",
            "yarn.resourcemanager.scheduler.address": "rm.scheduler",
            "yarn.resourcemanager.resource-tracker.address": "rm.tracker",
            "yarn.resourcemanager.admin.address": "rm.admin",
            "yarn.resourcemanager.webapp.address": "rm.web",
            "yarn.resourcemanager.webapp.https.address": "rm.https"}),
        "yarn.resourcemanager.connect.retry-interval.ms": 1000,
        # A NodeManager whose ResourceManager is gone gives up after 60 s, not 15 min.
        "yarn.resourcemanager.connect.max-wait.ms": 60000,
        "yarn.resourcemanager.recovery.enabled": "false",
        "yarn.resourcemanager.client.thread-count": 5,
        "yarn.resourcemanager.scheduler.client.thread-count": 5,
        "yarn.resourcemanager.resource-tracker.client.thread-count": 5,
        "yarn.resourcemanager.admin.client.thread-count": 1,
        "yarn.system-metrics-publisher.enabled": "false",
        "yarn.timeline-service.enabled": "false",
    }


def _nodemanager_site(lay: Layout, opts: Options) -> dict:
    return {
        "yarn.nodemanager.hostname": HOST,
        **_loopback(opts, {
            "yarn.nodemanager.address": "nm.address",
            "yarn.nodemanager.localizer.address": "nm.localizer",
            "yarn.nodemanager.webapp.address": "nm.web",
            "yarn.nodemanager.webapp.https.address": "nm.https",
            "yarn.nodemanager.collector-service.address": "nm.collector",
            "yarn.nodemanager.amrmproxy.address": "nm.amrmproxy"}),
        "yarn.nodemanager.resource.memory-mb": opts.nm_memory_mb,
        "yarn.nodemanager.resource.cpu-vcores": opts.nm_vcores,
        "yarn.scheduler.minimum-allocation-mb": 256,
        "yarn.scheduler.maximum-allocation-mb": opts.nm_memory_mb,
        "yarn.scheduler.minimum-allocation-vcores": 1,
        "yarn.scheduler.maximum-allocation-vcores": opts.nm_vcores,
        "yarn.nodemanager.vmem-check-enabled": "false",
        "yarn.nodemanager.pmem-check-enabled": "false",
        "yarn.nodemanager.local-dirs": str(lay.nm_local),
        "yarn.nodemanager.log-dirs": str(lay.nm_logs),
        "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": 99,
        "yarn.nodemanager.recovery.enabled": "false",
        "yarn.nodemanager.localizer.client.thread-count": 2,
        "yarn.nodemanager.localizer.fetch.thread-count": 2,
        "yarn.nodemanager.container-manager.thread-count": 5,
        "yarn.nodemanager.env-whitelist": ("JAVA_HOME,HADOOP_COMMON_HOME,HADOOP_HDFS_HOME,"
                                           "HADOOP_CONF_DIR,CLASSPATH_PREPEND_DISTCACHE,"
                                           "HADOOP_YARN_HOME,HADOOP_HOME,PATH,LANG,TZ"),
        "yarn.log-aggregation-enable": "false",
    }


CAPACITY_SCHEDULER = {
    "yarn.scheduler.capacity.root.queues": "default",
    "yarn.scheduler.capacity.root.default.capacity": 100,
    "yarn.scheduler.capacity.root.default.maximum-capacity": 100,
    "yarn.scheduler.capacity.maximum-am-resource-percent": 0.5,
    "yarn.scheduler.capacity.root.default.user-limit-factor": 1,
    "yarn.scheduler.capacity.root.default.state": "RUNNING",
}

# Daemons log to stderr (their log file); the per-request and audit loggers only at WARN.
LOG4J = "\n".join([
    "hadoop.root.logger=INFO,console",
    "log4j.rootLogger=${hadoop.root.logger}",
    "log4j.threshold=ALL",
    "log4j.appender.console=org.apache.log4j.ConsoleAppender",
    "log4j.appender.console.target=System.err",
    "log4j.appender.console.layout=org.apache.log4j.PatternLayout",
    "log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n",
    "log4j.appender.NullAppender=org.apache.log4j.varia.NullAppender",
    "log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR",
    "log4j.logger.org.apache.hadoop.hdfs.StateChange=WARN",
    "log4j.logger.BlockStateChange=WARN",
    "log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN",
    "log4j.logger.org.apache.hadoop.yarn.server.resourcemanager.RMAuditLogger=WARN",
    "log4j.logger.org.apache.hadoop.yarn.server.nodemanager.NMAuditLogger=WARN",
    "log4j.logger.org.apache.hadoop.conf.Configuration.deprecation=WARN",
    "log4j.logger.http.requests=WARN",
    "log4j.logger.requests=WARN",
    "",
])


def write_conf(lay: Layout, opts: Options, python: str) -> None:
    """(Re)write the Hadoop conf dir and the Spark conf dir; deterministic for given options."""
    yarn = {**_resourcemanager_site(opts), **_nodemanager_site(lay, opts)}
    _write(lay.conf / "core-site.xml", _site(_core_site(lay, opts)))
    _write(lay.conf / "hdfs-site.xml", _site(_hdfs_site(lay, opts)))
    _write(lay.conf / "yarn-site.xml", _site(yarn))
    _write(lay.conf / "capacity-scheduler.xml", _site(CAPACITY_SCHEDULER))
    _write(lay.conf / "log4j.properties", LOG4J)
    _write(lay.spark_conf / "spark-defaults.conf",
           "".join(f"{k} {v}\n" for k, v in spark_defaults(python, opts).items()))
    _write(lay.kafka_conf / "server.properties",
           "".join(f"{k}={v}\n" for k, v in kafka_server_properties(lay, opts).items()))
    _write(lay.kafka_conf / "log4j2.properties", KAFKA_LOG4J2)


# ---------------------------------------------------------------------------------------------
# Kafka broker: one KRaft node that is its own controller, on 127.0.0.1 only.

KAFKA_NODE_ID = 1


def kafka_cluster_id(lay: Layout) -> str:
    """A KRaft cluster id (22 characters of URL-safe base64, 16 bytes) fixed for this cluster home.

    The first byte's top bit is cleared so the id never starts with '-' (one home in 64 did): the
    storage tool's argument parser would read such an id as an option and refuse to format.
    """
    digest = bytearray(hashlib.sha256(str(lay.home).encode()).digest()[:16])
    digest[0] &= 0x7F
    return base64.urlsafe_b64encode(bytes(digest)).decode().rstrip("=")


def kafka_server_properties(lay: Layout, opts: Options) -> dict:
    p = opts.port
    return {
        "process.roles": "broker,controller",
        "node.id": KAFKA_NODE_ID,
        "controller.quorum.voters": f"{KAFKA_NODE_ID}@{HOST}:{p('kafka.controller')}",
        "listeners": f"PLAINTEXT://{HOST}:{p('kafka')},CONTROLLER://{HOST}:{p('kafka.controller')}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{p('kafka')}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(lay.kafka_data),
        "num.partitions": 1,
        "auto.create.topics.enable": "true",
        # one broker: every internal topic has one replica
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "log.retention.hours": 24,
        "log.segment.bytes": 16 * 2**20,
    }


KAFKA_LOG4J2 = "\n".join([
    "rootLogger.level=INFO",
    "rootLogger.appenderRef.console.ref=console",
    "appender.console.type=Console",
    "appender.console.name=console",
    "appender.console.layout.type=PatternLayout",
    "appender.console.layout.pattern=%d{ISO8601} %p %c{1}: %m%n",
    "logger.kafka.name=kafka",
    "logger.kafka.level=INFO",
    "logger.apache.name=org.apache.kafka",
    "logger.apache.level=WARN",
    "",
])


def spark_defaults(python: str, opts: Options | None = None) -> dict:
    """Spark settings for jobs on this cluster (written to spark-conf/spark-defaults.conf). With
    ``opts``: ``s3a://`` and Kafka too, the cached S3A and spark-sql-kafka jars (``tfos-cluster
    fetch``) in ``spark.jars`` and ``spark.hadoop.fs.s3a.*`` on the cluster's endpoint; the
    credentials stay in core-site.xml."""
    s3a = {}
    if opts is not None:
        from tfos_jobs.spark import s3a_jars, spark_kafka_jars
        jars_ = [*s3a_jars(), *spark_kafka_jars()]
        s3a = {**({"spark.jars": ",".join(jars_)} if jars_ else {}),
               **{f"spark.hadoop.{k}": v for k, v in s3a_conf(opts).items()}}
    return {
        # The NodeManager runs on this host: point YARN containers at pyspark's own jars instead
        # of uploading ~460 MB of jars to HDFS for every application.
        "spark.yarn.jars": f"local:{spark_home() / 'jars'}/*",
        "spark.yarn.maxAppAttempts": 1,
        "spark.yarn.am.memory": "384m",
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        "spark.driver.host": HOST,
        "spark.driver.bindAddress": HOST,
        "spark.ui.showConsoleProgress": "false",
        **s3a,
    }


# ---------------------------------------------------------------------------------------------
# HTTP helpers (never through a proxy, always with a timeout)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 3.0, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() if method != "HEAD" else b""


def http_json(url: str, timeout: float = 3.0) -> Any:
    status, body = http_get(url, timeout)
    if status != 200:
        raise OSError(f"HTTP {status} from {url}")
    return json.loads(body)


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _jmx(port: int, query: str) -> dict:
    beans = http_json(f"http://{HOST}:{port}/jmx?qry={query}").get("beans") or []
    if not beans:
        raise OSError(f"no JMX bean {query}")
    return beans[0]


# ---------------------------------------------------------------------------------------------
# Services

Health = Callable[[], tuple[bool, str]]


@dataclass
class Service:
    name: str
    group: str                      # hdfs | yarn | spark | s3 | kafka
    argv: list[str]
    env: dict[str, str]
    port: int                       # main port (RPC / endpoint)
    ports: list[int]                # every port it binds
    ui: str | None
    health: Health
    after: list[tuple[str, int]] = field(default_factory=list)  # (service, port) to wait for
    # run once before the first start (e.g. formatting storage), unless ``initialized()`` says done
    init_argv: list[str] | None = None
    initialized: Callable[[], bool] | None = None

    def describe(self) -> dict:
        return {"service": self.name, "group": self.group, "port": self.port, "ports": self.ports,
                "ui": self.ui}


def _safe(fn: Health) -> Health:
    def wrapped():
        try:
            return fn()
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            return False, f"{type(e).__name__}: {e}"
    return wrapped


def _nn_health(opts: Options) -> tuple[bool, str]:
    st = _jmx(opts.port("nn.http"), "Hadoop:service=NameNode,name=NameNodeStatus")
    info = _jmx(opts.port("nn.http"), "Hadoop:service=NameNode,name=NameNodeInfo")
    if st.get("State") != "active":
        return False, f"state {st.get('State')}"
    if info.get("Safemode"):
        return False, "in safe mode"
    return True, "active, out of safe mode"


def _dn_health(opts: Options) -> tuple[bool, str]:
    _jmx(opts.port("dn.http"), "Hadoop:service=DataNode,name=DataNodeInfo")
    fs = _jmx(opts.port("nn.http"), "Hadoop:service=NameNode,name=FSNamesystemState")
    live = fs.get("NumLiveDataNodes", 0)
    return live >= 1, f"{live} live datanode(s) registered with the namenode"


def _rm_health(opts: Options) -> tuple[bool, str]:
    info = http_json(f"http://{HOST}:{opts.port('rm.web')}/ws/v1/cluster/info")["clusterInfo"]
    ok = info.get("state") == "STARTED" and info.get("haState", "ACTIVE") == "ACTIVE"
    return ok, f"{info.get('state')} {info.get('haState', '')}".strip()


def _nm_health(opts: Options) -> tuple[bool, str]:
    http_json(f"http://{HOST}:{opts.port('nm.web')}/ws/v1/node/info")
    nodes = http_json(f"http://{HOST}:{opts.port('rm.web')}/ws/v1/cluster/nodes")
    nodes = (nodes.get("nodes") or {}).get("node") or []
    # The node id is "<host name of 127.0.0.1>:<port>", e.g. localhost:19820.
    mine = [n for n in nodes if str(n.get("id", "")).endswith(f":{opts.port('nm.address')}")]
    if not mine:
        return False, "not registered with the resourcemanager yet"
    n = mine[0]
    return n.get("state") == "RUNNING", (
        f"{n.get('state')}, {n.get('availMemoryMB', '?')} MB / "
        f"{n.get('availableVirtualCores', '?')} vcores available")


def _master_health(opts: Options) -> tuple[bool, str]:
    j = http_json(f"http://{HOST}:{opts.port('spark.master.web')}/json/")
    return j.get("status") == "ALIVE", f"{j.get('status')}, {j.get('aliveworkers', 0)} worker(s)"


def _worker_health(opts: Options, port: int) -> tuple[bool, str]:
    j = http_json(f"http://{HOST}:{opts.port('spark.master.web')}/json/")
    for w in j.get("workers", []):
        if w.get("port") == port and w.get("state") == "ALIVE":
            return True, f"ALIVE, {w.get('cores')} cores, {w.get('memory')} MB"
    return False, "not registered with the master yet"


def _s3_health(opts: Options) -> tuple[bool, str]:
    status, _ = http_get(f"http://{HOST}:{opts.port('s3')}/")
    if status != 200:
        return False, f"HTTP {status}"
    bstatus, _ = http_get(f"http://{HOST}:{opts.port('s3')}/{opts.bucket}", method="HEAD")
    return True, "up, bucket " + (f"'{opts.bucket}' present" if bstatus == 200
                                  else f"'{opts.bucket}' missing (HTTP {bstatus})")


def _kafka_health(opts: Options) -> tuple[bool, str]:
    port = opts.port("kafka")
    versions = kafka_client.api_versions(HOST, port, timeout=3.0)
    md = kafka_client.metadata(HOST, port, topics=[], timeout=3.0)
    if (HOST, port) not in md.brokers.values():
        return False, f"answers ({len(versions)} APIs) but no broker registered yet"
    node = next(n for n, addr in md.brokers.items() if addr == (HOST, port))
    return True, f"KRaft broker {node} up, cluster id {md.cluster_id}"


def _check(fn: Callable[..., tuple[bool, str]], *args) -> Health:
    """A health check bound to its arguments that reports errors instead of raising them."""
    return _safe(functools.partial(fn, *args))


def _base_env(lay: Layout, java_home: str, python: str) -> dict[str, str]:
    """What every daemon (and every process it starts) sees."""
    return {
        "JAVA_HOME": java_home,
        "HADOOP_CONF_DIR": str(lay.conf),
        "YARN_CONF_DIR": str(lay.conf),
        "HADOOP_HOME": str(jars.jars_home()),
        "SPARK_HOME": str(spark_home()),
        "SPARK_CONF_DIR": str(lay.spark_conf),
        "SPARK_LOCAL_IP": HOST,
        # Spark's launcher (used by workers to start executors) needs it without spark-class.
        "SPARK_SCALA_VERSION": spark_scala_version(),
        "PYSPARK_PYTHON": python,
        "PATH": f"{Path(python).parent}:{Path(java_home) / 'bin'}:{os.environ.get('PATH', '')}",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": os.environ.get("HOME", "/tmp"),
    }


@dataclass(frozen=True)
class _Jvm:
    """Command lines of the daemons' JVMs; the -D markers let ``down`` find strays by command line."""
    lay: Layout
    java_home: str

    def argv(self, name: str, heap: str, cp: str, main: str, *args: str, props=()) -> list[str]:
        java = str(Path(self.java_home) / "bin" / "java")
        return [java, "-Xms32m", f"-Xmx{heap}", *JVM_LEAN, *ADD_OPENS,
                f"-Dtfos.cluster.home={self.lay.home}", f"-Dtfos.cluster.service={name}",
                *props, "-cp", cp, main, *args]


def _hadoop_services(lay: Layout, opts: Options, jvm: _Jvm, env: dict) -> list[Service]:
    p = opts.port
    cp = f"{lay.conf}:{jars.webapps_root()}:{jars.lib_dir()}/*"
    props = (f"-Dhadoop.log.dir={lay.logs}", f"-Dyarn.log.dir={lay.logs}",
             f"-Dhadoop.home.dir={jars.jars_home()}", "-Dhadoop.root.logger=INFO,console",
             "-Dhadoop.security.logger=INFO,NullAppender", "-Dhadoop.id.str=tfos")

    def daemon(name: str, main: str) -> list[str]:
        return jvm.argv(name, HEAPS[name], cp, main, props=props)

    return [
        Service("namenode", "hdfs", daemon("namenode", "org.apache.hadoop.hdfs.server.namenode.NameNode"),
                env, p("nn.rpc"), [p("nn.rpc"), p("nn.http")],
                f"http://{HOST}:{p('nn.http')}", _check(_nn_health, opts)),
        Service("datanode", "hdfs", daemon("datanode", "org.apache.hadoop.hdfs.server.datanode.DataNode"),
                env, p("dn.data"), [p("dn.data"), p("dn.http"), p("dn.ipc")],
                f"http://{HOST}:{p('dn.http')}", _check(_dn_health, opts),
                after=[("namenode", p("nn.rpc"))]),
        Service("resourcemanager", "yarn",
                daemon("resourcemanager", "org.apache.hadoop.yarn.server.resourcemanager.ResourceManager"),
                env, p("rm.address"),
                [p("rm.address"), p("rm.scheduler"), p("rm.tracker"), p("rm.admin"), p("rm.web")],
                f"http://{HOST}:{p('rm.web')}", _check(_rm_health, opts)),
        Service("nodemanager", "yarn",
                daemon("nodemanager", "org.apache.hadoop.yarn.server.nodemanager.NodeManager"),
                env, p("nm.address"), [p("nm.address"), p("nm.localizer"), p("nm.web")],
                f"http://{HOST}:{p('nm.web')}", _check(_nm_health, opts),
                after=[("resourcemanager", p("rm.tracker"))]),
    ]


def _spark_services(lay: Layout, opts: Options, jvm: _Jvm, env: dict) -> list[Service]:
    p = opts.port
    cp = f"{lay.spark_conf}:{spark_home() / 'jars'}/*"
    master = Service(
        "spark-master", "spark",
        jvm.argv("spark-master", HEAPS["spark-master"], cp, "org.apache.spark.deploy.master.Master",
                 "--host", HOST, "--port", str(p("spark.master")),
                 "--webui-port", str(p("spark.master.web")),
                 # no REST submission server (it would bind port 6066 on its own)
                 props=("-Dspark.master.rest.enabled=false",)),
        env, p("spark.master"), [p("spark.master"), p("spark.master.web")],
        f"http://{HOST}:{p('spark.master.web')}", _check(_master_health, opts))
    workers = []
    for i in range(opts.workers):
        rpc, web = opts.worker_ports(i)
        workers.append(Service(
            f"spark-worker-{i}", "spark",
            jvm.argv(f"spark-worker-{i}", HEAPS["spark-worker"], cp, "org.apache.spark.deploy.worker.Worker",
                     "--host", HOST, "--port", str(rpc), "--webui-port", str(web),
                     "--cores", str(opts.worker_cores), "--memory", opts.worker_memory,
                     "--work-dir", str(lay.data / "spark" / f"worker-{i}"),
                     f"spark://{HOST}:{p('spark.master')}",
                     props=("-Dspark.worker.cleanup.enabled=true",
                            "-Dspark.worker.cleanup.appDataTtl=86400")),
            env, rpc, [rpc, web], f"http://{HOST}:{web}", _check(_worker_health, opts, rpc),
            after=[("spark-master", p("spark.master"))]))
    return [master, *workers]


def _s3_service(opts: Options, env: dict, python: str) -> Service:
    port = opts.port("s3")
    return Service("s3", "s3", [python, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                   {**env, "MOTO_PORT": str(port)}, port, [port],
                   f"http://{HOST}:{port}/moto-api/", _check(_s3_health, opts))


def _kafka_service(lay: Layout, opts: Options, jvm: _Jvm, env: dict) -> Service:
    """The Kafka broker (KRaft, its own controller); its log dir is formatted once (StorageTool)."""
    cp = f"{jars.kafka_lib_dir()}/*"
    props = (f"-Dlog4j2.configurationFile={lay.kafka_conf / 'log4j2.properties'}",)
    server = str(lay.kafka_conf / "server.properties")
    port, ctl = opts.port("kafka"), opts.port("kafka.controller")
    fmt = jvm.argv("kafka-format", "128m", cp, "kafka.tools.StorageTool", "format",
                   "--cluster-id", kafka_cluster_id(lay), "--config", server, "--ignore-formatted",
                   props=props)
    return Service("kafka", "kafka", jvm.argv("kafka", HEAPS["kafka"], cp, "kafka.Kafka", server,
                                              props=props),
                   env, port, [port, ctl], None, _check(_kafka_health, opts),
                   init_argv=fmt, initialized=lay.kafka_formatted)


def build_services(lay: Layout, opts: Options, java_home: str, python: str) -> list[Service]:
    """Every service of the cluster, in start order: HDFS, YARN, Spark, S3, Kafka."""
    env = _base_env(lay, java_home, python)
    jvm = _Jvm(lay, java_home)
    return [*_hadoop_services(lay, opts, jvm, env), *_spark_services(lay, opts, jvm, env),
            _s3_service(opts, env, python), _kafka_service(lay, opts, jvm, env)]


def format_argv(lay: Layout, java_home: str) -> list[str]:
    java = str(Path(java_home) / "bin" / "java")
    return [java, "-Xms32m", "-Xmx192m", *JVM_LEAN, *ADD_OPENS,
            f"-Dtfos.cluster.home={lay.home}", "-Dtfos.cluster.service=namenode-format",
            f"-Dhadoop.log.dir={lay.logs}", "-Dhadoop.root.logger=INFO,console",
            "-cp", f"{lay.conf}:{jars.lib_dir()}/*",
            "org.apache.hadoop.hdfs.server.namenode.NameNode",
            "-format", "-nonInteractive", "-force", "-clusterid", "tfos-pseudo-cluster"]


def connection_info(lay: Layout, opts: Options, java_home: str, python: str,
                    services: list[Service]) -> dict:
    p = opts.port
    return {
        "hdfs": {"uri": f"hdfs://{HOST}:{p('nn.rpc')}", "web": f"http://{HOST}:{p('nn.http')}",
                 "webhdfs": f"http://{HOST}:{p('nn.http')}/webhdfs/v1"},
        "yarn": {"resourcemanager": f"{HOST}:{p('rm.address')}",
                 "web": f"http://{HOST}:{p('rm.web')}",
                 "nodemanager_web": f"http://{HOST}:{p('nm.web')}",
                 "memory_mb": opts.nm_memory_mb, "vcores": opts.nm_vcores},
        "spark": {"master": f"spark://{HOST}:{p('spark.master')}",
                  "web": f"http://{HOST}:{p('spark.master.web')}",
                  "workers": opts.workers, "worker_cores": opts.worker_cores,
                  "worker_memory": opts.worker_memory,
                  "conf_dir": str(lay.spark_conf),
                  "defaults": spark_defaults(python, opts),
                  "home": str(spark_home())},
        "s3": {"endpoint": f"http://{HOST}:{p('s3')}", "bucket": opts.bucket,
               "access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY, "region": S3_REGION,
               "server": "moto"},
        "kafka": {"bootstrap": f"{HOST}:{p('kafka')}", "controller": f"{HOST}:{p('kafka.controller')}",
                  "version": jars.KAFKA_VERSION, "conf": str(lay.kafka_conf / "server.properties")},
        "hadoop_conf_dir": str(lay.conf),
        "java_home": java_home,
        "python": python,
        "home": str(lay.home),
        "hadoop_version": jars.HADOOP_VERSION,
        "options": opts.to_dict(),
        "services": {s.name: {"port": s.port, "ui": s.ui} for s in services},
    }
