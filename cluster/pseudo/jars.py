"""Fetch and cache the Apache Hadoop 3.5.0 server jars (HDFS and YARN daemons).

pyspark ships only Hadoop's shaded *client* jars, so the NameNode, DataNode, ResourceManager and
NodeManager classes come from the Maven artifacts of the same Hadoop release.  They are resolved
with the ordinary Maven client (``mvn dependency:copy-dependencies`` on a small generated pom) and
copied into a cache directory, by default ``~/.cache/tfos-jobs/hadoop-3.5.0`` (override with
``TFOS_HADOOP_JARS``).  Fetching is idempotent: a complete cache is recognised by its manifest and
left alone.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .errors import ClusterError

HADOOP_VERSION = "3.5.0"

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

MANIFEST = "MANIFEST.txt"


def jars_home() -> Path:
    """Directory of the cached Hadoop jars (``TFOS_HADOOP_JARS`` or the user cache)."""
    env = os.environ.get("TFOS_HADOOP_JARS")
    if env:
        return Path(env).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "tfos-jobs" / f"hadoop-{HADOOP_VERSION}").resolve()


def lib_dir() -> Path:
    return jars_home() / "lib"


def _pom() -> str:
    deps = "\n".join(
        "    <dependency><groupId>org.apache.hadoop</groupId>"
        f"<artifactId>{a}</artifactId><version>{HADOOP_VERSION}</version></dependency>"
        for a in ARTIFACTS
    )
    # The HDFS web UIs (webapps/hdfs, webapps/datanode) are not in the published hadoop-hdfs jar,
    # only in its "tests" jar: fetch that one too and unpack just webapps/ (see _unpack_webapps).
    deps += (
        "\n    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-hdfs</artifactId>"
        f"<version>{HADOOP_VERSION}</version><classifier>tests</classifier>"
        "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion>"
        "</exclusions></dependency>")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tfos-jobs</groupId>
  <artifactId>hadoop-daemons-fetch</artifactId>
  <version>{HADOOP_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def _manifest_header() -> str:
    return f"hadoop-{HADOOP_VERSION} " + ",".join(ARTIFACTS)


def is_fetched() -> bool:
    """True when the cache holds a complete, verified set of jars."""
    manifest = jars_home() / MANIFEST
    if not manifest.is_file():
        return False
    lines = manifest.read_text().splitlines()
    if not lines or lines[0] != _manifest_header():
        return False
    names = lines[1:]
    return (bool(names) and all((lib_dir() / n).is_file() for n in names)
            and (webapps_root() / "webapps" / "hdfs").is_dir())


def fetch(quiet: bool = False, timeout: float = 900) -> Path:
    """Make sure the Hadoop jars are cached; return the directory that holds them.

    Idempotent: does nothing (and needs no network) when the cache is complete.
    """
    home = jars_home()
    if is_fetched():
        return lib_dir()
    mvn = shutil.which("mvn")
    if not mvn:
        raise ClusterError(
            f"Hadoop {HADOOP_VERSION} jars are not cached in {home} and Maven ('mvn') is not on "
            "PATH to fetch them. Install Maven (e.g. apt-get install maven) and run "
            "'tfos-cluster fetch' (or 'make hadoop-jars')."
        )
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home))
    try:
        (work / "pom.xml").write_text(_pom())
        out = work / "lib"
        cmd = [mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={out}"]
        if quiet:
            cmd.insert(2, "-q")
        if not quiet:
            print(f"Fetching Hadoop {HADOOP_VERSION} jars with Maven into {home} ...", flush=True)
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"'mvn dependency:copy-dependencies' did not finish in {timeout:.0f}s")
        if proc.returncode != 0 or not out.is_dir():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise ClusterError(f"Maven could not fetch the Hadoop {HADOOP_VERSION} jars "
                               f"(exit {proc.returncode}):\n{tail}")
        _unpack_webapps(out / f"hadoop-hdfs-{HADOOP_VERSION}-tests.jar", work / "webapps-root")
        names = sorted(p.name for p in out.glob("*.jar"))
        missing = [a for a in ARTIFACTS if f"{a}-{HADOOP_VERSION}.jar" not in names]
        if missing:
            raise ClusterError(f"Maven finished but these jars are missing: {missing}")
        final = lib_dir()
        for old, new in ((final, out), (webapps_root(), work / "webapps-root")):
            if old.exists():
                shutil.rmtree(old)
            new.rename(old)
        (home / "pom.xml").write_text(_pom())
        tmp = home / (MANIFEST + ".tmp")
        tmp.write_text("\n".join([_manifest_header(), *names]) + "\n")
        tmp.replace(home / MANIFEST)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"Hadoop jars cached: {len(names)} files, {cache_size() / 2**20:.0f} MiB in {final}")
    return final


def webapps_root() -> Path:
    """Classpath entry holding ``webapps/`` (the HDFS web UIs)."""
    return jars_home() / "webapps-root"


def _unpack_webapps(tests_jar: Path, dest: Path) -> None:
    if not tests_jar.is_file():
        raise ClusterError(f"Maven did not fetch {tests_jar.name} (HDFS web UI resources)")
    with zipfile.ZipFile(tests_jar) as z:
        members = [m for m in z.namelist() if m.startswith("webapps/") and ".." not in m]
        z.extractall(dest, members)
    if not (dest / "webapps" / "hdfs").is_dir():
        raise ClusterError(f"{tests_jar.name} holds no webapps/hdfs")
    tests_jar.unlink()


def cache_size() -> int:
    """Bytes used by the cache (jars and web UI resources)."""
    home = jars_home()
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) if home.is_dir() else 0
