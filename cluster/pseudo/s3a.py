"""Fetch and cache what Spark needs for ``s3a://``: ``hadoop-aws`` of pyspark's Hadoop version (3.5.0)
and the AWS SDK v2 modules its S3A client loads.

pyspark ships Hadoop's shaded client (``hadoop-client-api``/``-runtime``) but not ``hadoop-aws``.
hadoop-aws 3.5.0 declares the SDK's ``bundle`` 2.35.4 (one shaded jar of every AWS service, 686 MB);
S3A only loads the ``s3``, ``s3-transfer-manager`` and ``sts`` modules and their closure (the
``apache-client`` for requests, ``netty-nio-client`` for the async client that multipart uploads
and copies use), 13 MB in all. Jars pyspark already ships (netty, Apache HttpClient, commons-codec,
commons-logging, slf4j) are left out: two versions of one library on a classpath break things.

Resolved with the ordinary Maven client (``mvn dependency:copy-dependencies`` on a generated pom) into
``~/.cache/tfos-jobs/hadoop-aws-3.5.0`` (``TFOS_HADOOP_AWS_JARS`` overrides it), beside the Hadoop
server jars; idempotent: a complete cache (its manifest) is left alone. ``tfos_jobs.spark`` reads the
cache (``s3a_jars()``) and adds the jars to ``spark.jars``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tfos_jobs.spark import HADOOP_AWS_VERSION, S3A_MANIFEST, s3a_jars, s3a_jars_home

from .errors import ClusterError

#: The SDK version hadoop-aws 3.5.0 is built against (hadoop-project's ``aws-java-sdk-v2.version``).
AWS_SDK_VERSION = "2.35.4"
#: The SDK modules S3A loads (measured: class loading of writes, multipart uploads, renames (copies),
#: listings, deletes and a streaming query's checkpoint); their dependencies come with them.
SDK_MODULES = ("s3", "s3-transfer-manager", "sts")
#: Dependencies pyspark's own ``jars/`` provides (group, artifact pattern): never fetched.
PROVIDED_BY_SPARK = (("io.netty", "*"), ("org.apache.httpcomponents", "*"), ("commons-codec", "*"),
                     ("commons-logging", "*"), ("org.slf4j", "*"))
#: Jars that must be in a complete cache.
REQUIRED = (f"hadoop-aws-{HADOOP_AWS_VERSION}.jar",
            *(f"{m}-{AWS_SDK_VERSION}.jar" for m in (*SDK_MODULES, "apache-client", "netty-nio-client")))


def home() -> Path:
    return s3a_jars_home()


def lib_dir() -> Path:
    return home() / "lib"


def _exclusions() -> str:
    return "".join(f"<exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
                   for g, a in PROVIDED_BY_SPARK)


def pom() -> str:
    """The pom whose runtime closure is the cache: hadoop-aws without the SDK bundle, plus the modules."""
    ex = _exclusions()
    deps = [
        "    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-aws</artifactId>"
        f"<version>{HADOOP_AWS_VERSION}</version><exclusions>{ex}<exclusion><groupId>software.amazon.awssdk"
        "</groupId><artifactId>bundle</artifactId></exclusion></exclusions></dependency>",
        *("    <dependency><groupId>software.amazon.awssdk</groupId>"
          f"<artifactId>{m}</artifactId><version>{AWS_SDK_VERSION}</version>"
          f"<exclusions>{ex}</exclusions></dependency>" for m in SDK_MODULES)]
    body = "\n".join(deps)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tfos-jobs</groupId>
  <artifactId>hadoop-aws-fetch</artifactId>
  <version>{HADOOP_AWS_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def manifest_header() -> str:
    return f"hadoop-aws-{HADOOP_AWS_VERSION} awssdk-{AWS_SDK_VERSION} " + ",".join(SDK_MODULES)


def is_fetched() -> bool:
    """True when the cache holds every jar its manifest lists, and the manifest is of this version."""
    try:
        first = (home() / S3A_MANIFEST).read_text().splitlines()[0]
    except (OSError, IndexError):
        return False
    return first == manifest_header() and bool(s3a_jars())


def artifact_id(jar_name: str) -> str:
    """``netty-common-4.1.126.Final.jar`` -> ``netty-common``."""
    return re.sub(r"-\d[\w.+-]*\.jar$", "", jar_name)


def spark_jar_ids() -> set[str]:
    """Artifact ids of the jars pyspark ships (its ``jars/``)."""
    import pyspark
    return {artifact_id(p.name) for p in (Path(pyspark.__file__).resolve().parent / "jars").glob("*.jar")}


def fetch(quiet: bool = False, timeout: float = 900) -> Path:
    """Make sure the S3A jars are cached; return their directory. No network when already complete."""
    if is_fetched():
        return lib_dir()
    mvn = shutil.which("mvn")
    if not mvn:
        raise ClusterError(
            f"hadoop-aws {HADOOP_AWS_VERSION} jars (for s3a://) are not cached in {home()} and Maven "
            "('mvn') is not on PATH to fetch them. Install Maven (e.g. apt-get install maven) and run "
            "'tfos-cluster fetch' (or 'make hadoop-jars').")
    home().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home()))
    try:
        (work / "pom.xml").write_text(pom())
        out = work / "lib"
        cmd = [mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={out}"]
        if quiet:
            cmd.insert(2, "-q")
        else:
            print(f"Fetching hadoop-aws {HADOOP_AWS_VERSION} and AWS SDK {AWS_SDK_VERSION} modules with "
                  f"Maven into {home()} ...", flush=True)
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"'mvn dependency:copy-dependencies' (hadoop-aws) did not finish in "
                               f"{timeout:.0f}s") from None
        if proc.returncode != 0 or not out.is_dir():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise ClusterError(f"Maven could not fetch hadoop-aws {HADOOP_AWS_VERSION} "
                               f"(exit {proc.returncode}):\n{tail}")
        names = sorted(p.name for p in out.glob("*.jar"))
        missing = [n for n in REQUIRED if n not in names]
        if missing:
            raise ClusterError(f"Maven finished but these jars are missing: {missing}")
        final = lib_dir()
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
        (home() / "pom.xml").write_text(pom())
        tmp = home() / (S3A_MANIFEST + ".tmp")
        tmp.write_text("\n".join([manifest_header(), *names]) + "\n")
        tmp.replace(home() / S3A_MANIFEST)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"S3A jars cached: {len(names)} files, {cache_size() / 2**20:.1f} MiB in {final}")
    return final


def cache_size() -> int:
    """Bytes of the cached jars."""
    return sum(p.stat().st_size for p in lib_dir().glob("*.jar")) if lib_dir().is_dir() else 0
