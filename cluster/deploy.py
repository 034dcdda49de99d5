"""Ship the toolkit to YARN and submit its jobs with spark-submit (``tfos-deploy``).

What YARN needs to run our jobs on nodes that have only Java and Python:

* ``tfenv-<key>.tar``: the runtime's third-party Python packages as a relocatable virtual environment
  (``bin/python`` is a symlink to the nodes' interpreter, ``pyvenv.cfg`` points ``home`` at it),
  shipped with ``--archives ...#tfenv``. Built from this machine's installed distributions (the
  dependency closure of ``tfos-jobs``, from each one's RECORD), without pyspark's jars (the cluster
  has Spark) and without test tools; cached under ``~/.cache/tfos-jobs/deploy`` by a key made of
  ``constraints.txt``, ``setup.cfg``, the interpreter and the format, so it is built once. Plain tar by
  default: on one host or a fast network, YARN's copy + untar is cheaper than gunzip (measured, README).
* ``tfos-code-<hash>.zip``: our own packages (``tfos_jobs``, ``hdfs_io``, ``cluster``), rebuilt on every
  ``package`` (milliseconds), shipped with ``--py-files`` so code changes never rebuild the environment.
* ``tfos_main.py``: the spark-submit entry point; ``tfos_main.py tfos_jobs.ctr prep ...`` runs a job's CLI
  module unchanged (``python -m`` semantics).

``submit_argv`` adds the TF-on-YARN settings (one TF node per executor, memory overhead for the TF
process, no task retries, no dynamic allocation) and ``submit`` runs spark-submit with a preflight
(archive present, ResourceManager reachable, enough memory for the TF nodes) and a watchdog that kills
an application left in ACCEPTED, or short of executors, instead of waiting forever.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from tfos_jobs.cli import JobParser, bounded_number, positive_int

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
FORMAT = 1                      # bump when the archive layout changes: it is part of the cache key
MANIFEST = "tfos-package.json"   # written by upload: the current file of each kind
ENV_ALIAS = "tfenv"             # directory name of the unpacked archive in every YARN container
ENV_PYTHON = f"./{ENV_ALIAS}/bin/python"
CODE_PACKAGES = ("tfos_jobs", "hdfs_io", "cluster")
ROOT_DIST = "tfos-jobs"
# Never shipped: test or build tools; libclang (TF lists it but never imports it at run time).
EXCLUDE_DISTS = {"pip", "wheel", "pytest", "pytest-timeout", "moto", "boto3", "tfos-jobs", "libclang"}
# Never shipped either (about 0.9 GiB): Spark's jars (the cluster has Spark; YARN puts its pyspark.zip
# first on PYTHONPATH), C headers for building extensions, the libraries' own test suites.
EXCLUDE_PATTERN = re.compile(
    r"pyspark/(jars|examples|data|bin|sbin|licenses|tests)/"
    r"|tensorflow/include/|pyarrow/(include|src)/"
    r"|(pandas|scipy|statsmodels|numpy|pyarrow)/(.+/)?tests?/")
ENTRY = '''\
"""spark-submit entry point written by tfos-deploy: tfos_main.py MODULE [ARGS...] runs MODULE as
``python -m MODULE ARGS...`` (for example tfos_jobs.ctr or tfos_jobs.survey)."""
import os
import runpy
import sys

if len(sys.argv) < 2:
    sys.exit("usage: tfos_main.py MODULE [ARGS...]  (e.g. tfos_jobs.ctr train ...)")
module = sys.argv.pop(1)
sys.argv[0] = module
made = []
if "PYSPARK_GATEWAY_PORT" in os.environ:
    from pyspark import SparkConf, SparkContext
    # pyspark 4: a SparkConf() made before the gateway is up is empty (no spark.master, no --conf):
    # connect to spark-submit's JVM first so the job's CLI sees spark-submit's settings.
    SparkContext._ensure_initialized()
    _do_init = SparkContext._do_init

    def _record(self, *args, **kwargs):
        made.append(True)
        return _do_init(self, *args, **kwargs)
    SparkContext._do_init = _record
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not isinstance(exc.code, (int, type(None))):
        print(exc.code, file=sys.stderr)
if code == 0 and "PYSPARK_GATEWAY_PORT" in os.environ and not made:
    # YARN cluster mode fails an application whose driver never started a SparkContext
    # ("User did not initialize spark context"); some steps (`tfos-ctr evaluate`) need none.
    conf = SparkConf()
    if conf.get("spark.submit.deployMode", "client") == "cluster":
        SparkContext(conf=conf.set("spark.executor.instances", "0")).stop()
sys.exit(code)
'''


class DeployError(RuntimeError):
    """Bad deployment input or a cluster that cannot run the job; the message says which."""


# ---------------------------------------------------------------------------------------------
# packaging


def cache_dir() -> Path:
    return Path(os.environ.get("TFOS_DEPLOY_CACHE", Path.home() / ".cache" / "tfos-jobs" / "deploy"))


def node_python_default() -> str:
    """The interpreter the nodes run: by default this machine's base interpreter (same path)."""
    base = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(base)


def env_key(node_python: str, compression: str) -> str:
    h = hashlib.sha256()
    for name in ("constraints.txt", "setup.cfg"):
        path = REPO / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    h.update(f"{FORMAT}|{node_python}|{sys.version_info[:3]}|{compression}|"
             f"{sorted(EXCLUDE_DISTS)}|{EXCLUDE_PATTERN.pattern}".encode())
    return h.hexdigest()[:16]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(root: str = ROOT_DIST) -> dict:
    """{normalized name: Distribution} of ``root``'s runtime requirements (markers evaluated, no extras)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    seen: dict = {}
    missing: list[str] = []

    def walk(name: str, extras: frozenset = frozenset()):
        key = _norm(name)
        if key in seen:
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            return
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            walk(req.name, frozenset(req.extras))
    walk(root)
    if missing:
        raise DeployError(f"cannot package the environment: {', '.join(sorted(missing))} required by "
                          f"{root} but not installed here; run `make install` first")
    return {k: d for k, d in seen.items() if k not in EXCLUDE_DISTS}


@dataclasses.dataclass
class Package:
    env_archive: str            # local path of the packed environment (.tar or .tar.gz)
    code_zip: str               # local path of our own packages
    entry: str                  # local path of tfos_main.py
    node_python: str
    env_bytes: int = 0
    env_build_s: float = 0.0    # 0 when the cached archive was reused
    cached: bool = False
    distributions: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _site_relative(dist, rel: str, site: Path) -> str | None:
    """``rel`` (a RECORD path) relative to site-packages, or None when it lies outside (scripts)."""
    path = Path(os.path.normpath(site / rel))
    try:
        return path.relative_to(site).as_posix()
    except ValueError:
        return None


def build_env(node_python: str | None = None, compression: str = "none", force: bool = False,
              log=print) -> tuple[Path, bool, float, int]:
    """Build (or reuse) the packed environment. Returns (path, cached, seconds, distributions)."""
    if compression not in ("none", "gzip"):
        raise DeployError(f"compression must be 'none' or 'gzip', got {compression!r}")
    node_python = node_python or node_python_default()
    if not os.path.isabs(node_python):
        raise DeployError(f"--node-python must be an absolute path on the nodes, got {node_python!r}")
    key = env_key(node_python, compression)
    out = cache_dir() / f"{ENV_ALIAS}-{key}.tar{'.gz' if compression == 'gzip' else ''}"
    dists = dependency_closure()
    if out.exists() and not force:
        return out, True, 0.0, len(dists)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    files = 0
    try:
        raw = open(tmp, "wb")
        # gzip level 1: about 3x faster than tarfile's default level 9 for a few % more bytes
        stream = tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) if compression == "gzip" \
            else tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT)
        with raw, stream as tar:
            def add_bytes(name: str, data: bytes, mode: int = 0o644):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))

            def add_link(name: str, target: str):
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(info)
            home = os.path.dirname(node_python)
            add_bytes("pyvenv.cfg", (f"home = {home}\ninclude-system-site-packages = false\n"
                                     f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
                                     f"executable = {node_python}\n").encode())
            add_link("bin/python", node_python)
            add_link("bin/python3", "python")
            add_link(f"bin/{ver}", "python")
            manifest = {"format": FORMAT, "key": key, "python": ver, "node_python": node_python,
                        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "distributions": {d.metadata["Name"]: d.version for d in dists.values()}}
            add_bytes(f"{ENV_ALIAS}.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
            seen: set[str] = set()
            for dist in sorted(dists.values(), key=lambda d: _norm(d.metadata["Name"])):
                if dist.files is None:
                    raise DeployError(f"{dist.metadata['Name']} has no RECORD: cannot tell its files")
                dist_site = Path(str(dist.locate_file(""))).resolve()
                for f in dist.files:
                    rel = _site_relative(dist, str(f), dist_site)
                    if rel is None or rel in seen or EXCLUDE_PATTERN.match(rel):
                        continue
                    src = dist_site / rel
                    if not src.is_file():
                        continue
                    seen.add(rel)
                    tar.add(str(src), arcname=f"lib/{ver}/site-packages/{rel}", recursive=False)
                    files += 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    took = time.monotonic() - t0
    log(f"packed {len(dists)} distributions ({files} files) into {out} "
        f"({out.stat().st_size / 2**20:.0f} MiB) in {took:.0f} s")
    return out, False, took, len(dists)


def build_code(out_dir: Path) -> Path:
    """Zip our own packages (deterministic: same sources, same bytes, same name)."""
    entries = []
    for pkg in CODE_PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                entries.append((path.relative_to(REPO).as_posix(), path.read_bytes()))
    digest = hashlib.sha256(b"".join(n.encode() + b"\0" + d for n, d in entries)).hexdigest()[:12]
    out = out_dir / f"tfos-code-{digest}.zip"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                z.writestr(info, data)
        os.replace(tmp, out)
    return out


def package(out_dir: str | os.PathLike | None = None, node_python: str | None = None,
            compression: str = "none", force: bool = False, log=print) -> Package:
    """Build everything spark-submit needs to run our jobs on YARN (see the module doc)."""
    node_python = node_python or node_python_default()
    env, cached, took, ndists = build_env(node_python, compression, force, log)
    code_zip, entry = build_code_and_entry(out_dir)
    return Package(env_archive=str(env), code_zip=str(code_zip), entry=str(entry),
                   node_python=node_python, env_bytes=env.stat().st_size, env_build_s=round(took, 1),
                   cached=cached, distributions=ndists)


def build_code_and_entry(out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The code zip and the entry script: all a master whose nodes already have the toolkit's
    dependencies installed (standalone, local-cluster) needs; no packed environment."""
    out = Path(out_dir or REPO / "work" / "deploy")
    out.mkdir(parents=True, exist_ok=True)
    entry = out / "tfos_main.py"
    if not entry.exists() or entry.read_text() != ENTRY:
        entry.write_text(ENTRY)
    return build_code(out), entry


def upload(pkg: Package, dest: str, timeout: float = 900) -> dict:
    """Copy the package's files under ``dest`` (hdfs://, s3://, file://). The environment archive's
    name carries its key, so an archive already there is not copied again. Files are made readable
    by all so YARN's NodeManagers cache the archive across applications (PUBLIC visibility)."""
    import hdfs_io
    uris = {}
    for field in ("env_archive", "code_zip", "entry"):
        local = getattr(pkg, field)
        uri = hdfs_io.join(dest, os.path.basename(local))
        size = os.path.getsize(local)
        have = _bounded(lambda u=uri: hdfs_io.size(u) if hdfs_io.exists(u) else -1, 60, f"look at {uri}")
        if have != size or field == "entry":
            tmp = f"{uri}.{uuid.uuid4().hex[:8]}.tmp"
            _bounded(lambda s=local, t=tmp: hdfs_io.copy(s, t), timeout, f"copy {local} to {tmp}")
            _bounded(lambda t=tmp, u=uri: (hdfs_io.delete(u, missing_ok=True), hdfs_io.rename(t, u)),
                     60, f"rename {tmp}")
        uris[field] = uri
    import hdfs_io as _h
    _bounded(lambda: _write_text(_h.join(dest, MANIFEST), json.dumps(uris, indent=1)), 60, "write the manifest")
    return uris


def _write_text(uri: str, text: str) -> None:
    import hdfs_io
    with hdfs_io.open(uri, "wb") as fh:
        fh.write(text.encode())


def _bounded(fn, timeout: float, what: str):
    """hdfs-native retries without end against a dead NameNode: bound every storage call."""
    import concurrent.futures
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return ex.submit(fn).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise DeployError(f"timed out after {timeout:.0f} s trying to {what}") from None
    finally:
        ex.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------
# spark-submit arguments


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


def env_conf(deploy_mode: str, driver_python: str | None = None) -> dict:
    """Use the shipped environment's python in executors (and in the driver in cluster mode)."""
    driver = ENV_PYTHON if deploy_mode == "cluster" else (driver_python or sys.executable)
    conf = {
        "spark.pyspark.python": ENV_PYTHON,
        "spark.pyspark.driver.python": driver,
        "spark.executorEnv.PYSPARK_PYTHON": ENV_PYTHON,
    }
    if deploy_mode == "cluster":
        conf["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] = ENV_PYTHON
        conf["spark.yarn.appMasterEnv.PYSPARK_DRIVER_PYTHON"] = ENV_PYTHON
    return conf


def submit_argv(module: str, args: list[str], *, env_uri: str, code_uri: str, entry_uri: str,
                master: str = "yarn", deploy_mode: str = "cluster", res: Resources | None = None,
                name: str | None = None, tag: str | None = None, extra_conf: dict | None = None,
                spark_submit: str = "spark-submit") -> list[str]:
    """The spark-submit command line that runs ``python -m module args...`` with the package."""
    if deploy_mode not in ("client", "cluster"):
        raise DeployError(f"deploy mode must be 'client' or 'cluster', got {deploy_mode!r}")
    if deploy_mode == "cluster" and (master.startswith("local") or master.startswith("spark://")):
        # spark-submit refuses it (standalone: "not supported for python applications")
        raise DeployError(f"--master {master} runs Python jobs in client deploy mode only; "
                          "cluster deploy mode needs YARN (or Kubernetes)")
    res = res or Resources()
    argv = [spark_submit, "--master", master, "--deploy-mode", deploy_mode,
            "--name", name or f"{module}{' ' + args[0] if args else ''}"]
    conf = {}
    if master.startswith("yarn"):
        argv += ["--archives", f"{env_uri}#{ENV_ALIAS}", "--py-files", code_uri]
        conf.update(env_conf(deploy_mode))
        conf.update(tf_conf(res))
        conf["spark.yarn.tags"] = ",".join(t for t in ("tfos-deploy", tag) if t)
        conf["spark.yarn.submit.waitAppCompletion"] = "true"
        # a ResourceManager that is down fails spark-submit in 30 s, not Hadoop's 15 min
        conf["spark.hadoop.yarn.resourcemanager.connect.max-wait.ms"] = "30000"
    else:
        # local-cluster / standalone: executors run on machines that have the toolkit installed
        argv += ["--py-files", code_uri]
        conf["spark.task.maxFailures"] = "1"
        if master.startswith("local"):
            # the executors run on this machine: the driver's interpreter has TF and the toolkit
            # (spark-submit's default is whatever `python3` is on PATH)
            conf["spark.pyspark.python"] = conf["spark.pyspark.driver.python"] = sys.executable
        m = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]", master)
        if m and int(m.group(1)) < res.tf_nodes:
            raise DeployError(f"--master {master} starts {m.group(1)} executor(s) but {res.tf_nodes} TF "
                              "nodes need one each")
        if master.startswith("spark://"):
            # standalone: one TF node per executor (a worker with more cores would otherwise start one
            # executor holding every core, and several TF nodes in it), and only as many as TF nodes
            conf.update({"spark.executor.cores": "1", "spark.task.cpus": "1",
                         "spark.cores.max": str(res.tf_nodes), "spark.executor.memory": res.executor_memory,
                         "spark.scheduler.minRegisteredResourcesRatio": "1.0",
                         "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
                         "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2"})
    conf.update(extra_conf or {})
    for k, v in conf.items():
        argv += ["--conf", f"{k}={v}"]
    return argv + [entry_uri, module, *args]


# ---------------------------------------------------------------------------------------------
# preflight and watchdog


def _site_value(conf_dir: str | None, file: str, key: str) -> str | None:
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
    host = _site_value(conf_dir, "yarn-site.xml", "yarn.resourcemanager.hostname") or ""
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
    addr = _site_value(conf_dir, "yarn-site.xml", "yarn.resourcemanager.webapp.address")
    if not addr:
        host = _site_value(conf_dir, "yarn-site.xml", "yarn.resourcemanager.hostname") or "0.0.0.0"
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


def check_uri(uri: str, timeout: float = 30) -> None:
    """A missing archive/script is reported before YARN tries (and fails) to localize it."""
    if "://" not in uri or uri.startswith("file:") or uri.startswith("local:"):
        path = urllib.parse.urlparse(uri).path if "://" in uri else uri
        if not os.path.isfile(path):
            raise DeployError(f"{uri} does not exist: build it with `tfos-deploy package`")
        return
    import hdfs_io
    try:
        ok = _bounded(lambda: hdfs_io.exists(uri), timeout, f"check {uri}")
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError(f"cannot check {uri}: {exc}") from None
    if not ok:
        raise DeployError(f"{uri} does not exist: upload it with `tfos-deploy package --upload DIR`")


def find_app(web: str, tag: str, since_ms: int = 0) -> dict | None:
    """The newest YARN application carrying ``tag`` started after ``since_ms`` (epoch ms)."""
    try:
        apps = (_rm(f"{web}/ws/v1/cluster/apps?applicationTags={tag}").get("apps") or {}).get("app") or []
    except (OSError, urllib.error.URLError, ValueError):
        return None
    apps = [a for a in apps if int(a.get("startedTime") or 0) >= since_ms]
    return max(apps, key=lambda a: a.get("startedTime", 0)) if apps else None


def kill_app(web: str, app_id: str) -> None:
    try:
        _rm(f"{web}/ws/v1/cluster/apps/{app_id}/state", method="PUT", body={"state": "KILLED"})
    except (OSError, urllib.error.URLError, ValueError):
        pass


@dataclasses.dataclass
class Submission:
    returncode: int
    output: str
    app_id: str | None
    state: str | None
    final_status: str | None
    wall_s: float
    diagnostics: str = ""


def spark_ui_startup_race(output: str) -> bool:
    """True when spark-submit died in Spark's own startup race on YARN client mode: the AM's
    ``AddWebUIFilter`` message adds a filter to the UI's handlers while ``SparkUI.attachAllHandlers``
    starts them (not synchronized in Spark 4), and the SparkContext constructor fails with a
    ConcurrentModificationException. Nothing of the job has run then, so one resubmission is safe."""
    return "ConcurrentModificationException" in output and "attachAllHandlers" in output


def submit(argv: list[str], **kwargs) -> Submission:
    """Run spark-submit (``argv`` from :func:`submit_argv`) with preflight checks and a watchdog;
    resubmit once when the driver hit :func:`spark_ui_startup_race` (keyword arguments: see
    :func:`_submit_once`)."""
    sub = _submit_once(argv, **{**kwargs, "check": False})
    if sub.returncode != 0 and spark_ui_startup_race(sub.output):
        log.warning("spark-submit hit Spark's UI startup race (ConcurrentModificationException in "
                    "SparkUI.attachAllHandlers) before the job started; submitting once more")
        sub = _submit_once(argv, **{**kwargs, "check": False})
    if kwargs.get("check", True):
        _raise_for(sub)
    return sub


def _submit_once(argv: list[str], *, env: dict | None = None, timeout: float = 1800, accept_timeout: float = 120,
                 executor_timeout: float = 180, register_timeout: float = 600, res: Resources | None = None,
                 check: bool = True, conf_dir: str | None = None) -> Submission:
    import psutil
    res = res or Resources()
    env = {**os.environ, **(env or {})}
    # The submitter's interpreter settings must not leak into YARN containers (Spark copies them).
    for k in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        env.pop(k, None)
    master = argv[argv.index("--master") + 1]
    mode = argv[argv.index("--deploy-mode") + 1] if "--deploy-mode" in argv else "client"
    for flag in ("--archives", "--py-files"):
        if flag in argv:
            check_uri(argv[argv.index(flag) + 1].split("#")[0])
    entry = next((a for a in argv[1:] if a.endswith("tfos_main.py")), None)
    if entry:
        check_uri(entry)
    web = tag = None
    if master.startswith("yarn"):
        conf_dir = conf_dir or env.get("YARN_CONF_DIR") or env.get("HADOOP_CONF_DIR") or ""
        web = rm_web(conf_dir)
        cluster = check_yarn(web)
        min_alloc = int(_site_value(conf_dir, "yarn-site.xml", "yarn.scheduler.minimum-allocation-mb") or 1024)
        check_resources(cluster, res, mode, min_alloc)
        tag = next((c.split("=", 1)[1].split(",")[-1] for c in argv if c.startswith("spark.yarn.tags=")), None)
        if not tag or tag == "tfos-deploy":
            raise DeployError("submit_argv(..., tag=...) is needed to watch the YARN application")
    t0 = time.monotonic()
    since_ms = int(time.time() * 1000) - 5000
    app = None
    problem = None
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        since = {"ACCEPTED": None, "short": None}
        try:
            while proc.poll() is None:
                time.sleep(2)
                now = time.monotonic()
                if now - t0 > timeout:
                    problem = f"spark-submit did not finish within {timeout:.0f} s"
                    break
                if not web:
                    continue
                app = find_app(web, tag, since_ms) or app
                if not app:
                    continue
                state = app.get("state")
                if state == "ACCEPTED":
                    # ACCEPTED lasts until the driver registers with the RM; only the wait for the AM
                    # container itself (no resources) is what would otherwise last forever.
                    launched = bool(app.get("amContainerLogs")) or "launched" in (app.get("diagnostics") or "")
                    key = "launched" if launched else "ACCEPTED"
                    since[key] = since.get(key) or now
                    if not launched and now - since["ACCEPTED"] > accept_timeout:
                        problem = (f"YARN application {app['id']} stayed ACCEPTED for {accept_timeout:.0f} s without "
                                   "a container for its application master: too few free resources in the queue. "
                                   f"Diagnostics: {(app.get('diagnostics') or '').strip()[:500]}")
                        break
                    if launched and now - since["launched"] > register_timeout:
                        problem = (f"YARN application {app['id']}: its application master was launched but did not "
                                   f"register within {register_timeout:.0f} s (archive localization or the driver's "
                                   f"start is stuck; container logs on the NodeManager). Diagnostics: "
                                   f"{(app.get('diagnostics') or '').strip()[:500]}")
                        break
                elif state == "RUNNING":
                    want = res.tf_nodes + 1
                    have = int(app.get("runningContainers") or 0)
                    since["short"] = (since["short"] or now) if have < want else None
                    if since["short"] and now - since["short"] > executor_timeout:
                        problem = (f"YARN application {app['id']} got {max(have - 1, 0)} of the {res.tf_nodes} "
                                   f"executors the TF nodes need within {executor_timeout:.0f} s: too few free "
                                   "resources on the cluster")
                        break
        finally:
            if problem and app:
                kill_app(web, app["id"])
            _stop_tree(proc, psutil)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if web:
        app = find_app(web, tag, since_ms) or app
    sub = Submission(proc.returncode if not problem else -1, text, app and app.get("id"),
                     app and app.get("state"), app and app.get("finalStatus"), round(time.monotonic() - t0, 1))
    if problem:
        raise DeployError(problem)
    sub.diagnostics = ((app or {}).get("diagnostics") or "").strip()
    if check:
        _raise_for(sub)
    return sub


def _raise_for(sub: Submission) -> None:
    if sub.returncode != 0 or sub.final_status not in (None, "SUCCEEDED"):
        raise DeployError(f"spark-submit failed (exit {sub.returncode}, YARN {sub.app_id} {sub.state}/"
                          f"{sub.final_status}) {sub.diagnostics[:1000]}\n--- spark-submit output (tail) ---\n"
                          + sub.output[-4000:])


def _stop_tree(proc, psutil) -> None:
    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        procs = []
    from cluster.manager import _terminate
    _terminate(procs, timeout=10)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def spark_submit_path() -> str:
    from . import config
    path = config.spark_home() / "bin" / "spark-submit"
    return str(path)


# ---------------------------------------------------------------------------------------------
# CLI


def _positive_seconds(text: str) -> float:
    return bounded_number(text, float, "a positive number of seconds", lambda v: v > 0)


def _conf_pair(text: str) -> tuple[str, str]:
    """``--conf KEY=VALUE`` as spark-submit takes it; a pair without ``=`` is a typo, caught before any work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _res_args(p):
    p.add_argument("--tf-nodes", type=positive_int, default=2, help="executors, one TF node each (default: 2)")
    p.add_argument("--executor-memory", default="1g")
    p.add_argument("--executor-memory-overhead", default="2g", help="for the Python worker and TF process")
    p.add_argument("--driver-memory", default="1g")
    p.add_argument("--driver-memory-overhead", default="1g")


def _res(args) -> Resources:
    return Resources(args.tf_nodes, args.executor_memory, args.executor_memory_overhead,
                     args.driver_memory, args.driver_memory_overhead)


def build_parser():
    parser = JobParser(prog="tfos-deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("package", help="build the packed environment (cached), code zip and entry script")
    p.add_argument("--out", default=str(REPO / "work" / "deploy"))
    p.add_argument("--node-python", help="absolute path of Python 3.%d on the nodes (default: this machine's)"
                   % sys.version_info.minor)
    p.add_argument("--compression", choices=["none", "gzip"], default="none")
    p.add_argument("--force", action="store_true", help="rebuild the environment even if cached")
    p.add_argument("--upload", metavar="URI", help="copy the files under this hdfs:// or s3:// directory")

    p = sub.add_parser("submit", help="spark-submit a job module with the package, watched")
    p.add_argument("--master", default="yarn")
    p.add_argument("--deploy-mode", choices=["client", "cluster"],
                   help="default: cluster on YARN, client on other masters (Python needs it there)")
    p.add_argument("--package-dir", default=None, help="where the package files are (a local dir or an "
                   "uploaded URI); default: build/reuse under work/deploy")
    p.add_argument("--accept-timeout", type=_positive_seconds, default=120)
    p.add_argument("--timeout", type=_positive_seconds, default=3600)
    p.add_argument("--conf", type=_conf_pair, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dry-run", action="store_true", help="print the spark-submit command only")
    _res_args(p)
    p.add_argument("module", help="e.g. tfos_jobs.ctr or tfos_jobs.survey")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("emr", help="EMR-style artefacts (bootstrap, steps, configurations) from a config")
    p.add_argument("config", help="YAML or JSON config (see README)")
    p.add_argument("--out", default=str(REPO / "work" / "emr"))
    p.add_argument("--run", action="store_true", help="also run the steps here (pseudo-cluster YARN)")
    p.add_argument("--upload", action="store_true", help="package and upload to the config's code_uri")
    return parser


def _package_uris(pkg_dir: str | None, with_env: bool = True) -> dict:
    """The package's URIs: from the manifest an upload wrote, or built/reused locally. Off YARN
    (``with_env=False``) the environment archive is neither built nor shipped."""
    if pkg_dir and "://" in pkg_dir and not pkg_dir.startswith("file:"):
        return read_manifest(pkg_dir)
    if not with_env:
        code_zip, entry = build_code_and_entry(pkg_dir)
        return {"env_archive": None, "code_zip": str(code_zip), "entry": str(entry)}
    pkg = package(pkg_dir, log=lambda m: print(m, file=sys.stderr))
    return {"env_archive": pkg.env_archive, "code_zip": pkg.code_zip, "entry": pkg.entry}


def read_manifest(dest: str) -> dict:
    import hdfs_io
    uri = hdfs_io.join(dest, MANIFEST)

    def read():
        with hdfs_io.open(uri, "rb") as fh:
            return json.loads(fh.read().decode())
    try:
        return _bounded(read, 60, f"read {uri}")
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError(f"no package under {dest} ({uri}: {exc}); upload one with "
                          f"`tfos-deploy package --upload {dest}`") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "package":
            t0 = time.monotonic()
            pkg = package(args.out, args.node_python, args.compression, args.force,
                          log=lambda m: print(m, file=sys.stderr))
            result = pkg.as_dict()
            if args.upload:
                result["uploaded"] = upload(pkg, args.upload)
            result["total_s"] = round(time.monotonic() - t0, 1)
            print(json.dumps(result, indent=1))
        elif args.command == "submit":
            uris = _package_uris(args.package_dir, with_env=args.master.startswith("yarn"))
            res = _res(args)
            extra = loopback_conf() if args.master.startswith("yarn") else {}
            extra.update(args.conf)
            tag = f"tfos-{uuid.uuid4().hex[:12]}"
            cmd = submit_argv(args.module, [a for a in args.args if a != "--"], env_uri=uris["env_archive"],
                              code_uri=uris["code_zip"], entry_uri=uris["entry"], master=args.master,
                              deploy_mode=args.deploy_mode or ("cluster" if args.master.startswith("yarn")
                                                               else "client"),
                              res=res, tag=tag, extra_conf=extra,
                              spark_submit=spark_submit_path())
            if args.dry_run:
                print(shlex.join(cmd))
                return 0
            sub = submit(cmd, timeout=args.timeout, accept_timeout=args.accept_timeout, res=res, check=False)
            sys.stdout.write(sub.output)
            print(json.dumps({"app_id": sub.app_id, "state": sub.state, "final_status": sub.final_status,
                              "returncode": sub.returncode, "wall_s": sub.wall_s}), file=sys.stderr)
            return 0 if sub.returncode == 0 and sub.final_status in (None, "SUCCEEDED") else 1
        elif args.command == "emr":
            from . import emr
            return emr.main_emr(args)
    except DeployError as exc:
        print(f"tfos-deploy: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
