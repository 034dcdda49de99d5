"""pytest plugin: the session-scoped ``pseudo_cluster`` fixture.

Load it with ``pytest_plugins = ["cluster.pseudo.testing"]`` (tests/conftest.py does; the old name
``cluster.testing`` still works).  Tests that need the
cluster carry ``@pytest.mark.cluster`` and take the ``pseudo_cluster`` fixture, which returns the
connection dict (see ``cluster.connection()``).  The fixture reuses a cluster that is already up and
otherwise starts one, which it then stops at the end of the session, also when tests fail.  When the
cluster cannot start (no Java, a port taken, a service failing its health check), the tests that
need it fail with that message: they are not skipped.

``cluster_env`` (function scope) sets the client environment variables of ``cluster.client_env``
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..., HADOOP_CONF_DIR) for one test. ``point_s3a(spark, conn)``
points a running session's ``s3a://`` at the cluster's S3 endpoint (tests/conftest.py's ``s3a_spark``).
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

import pytest

from ..processes import is_running, terminate
from ..redaction import redact_argv, redact_text
from . import manager
from .errors import ClusterError

T = TypeVar("T")
ArrayLike = Iterable  # labels and scores: lists or numpy arrays


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs the local pseudo-cluster (HDFS, YARN, Spark standalone, S3)")


class _Session:
    conn: dict | None = None
    started = False
    error: str | None = None


@pytest.fixture(scope="session")
def pseudo_cluster() -> Iterator[dict]:
    """Connection info of a running pseudo-cluster (started for the session if needed)."""
    if _Session.error:
        pytest.fail(_Session.error, pytrace=False)
    # Stop it at the end only if this session started it: a cluster that was (even partly)
    # running before belongs to someone else (a developer's shell, another test session).
    started = not manager.any_alive()
    try:
        conn = manager.up(timeout=float(os.environ.get("TFOS_CLUSTER_UP_TIMEOUT", 240)))
    except ClusterError as e:
        _Session.error = f"pseudo-cluster could not start: {e}"
        if started:
            # up() stops what it started when it fails; this makes sure of it.
            try:
                manager.down()
            except ClusterError:
                pass
        pytest.fail(_Session.error, pytrace=False)
    _Session.conn, _Session.started = conn, started
    try:
        yield conn
    finally:
        if started:
            manager.down()


@pytest.fixture
def cluster_env(pseudo_cluster: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Set the client environment (S3 endpoint and keys, HADOOP_CONF_DIR, ...) for one test."""
    env = manager.client_env(pseudo_cluster)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def point_s3a(spark: Any, conn: dict) -> Any:
    """Point a running SparkSession's ``s3a://`` at the cluster's S3 endpoint: ``fs.s3a.*`` (endpoint
    and credentials) in its Hadoop configuration, which Spark ships to the executors with each job.
    The S3A jars must already be on its class path (``tfos_jobs.spark`` adds the cached ones)."""
    s3 = conn["s3"]
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    settings = {"fs.s3a.endpoint": s3["endpoint"], "fs.s3a.endpoint.region": s3["region"],
                "fs.s3a.path.style.access": "true", "fs.s3a.connection.ssl.enabled": "false",
                "fs.s3a.access.key": s3["access_key"], "fs.s3a.secret.key": s3["secret_key"]}
    for key, value in settings.items():
        hadoop.set(key, value)
    return spark


def bounded(fn: Callable[[], T], timeout: float = 120) -> T:
    """Call ``fn()`` with a time limit: hdfs-native retries without end against a dead NameNode, so
    tests bound every storage call instead of hanging. The call's thread is left behind on timeout."""
    import concurrent.futures
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return ex.submit(fn).result(timeout=timeout)
    finally:
        ex.shutdown(wait=False)


def run_process(argv: list[str], env: dict | None = None, timeout: float = 300,
                cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (e.g. spark-submit) to completion with a timeout; stop it and every process
    it started, by PID, whatever happens (timeout, failure, KeyboardInterrupt).

    Returns ``subprocess.CompletedProcess`` with ``stdout`` (stderr merged) as text; raises
    ``subprocess.TimeoutExpired`` (with the output so far) on timeout.
    """
    import tempfile

    import psutil

    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                                start_new_session=True)
        known: dict[int, psutil.Process] = {}

        def remember():
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    known.setdefault(p.pid, p)
            except psutil.Error:
                pass

        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                remember()
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout, output=_read(out))
                time.sleep(0.5)
            return subprocess.CompletedProcess(argv, proc.returncode, _read(out), None)
        finally:
            remember()
            terminate([p for p in known.values() if is_running(p)], timeout=10)
            if proc.poll() is None:
                proc.wait(timeout=5)


def _read(fh) -> str:
    fh.flush()
    fh.seek(0)
    return fh.read().decode("utf-8", "replace")


def tail(text: str | bytes | None, lines: int = 60) -> str:
    """The last ``lines`` lines of a command's output: what an assertion message should show."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def describe(proc: subprocess.CompletedProcess, lines: int = 60) -> str:
    """A finished command for an assertion message: its argv, exit code and the tails of stdout and
    stderr (``run_process`` merges them into stdout), so a failure can be read from the test log."""
    args = proc.args
    command = " ".join(redact_argv([str(a) for a in args])) if isinstance(args, (list, tuple)) else redact_text(args)
    parts = [f"command: {command}",
             f"exit code: {proc.returncode}"]
    for name in ("stdout", "stderr"):
        text = getattr(proc, name, None)
        if text:
            parts.append(f"--- {name} (last {lines} lines) ---\n{tail(text, lines)}")
    return "\n".join(parts)


def yarn_app_ids(text: str | bytes | None) -> list[str]:
    """The YARN application ids named in a command's output (spark-submit prints its own), in order."""
    import re
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return list(dict.fromkeys(re.findall(r"application_\d+_\d+", text or "")))


def yarn_report(web: str, app_id: str, timeout: float = 10) -> str:
    """One YARN application as the ResourceManager sees it (``ws/v1/cluster/apps/<id>``), for an
    assertion message: name, state, final status, diagnostics and where its AM's logs are. Never raises:
    an RM that does not answer is reported as such."""
    from . import config
    try:
        app = config.http_json(f"{web}/ws/v1/cluster/apps/{app_id}", timeout=timeout)["app"]
    except Exception as exc:  # noqa: BLE001 - this only describes a failure, it must not cause one
        return f"YARN application {app_id}: the ResourceManager at {web} did not answer ({exc})"
    diagnostics = (app.get("diagnostics") or "").strip() or "(none)"
    return (f"YARN application {app_id} ({app.get('name')}): state {app.get('state')}, final status "
            f"{app.get('finalStatus')}, {app.get('runningContainers', 0)} running container(s)\n"
            f"  diagnostics: {diagnostics}\n  AM container logs: {app.get('amContainerLogs') or '(none)'}")


def describe_yarn(proc: subprocess.CompletedProcess, web: str, lines: int = 60, app_ids: list[str] | None = None) -> str:
    """:func:`describe` of a command that ran YARN applications (spark-submit), plus the
    ResourceManager's report (:func:`yarn_report`) on each application named in its output."""
    ids = app_ids if app_ids is not None else yarn_app_ids(getattr(proc, "stdout", "") or "") + \
        yarn_app_ids(getattr(proc, "stderr", "") or "")
    reports = [yarn_report(web, i) for i in dict.fromkeys(ids)]
    return "\n".join([describe(proc, lines)] + (reports or ["(no YARN application id in the output)"]))


def describe_submission(sub: Any, web: str | None = None, lines: int = 60) -> str:
    """A ``cluster.deployment.submit.Submission`` (``submit``'s result) for an assertion message: exit code,
    YARN application, state, final status and diagnostics (asked again of the ResourceManager when
    ``web`` is given) and the tail of spark-submit's output."""
    parts = [f"spark-submit exit code {sub.returncode} after {sub.wall_s} s; YARN application {sub.app_id}: "
             f"{sub.state}/{sub.final_status}; diagnostics: {sub.diagnostics or '(none)'}"]
    if web:
        parts += [yarn_report(web, i) for i in dict.fromkeys(([sub.app_id] if sub.app_id else [])
                                                             + yarn_app_ids(sub.output))]
    parts.append(f"--- spark-submit output (last {lines} lines) ---\n{tail(sub.output, lines)}")
    return "\n".join(parts)


def describe_steps(results: list[dict], web: str | None = None, lines: int = 60) -> str:
    """``cluster.deployment.emr.run_steps`` results for an assertion message: each step's outcome, the first failed
    step's error (with spark-submit's output) and the ResourceManager's report on its applications."""
    parts = [f"steps: {[(r['name'], r['ok'], r.get('final_status'), r['wall_s']) for r in results]}"]
    for r in results:
        if not r["ok"]:
            parts.append(f"--- step {r['name']} failed (last {lines} lines) ---\n{tail(r.get('error'), lines)}")
            if web:
                parts += [yarn_report(web, i) for i in yarn_app_ids(r.get("error"))]
            break
    return "\n".join(parts)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties share their mean rank): the tests' own computation,
    independent of the jobs' ``tfos_jobs.metrics``."""
    import numpy as np
    from scipy.stats import rankdata
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        raise ValueError(f"AUC needs both classes: {pos} positive and {neg} negative labels")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def chance_auc_sd(labels: ArrayLike) -> float:
    """Standard deviation of the AUC that scores carrying no information about ``labels`` get on these
    rows (the Mann-Whitney null: mean 0.5, variance (n1 + n0 + 1) / (12 n1 n0)). A model that learned
    scores clearly above 0.5 + a few of these; an untrained one does not."""
    import numpy as np
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    return float(np.sqrt((pos + neg + 1) / (12 * pos * neg)))


def majority_baseline(labels: ArrayLike) -> dict:
    """What the best constant predictor scores on ``labels`` (class indices; negative = unanswered, left
    out): the majority class's accuracy and the log loss of predicting the class frequencies."""
    import numpy as np
    labels = np.asarray(labels).astype(np.int64)
    labels = labels[labels >= 0]
    counts = np.bincount(labels)
    freq = counts[counts > 0] / len(labels)
    return {"rows": int(len(labels)), "accuracy": float(counts.max() / len(labels)),
            "log_loss": float(-(freq * np.log(freq)).sum())}
