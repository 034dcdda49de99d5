"""Fetch and cache the Java artifacts pyspark does not ship: the Apache Hadoop 3.5.0 server jars
(HDFS and YARN daemons), the Apache Kafka broker (KRaft mode), Spark's Kafka connector and what
Spark needs for ``s3a://`` (hadoop-aws and AWS SDK modules).

pyspark ships only Hadoop's shaded *client* jars, so the NameNode, DataNode, ResourceManager and
NodeManager classes come from the Maven artifacts of the same Hadoop release; likewise the Kafka
broker, ``spark-sql-kafka-0-10`` and ``hadoop-aws``.  Each *bundle* is resolved with the ordinary
Maven client (``mvn dependency:copy-dependencies`` on a small generated pom) and copied into its own
directory of one cache, by default ``~/.cache/tfos-jobs/<bundle>-<version>`` (override per bundle
with ``TFOS_HADOOP_JARS``, ``TFOS_KAFKA_JARS``, ``TFOS_SPARK_KAFKA_JARS``,
``TFOS_HADOOP_AWS_JARS``).  Fetching is idempotent: a complete bundle is recognised by its manifest
and left alone.  ``tfos_jobs.spark`` reads the Spark-side bundles (S3A, Kafka) into ``spark.jars``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tfos_jobs.spark import HADOOP_AWS_VERSION, JAR_MANIFEST, SPARK_KAFKA_VERSION, cached_jars, jar_cache_home

from .errors import ClusterError

HADOOP_VERSION = "3.5.0"
KAFKA_VERSION = "4.1.1"          # the broker (KRaft only since 4.0; Java 17+)
LOG4J_VERSION = "2.24.3"         # the broker's logging backend (Kafka 4 logs through log4j2)
SLF4J_VERSION = "2.0.17"

#: The Hadoop artifacts whose runtime closure makes up the daemons' classpath.
ARTIFACTS = (
    "hadoop-common",
    "hadoop-hdfs",
    "hadoop-hdfs-client",
    "hadoop-yarn-server-resourcemanager",
    "hadoop-yarn-server-nodemanager",
    # The ResourceManager web app binds classes of the timeline service.
    "hadoop-yarn-server-timelineservice",
)

MANIFEST = JAR_MANIFEST


@dataclass(frozen=True)
class Bundle:
    """One set of jars: Maven coordinates (group, artifact, version), where it is cached, which
    jars must be there, and what to do with the resolved directory before it is installed."""
    name: str
    version: str
    env: str                                          # override of its cache directory
    deps: tuple[tuple[str, str, str], ...]
    required: tuple[str, ...]                         # jar file names that must be fetched
    extra_pom: str = ""                               # more <dependency> elements
    prepare: Callable[[Path, Path], None] | None = None   # (work dir, lib dir) before install
    keep: Callable[[str], bool] | None = None         # which resolved jars to keep (default: all)
    header_extra: Callable[[], str] | None = None     # more for the manifest's first line
    header_text: str = ""                             # the manifest's first line, when fixed
    exclude: tuple[tuple[str, str], ...] = ()         # (group, artifact) excluded from every dep

    def home(self) -> Path:
        return jar_cache_home(self.name, self.version, self.env)

    def lib(self) -> Path:
        return self.home() / "lib"

    def header(self) -> str:
        if self.header_text:
            return self.header_text
        head = f"{self.name}-{self.version} " + ",".join(a for _, a, _ in self.deps)
        return head + (f" {self.header_extra()}" if self.header_extra else "")

    def pom(self) -> str:
        ex = "".join(f"<exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
                     for g, a in self.exclude)
        ex = f"<exclusions>{ex}</exclusions>" if ex else ""
        deps = "\n".join(
            f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
            f"<version>{v}</version>{ex}</dependency>" for g, a, v in self.deps) + self.extra_pom
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tfos-jobs</groupId>
  <artifactId>{self.name}-fetch</artifactId>
  <version>{self.version}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""

    def jars(self) -> list[Path]:
        """The cached jars listed in the manifest (empty when not fetched)."""
        return [Path(j) for j in cached_jars(self.home())] if is_fetched(self) else []


# ---------------------------------------------------------------------------------------------
# Hadoop


def _hadoop_prepare(work: Path, lib: Path) -> None:
    _unpack_webapps(lib / f"hadoop-hdfs-{HADOOP_VERSION}-tests.jar", work / "webapps-root")


HADOOP = Bundle(
    name="hadoop", version=HADOOP_VERSION, env="TFOS_HADOOP_JARS",
    deps=tuple(("org.apache.hadoop", a, HADOOP_VERSION) for a in ARTIFACTS),
    required=tuple(f"{a}-{HADOOP_VERSION}.jar" for a in ARTIFACTS),
    # The HDFS web UIs (webapps/hdfs, webapps/datanode) are not in the published hadoop-hdfs jar,
    # only in its "tests" jar: fetch that one too and unpack just webapps/ (see _unpack_webapps).
    extra_pom=(
        "\n    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-hdfs</artifactId>"
        f"<version>{HADOOP_VERSION}</version><classifier>tests</classifier>"
        "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion>"
        "</exclusions></dependency>"),
    prepare=_hadoop_prepare)

# ---------------------------------------------------------------------------------------------
# Kafka broker: kafka_2.13 (kafka.Kafka, kafka.tools.StorageTool) and a log4j2 backend for slf4j.

KAFKA = Bundle(
    name="kafka", version=KAFKA_VERSION, env="TFOS_KAFKA_JARS",
    deps=(("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
          ("org.slf4j", "slf4j-api", SLF4J_VERSION),
          ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
          ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION)),
    required=(f"kafka_2.13-{KAFKA_VERSION}.jar", f"kafka-clients-{KAFKA_VERSION}.jar",
              f"kafka-server-{KAFKA_VERSION}.jar", f"log4j-core-{LOG4J_VERSION}.jar"))


# ---------------------------------------------------------------------------------------------
# Spark's Kafka source/sink, less every artifact pyspark's own jars/ already holds (Spark, Scala,
# the Hadoop client, compression codecs): two versions of one library on a classpath break things.

def _artifact_id(jar_name: str) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients``."""
    return re.sub(r"-\d[\w.+-]*\.jar$", "", jar_name)


def _pyspark_jars() -> tuple[str, set[str]]:
    """(pyspark version, artifact ids of the jars it ships)."""
    try:
        import pyspark
    except ImportError:
        return "none", set()
    jars_dir = Path(pyspark.__file__).resolve().parent / "jars"
    return pyspark.__version__, {_artifact_id(p.name) for p in jars_dir.glob("*.jar")}


def _spark_kafka_keep(jar_name: str) -> bool:
    return _artifact_id(jar_name) not in _pyspark_jars()[1]


SPARK_KAFKA = Bundle(
    name="spark-sql-kafka", version=SPARK_KAFKA_VERSION, env="TFOS_SPARK_KAFKA_JARS",
    deps=(("org.apache.spark", "spark-sql-kafka-0-10_2.13", SPARK_KAFKA_VERSION),),
    required=(f"spark-sql-kafka-0-10_2.13-{SPARK_KAFKA_VERSION}.jar",
              f"spark-token-provider-kafka-0-10_2.13-{SPARK_KAFKA_VERSION}.jar"),
    keep=_spark_kafka_keep,
    header_extra=lambda: f"for-pyspark-{_pyspark_jars()[0]}")

# ---------------------------------------------------------------------------------------------
# s3a:// for Spark: hadoop-aws of pyspark's Hadoop version.  hadoop-aws 3.5.0 declares the AWS SDK's
# ``bundle`` 2.35.4 (every AWS service in one shaded jar, 686 MB); S3A only loads the ``s3``,
# ``s3-transfer-manager`` and ``sts`` modules and their closure (``apache-client`` for requests,
# ``netty-nio-client`` for the async client of multipart uploads and copies), 13 MB in all.  What
# pyspark's jars/ holds (netty, Apache HttpClient, commons-codec, commons-logging, slf4j) is excluded.

#: The SDK version hadoop-aws 3.5.0 is built against (hadoop-project's ``aws-java-sdk-v2.version``).
AWS_SDK_VERSION = "2.35.4"
#: The SDK modules S3A loads (measured: class loading of writes, multipart uploads, renames (copies),
#: listings, deletes and a streaming query's checkpoint); their dependencies come with them.
SDK_MODULES = ("s3", "s3-transfer-manager", "sts")
#: Dependencies pyspark's own ``jars/`` provides (group, artifact pattern): never fetched.
PROVIDED_BY_SPARK = (("io.netty", "*"), ("org.apache.httpcomponents", "*"), ("commons-codec", "*"),
                     ("commons-logging", "*"), ("org.slf4j", "*"))

HADOOP_AWS = Bundle(
    name="hadoop-aws", version=HADOOP_AWS_VERSION, env="TFOS_HADOOP_AWS_JARS",
    deps=(("org.apache.hadoop", "hadoop-aws", HADOOP_AWS_VERSION),
          *(("software.amazon.awssdk", m, AWS_SDK_VERSION) for m in SDK_MODULES)),
    required=(f"hadoop-aws-{HADOOP_AWS_VERSION}.jar",
              *(f"{m}-{AWS_SDK_VERSION}.jar"
                for m in (*SDK_MODULES, "apache-client", "netty-nio-client"))),
    exclude=(*PROVIDED_BY_SPARK, ("software.amazon.awssdk", "bundle")),
    header_text=f"hadoop-aws-{HADOOP_AWS_VERSION} awssdk-{AWS_SDK_VERSION} " + ",".join(SDK_MODULES))

BUNDLES = (HADOOP, KAFKA, SPARK_KAFKA, HADOOP_AWS)


# ---------------------------------------------------------------------------------------------
# Hadoop paths (the daemons' classpath)


def jars_home() -> Path:
    """Directory of the cached Hadoop jars (``TFOS_HADOOP_JARS`` or the user cache)."""
    return HADOOP.home()


def lib_dir() -> Path:
    return HADOOP.lib()


def kafka_lib_dir() -> Path:
    """Directory of the Kafka broker's jars (``TFOS_KAFKA_JARS``/lib or the user cache)."""
    return KAFKA.lib()


def spark_kafka_jars() -> list[Path]:
    """The jars Spark needs on top of pyspark's own to read and write Kafka; empty when not fetched."""
    return SPARK_KAFKA.jars()


def s3a_jars() -> list[Path]:
    """The jars Spark needs on top of pyspark's own for ``s3a://``; empty when not fetched."""
    return HADOOP_AWS.jars()


def webapps_root() -> Path:
    """Classpath entry holding ``webapps/`` (the HDFS web UIs)."""
    return jars_home() / "webapps-root"


# ---------------------------------------------------------------------------------------------
# fetching


def is_fetched(bundle: Bundle | None = None) -> bool:
    """True when the cache holds a complete, verified set of jars (of ``bundle``, default all)."""
    if bundle is None:
        return all(is_fetched(b) for b in BUNDLES)
    manifest = bundle.home() / MANIFEST
    if not manifest.is_file():
        return False
    lines = manifest.read_text().splitlines()
    if not lines or lines[0] != bundle.header():
        return False
    names = lines[1:]
    ok = bool(names) and all((bundle.lib() / n).is_file() for n in names)
    if bundle is HADOOP:
        ok = ok and (webapps_root() / "webapps" / "hdfs").is_dir()
    return ok


def fetch(quiet: bool = False, timeout: float = 900) -> Path:
    """Make sure every bundle (Hadoop, Kafka broker, Spark's Kafka connector, S3A) is cached; return the
    directory of the Hadoop jars.  Idempotent: does nothing (and needs no network) when complete."""
    for b in BUNDLES:
        fetch_bundle(b, quiet=quiet, timeout=timeout)
    return lib_dir()


def _copy_dependencies(mvn: str, work: Path, out: Path, label: str, quiet: bool, timeout: float) -> None:
    """Run Maven's ``dependency:copy-dependencies`` on ``work/pom.xml`` into ``out``."""
    cmd = [mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={out}"]
    if quiet:
        cmd.insert(2, "-q")
    else:
        print(f"Fetching {label} jars with Maven into {work.parent} ...", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"'mvn dependency:copy-dependencies' did not finish in {timeout:.0f}s") from None
    if proc.returncode != 0 or not out.is_dir():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ClusterError(f"Maven could not fetch the {label} jars (exit {proc.returncode}):\n{tail}")


def fetch_bundle(bundle: Bundle, quiet: bool = False, timeout: float = 900) -> Path:
    """Make sure one bundle is cached; return its lib directory."""
    home = bundle.home()
    label = f"{bundle.name} {bundle.version}"
    if is_fetched(bundle):
        return bundle.lib()
    mvn = shutil.which("mvn")
    if not mvn:
        raise ClusterError(
            f"{label} jars are not cached in {home} and Maven ('mvn') is not on "
            "PATH to fetch them. Install Maven (e.g. apt-get install maven) and run "
            "'tfos-cluster fetch' (or 'make hadoop-jars')."
        )
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home))
    try:
        (work / "pom.xml").write_text(bundle.pom())
        out = work / "lib"
        _copy_dependencies(mvn, work, out, label, quiet, timeout)
        if bundle.prepare:
            bundle.prepare(work, out)
        if bundle.keep:
            for p in out.glob("*.jar"):
                if not bundle.keep(p.name):
                    p.unlink()
        names = sorted(p.name for p in out.glob("*.jar"))
        missing = [r for r in bundle.required if r not in names]
        if missing:
            raise ClusterError(f"Maven finished but these jars are missing: {missing}")
        final = bundle.lib()
        moves = [(final, out)]
        if bundle is HADOOP:
            moves.append((webapps_root(), work / "webapps-root"))
        for old, new in moves:
            if old.exists():
                shutil.rmtree(old)
            new.rename(old)
        (home / "pom.xml").write_text(bundle.pom())
        tmp = home / (MANIFEST + ".tmp")
        tmp.write_text("\n".join([bundle.header(), *names]) + "\n")
        tmp.replace(home / MANIFEST)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"{label} jars cached: {len(names)} files, {cache_size(bundle) / 2**20:.0f} MiB "
              f"in {final}")
    return final


def _unpack_webapps(tests_jar: Path, dest: Path) -> None:
    if not tests_jar.is_file():
        raise ClusterError(f"Maven did not fetch {tests_jar.name} (HDFS web UI resources)")
    with zipfile.ZipFile(tests_jar) as z:
        members = [m for m in z.namelist() if m.startswith("webapps/") and ".." not in m]
        z.extractall(dest, members)
    if not (dest / "webapps" / "hdfs").is_dir():
        raise ClusterError(f"{tests_jar.name} holds no webapps/hdfs")
    tests_jar.unlink()


def cache_size(bundle: Bundle | None = None) -> int:
    """Bytes used by the cache (of ``bundle``; default every bundle)."""
    if bundle is None:
        return sum(cache_size(b) for b in BUNDLES)
    home = bundle.home()
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) if home.is_dir() else 0
