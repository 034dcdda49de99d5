"""Submit our jobs with spark-submit (``tfos-deploy submit``).

``submit_argv`` adds the TF-on-YARN settings (one TF node per executor, memory overhead for the TF
process, no task retries, no dynamic allocation) and ``submit`` runs spark-submit with a preflight
(archive present, ResourceManager reachable, enough memory for the TF nodes) and a watchdog that kills
an application left in ACCEPTED, or short of executors, instead of waiting forever.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import psutil

from ..processes import stop_tree
from .package import ENV_ALIAS, ENV_PYTHON, bounded
from .resources import DeployError, Resources, tf_conf
from .yarn import check_resources, check_yarn, find_app, kill_app, rm_web, site_value

STOP_GRACE_S = 60.0   # a streaming driver finishes its micro-batch and stops its queries in this time

log = logging.getLogger(__name__)


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


def check_uri(uri: str, timeout: float = 30) -> None:
    """A missing archive/script is reported before YARN tries (and fails) to localize it."""
    if "://" not in uri or uri.startswith("file:") or uri.startswith("local:"):
        path = urllib.parse.urlparse(uri).path if "://" in uri else uri
        if not os.path.isfile(path):
            raise DeployError(f"{uri} does not exist: build it with `tfos-deploy package`")
        return
    import hdfs_io
    try:
        ok = bounded(lambda: hdfs_io.exists(uri), timeout, f"check {uri}")
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError(f"cannot check {uri}: {exc}") from None
    if not ok:
        raise DeployError(f"{uri} does not exist: upload it with `tfos-deploy package --upload DIR`")


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


def _submit_env(env: dict | None) -> dict:
    env = {**os.environ, **(env or {})}
    # The submitter's interpreter settings must not leak into YARN containers (Spark copies them).
    for k in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        env.pop(k, None)
    return env


def _preflight(argv: list[str], env: dict, res: Resources, conf_dir: str | None) -> tuple[str | None, str | None]:
    """Fail before spark-submit starts when a package file is missing or, on YARN, when the cluster is
    unreachable or too small. Returns the ResourceManager's web address and the application's tag
    (both None off YARN: there is no application to watch)."""
    master = argv[argv.index("--master") + 1]
    mode = argv[argv.index("--deploy-mode") + 1] if "--deploy-mode" in argv else "client"
    for flag in ("--archives", "--py-files"):
        if flag in argv:
            check_uri(argv[argv.index(flag) + 1].split("#")[0])
    entry = next((a for a in argv[1:] if a.endswith("tfos_main.py")), None)
    if entry:
        check_uri(entry)
    if not master.startswith("yarn"):
        return None, None
    conf_dir = conf_dir or env.get("YARN_CONF_DIR") or env.get("HADOOP_CONF_DIR") or ""
    web = rm_web(conf_dir)
    cluster = check_yarn(web)
    min_alloc = int(site_value(conf_dir, "yarn-site.xml", "yarn.scheduler.minimum-allocation-mb") or 1024)
    check_resources(cluster, res, mode, min_alloc)
    tag = next((c.split("=", 1)[1].split(",")[-1] for c in argv if c.startswith("spark.yarn.tags=")), None)
    if not tag or tag == "tfos-deploy":
        raise DeployError("submit_argv(..., tag=...) is needed to watch the YARN application")
    return web, tag


@dataclasses.dataclass
class _Watchdog:
    """Decides, poll by poll, when a submission has waited too long: overall, for the AM's container,
    for the AM to register, or for the executors the TF nodes need (YARN would wait forever)."""
    web: str | None
    tag: str | None
    res: Resources
    timeout: float
    accept_timeout: float
    executor_timeout: float
    register_timeout: float
    since_ms: int = dataclasses.field(default_factory=lambda: int(time.time() * 1000) - 5000)
    t0: float = dataclasses.field(default_factory=time.monotonic)
    app: dict | None = None
    since: dict = dataclasses.field(default_factory=lambda: {"ACCEPTED": None, "short": None})

    def problem(self) -> str | None:
        """Why the submission must stop now, or None."""
        now = time.monotonic()
        if now - self.t0 > self.timeout:
            return f"spark-submit did not finish within {self.timeout:.0f} s"
        if not self.web:
            return None
        self.app = find_app(self.web, self.tag, self.since_ms) or self.app
        state = (self.app or {}).get("state")
        if state == "ACCEPTED":
            return self._accepted(now)
        if state == "RUNNING":
            return self._running(now)
        return None

    def _accepted(self, now: float) -> str | None:
        # ACCEPTED lasts until the driver registers with the RM; only the wait for the AM
        # container itself (no resources) is what would otherwise last forever.
        app, since = self.app, self.since
        launched = bool(app.get("amContainerLogs")) or "launched" in (app.get("diagnostics") or "")
        key = "launched" if launched else "ACCEPTED"
        since[key] = since.get(key) or now
        diagnostics = (app.get("diagnostics") or "").strip()[:500]
        if not launched and now - since["ACCEPTED"] > self.accept_timeout:
            return (f"YARN application {app['id']} stayed ACCEPTED for {self.accept_timeout:.0f} s without "
                    "a container for its application master: too few free resources in the queue. "
                    f"Diagnostics: {diagnostics}")
        if launched and now - since["launched"] > self.register_timeout:
            return (f"YARN application {app['id']}: its application master was launched but did not "
                    f"register within {self.register_timeout:.0f} s (archive localization or the driver's "
                    f"start is stuck; container logs on the NodeManager). Diagnostics: {diagnostics}")
        return None

    def _running(self, now: float) -> str | None:
        want = self.res.tf_nodes + 1
        have = int(self.app.get("runningContainers") or 0)
        self.since["short"] = (self.since["short"] or now) if have < want else None
        if self.since["short"] and now - self.since["short"] > self.executor_timeout:
            return (f"YARN application {self.app['id']} got {max(have - 1, 0)} of the {self.res.tf_nodes} "
                    f"executors the TF nodes need within {self.executor_timeout:.0f} s: too few free "
                    "resources on the cluster")
        return None


def _run_watched(argv: list[str], env: dict, dog: _Watchdog,
                 stop: threading.Event | None = None) -> tuple[int | None, str, str | None]:
    """Run spark-submit until it exits, the watchdog objects (then kill its application and stop it),
    or ``stop`` is set (a long-running job asked to end: :func:`_stop_gracefully`). Returns (exit
    code, output, problem)."""
    problem = None
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            while proc.poll() is None:
                if stop is not None and stop.wait(2):
                    _stop_gracefully(proc, dog)
                    break
                if stop is None:
                    time.sleep(2)
                problem = dog.problem()
                if problem:
                    break
        finally:
            if problem and dog.app:
                kill_app(dog.web, dog.app["id"])
            stop_tree(proc)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return proc.returncode, text, problem


def _stop_gracefully(proc: subprocess.Popen, dog: _Watchdog, grace_s: float = STOP_GRACE_S) -> None:
    """End a long-running job the way its driver expects: in YARN cluster mode the application is
    killed (YARN sends its driver SIGTERM); in client mode the Python driver gets SIGTERM itself (a streaming job
    stops its queries at a micro-batch boundary and exits 0). Whatever is left after ``grace_s`` is
    stopped by :func:`stop_tree`."""
    argv = list(proc.args)
    in_yarn = "--deploy-mode" in argv and argv[argv.index("--deploy-mode") + 1] == "cluster"
    if in_yarn and dog.web and dog.app:
        kill_app(dog.web, dog.app["id"])
    else:
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name().startswith("python"):
                    child.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def _submit_once(argv: list[str], *, env: dict | None = None, timeout: float = 1800, accept_timeout: float = 120,
                 executor_timeout: float = 180, register_timeout: float = 600, res: Resources | None = None,
                 check: bool = True, conf_dir: str | None = None, stop: threading.Event | None = None) -> Submission:
    res = res or Resources()
    env = _submit_env(env)
    web, tag = _preflight(argv, env, res, conf_dir)
    dog = _Watchdog(web, tag, res, timeout, accept_timeout, executor_timeout, register_timeout)
    code, text, problem = _run_watched(argv, env, dog, stop)
    app = (find_app(web, tag, dog.since_ms) or dog.app) if web else dog.app
    sub = Submission(code if not problem else -1, text, app and app.get("id"),
                     app and app.get("state"), app and app.get("finalStatus"), round(time.monotonic() - dog.t0, 1))
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


def spark_submit_path() -> str:
    """This install's spark-submit (pyspark's own)."""
    import pyspark
    return str(Path(pyspark.__file__).resolve().parent / "bin" / "spark-submit")
