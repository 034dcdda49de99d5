"""Build and upload what YARN needs to run our jobs on nodes that have only Java and Python.

* ``tfenv-<key>.tar``: the runtime's third-party Python packages as a relocatable virtual environment
  (``bin/python`` is a symlink to the nodes' interpreter, ``pyvenv.cfg`` points ``home`` at it),
  shipped with ``--archives ...#tfenv``. Built from this machine's installed distributions (the
  dependency closure of ``tfos-jobs``, from each one's RECORD), without pyspark's jars (the cluster
  has Spark) and without test tools; cached under ``~/.cache/tfos-jobs/deploy`` by a key made of
  ``constraints.txt``, ``setup.cfg``, the interpreter and the format, so it is built once. Plain tar by
  default: on one host or a fast network, YARN's copy + untar is cheaper than gunzip (measured, README).
* ``tfos-code-<hash>.zip``: our own packages (``tfos_jobs``, ``hdfs_io``, and of ``cluster`` only the
  probe), rebuilt on every ``package`` (milliseconds), shipped with ``--py-files`` so code changes never
  rebuild the environment.
* ``tfos_main.py``: the spark-submit entry point; ``tfos_main.py tfos_jobs.ctr prep ...`` runs a job's CLI
  module unchanged (``python -m`` semantics).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable, TypeVar

from .resources import DeployError

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]   # the checkout: cluster/deployment/ is two levels down
FORMAT = 1                      # bump when the archive layout changes: it is part of the cache key
MANIFEST = "tfos-package.json"   # written by upload: the current file of each kind
ENV_ALIAS = "tfenv"             # directory name of the unpacked archive in every YARN container
ENV_PYTHON = f"./{ENV_ALIAS}/bin/python"
# What jobs import in YARN containers: our packages, and of ``cluster`` only the probe (the
# pseudo-cluster, the CLIs and the test helpers never run there).
CODE_PACKAGES = ("tfos_jobs", "hdfs_io")
CODE_FILES = ("cluster/__init__.py", "cluster/probe.py", "cluster/deployment/__init__.py",
              "cluster/deployment/probe.py")
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


def cache_dir() -> Path:
    """Where packed environments are kept between builds (``TFOS_DEPLOY_CACHE``)."""
    return Path(os.environ.get("TFOS_DEPLOY_CACHE", Path.home() / ".cache" / "tfos-jobs" / "deploy"))


def node_python_default() -> str:
    """The interpreter the nodes run: by default this machine's base interpreter (same path)."""
    base = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(base)


def env_key(node_python: str, compression: str) -> str:
    """The packed environment's cache key: whatever changes its content changes the key."""
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


def _env_target(node_python: str, compression: str) -> tuple[Path, str]:
    """Where the archive for this interpreter and format lives in the cache, and its key."""
    if compression not in ("none", "gzip"):
        raise DeployError(f"compression must be 'none' or 'gzip', got {compression!r}")
    if not os.path.isabs(node_python):
        raise DeployError(f"--node-python must be an absolute path on the nodes, got {node_python!r}")
    key = env_key(node_python, compression)
    return cache_dir() / f"{ENV_ALIAS}-{key}.tar{'.gz' if compression == 'gzip' else ''}", key


def _open_tar(raw, compression: str) -> tarfile.TarFile:
    # gzip level 1: about 3x faster than tarfile's default level 9 for a few % more bytes
    if compression == "gzip":
        return tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1)
    return tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    tar.addfile(info)


def _add_venv_skeleton(tar: tarfile.TarFile, node_python: str, key: str, dists: dict) -> None:
    """pyvenv.cfg and bin/python* linking to the nodes' interpreter, plus a manifest of what is inside:
    that makes the unpacked directory a virtual environment wherever YARN puts it."""
    ver = _python_dir()
    _add_bytes(tar, "pyvenv.cfg", (f"home = {os.path.dirname(node_python)}\n"
                                   "include-system-site-packages = false\n"
                                   f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
                                   f"executable = {node_python}\n").encode())
    _add_link(tar, "bin/python", node_python)
    _add_link(tar, "bin/python3", "python")
    _add_link(tar, f"bin/{ver}", "python")
    manifest = {"format": FORMAT, "key": key, "python": ver, "node_python": node_python,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "distributions": {d.metadata["Name"]: d.version for d in dists.values()}}
    _add_bytes(tar, f"{ENV_ALIAS}.json", json.dumps(manifest, indent=1, sort_keys=True).encode())


def _add_site_packages(tar: tarfile.TarFile, dists: dict) -> int:
    """Each distribution's files (from its RECORD) under lib/pythonX.Y/site-packages; returns the count."""
    ver = _python_dir()
    seen: set[str] = set()
    files = 0
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
    return files


def _python_dir() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def build_env(node_python: str | None = None, compression: str = "none", force: bool = False,
              log: Callable[[str], object] = print) -> tuple[Path, bool, float, int]:
    """Build (or reuse) the packed environment. Returns (path, cached, seconds, distributions)."""
    node_python = node_python or node_python_default()
    out, key = _env_target(node_python, compression)
    dists = dependency_closure()
    if out.exists() and not force:
        return out, True, 0.0, len(dists)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # written under a temporary name: a concurrent or interrupted build never leaves half an archive
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        raw = open(tmp, "wb")
        with raw, _open_tar(raw, compression) as tar:
            _add_venv_skeleton(tar, node_python, key, dists)
            files = _add_site_packages(tar, dists)
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
    paths = [p for pkg in CODE_PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
             if "__pycache__" not in p.parts]
    paths += [REPO / f for f in CODE_FILES]
    entries = [(p.relative_to(REPO).as_posix(), p.read_bytes()) for p in paths]
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
            compression: str = "none", force: bool = False,
            log: Callable[[str], object] = print) -> Package:
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
        have = bounded(lambda u=uri: hdfs_io.size(u) if hdfs_io.exists(u) else -1, 60, f"look at {uri}")
        if have != size or field == "entry":
            tmp = f"{uri}.{uuid.uuid4().hex[:8]}.tmp"
            bounded(lambda s=local, t=tmp: hdfs_io.copy(s, t), timeout, f"copy {local} to {tmp}")
            bounded(lambda t=tmp, u=uri: (hdfs_io.delete(u, missing_ok=True), hdfs_io.rename(t, u)),
                     60, f"rename {tmp}")
        uris[field] = uri
    bounded(lambda: write_text(hdfs_io.join(dest, MANIFEST), json.dumps(uris, indent=1)), 60, "write the manifest")
    return uris


def write_text(uri: str, text: str) -> None:
    """Write ``text`` to a storage URI (hdfs://, s3://, file://)."""
    import hdfs_io
    with hdfs_io.open(uri, "wb") as fh:
        fh.write(text.encode())


def bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """hdfs-native retries without end against a dead NameNode: bound every storage call."""
    import concurrent.futures
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return ex.submit(fn).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise DeployError(f"timed out after {timeout:.0f} s trying to {what}") from None
    finally:
        ex.shutdown(wait=False)


def read_manifest(dest: str) -> dict:
    """The package URIs an :func:`upload` to ``dest`` recorded."""
    import hdfs_io
    uri = hdfs_io.join(dest, MANIFEST)

    def read():
        with hdfs_io.open(uri, "rb") as fh:
            return json.loads(fh.read().decode())
    try:
        return bounded(read, 60, f"read {uri}")
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError(f"no package under {dest} ({uri}: {exc}); upload one with "
                          f"`tfos-deploy package --upload {dest}`") from None
