"""The executor side of a TF node.

TFoS runs :func:`node_main` in the Spark Python worker (after reserving a port and building the cluster
spec). We do not run TensorFlow there: a TF gRPC server cannot be stopped, and Spark reuses its Python
workers, so ports and threads would outlive the job. :func:`node_main` starts TF in a child process
(``python -m tfos_jobs.node``) and supervises it; the child dies with its parent (``PR_SET_PDEATHSIG``),
exits when the driver is gone, and is killed by PID when the task ends for any reason.
"""
import ctypes
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from tfos_jobs.control import ControlClient, DriverUnreachable

STDERR_TAIL = 8000


@dataclass
class NodeSpec:
    """Everything one TF process needs; pickled from the driver to the node."""
    config: object            # tfos_jobs.trainer.TrainConfig
    task: object              # tfos_jobs.task.TrainingTask
    source: object            # tfos_jobs.task.ParquetSource
    plan: object              # tfos_jobs.inputs.DataPlan
    control_address: str
    control_token: str
    total_steps: int
    attempt: int = 0          # which TF cluster of this run the node belongs to
    # filled in on the executor:
    role: str = ""
    index: int = 0
    tf_config: dict = field(default_factory=dict)

    def __contains__(self, key):
        """TFoS probes its ``tf_args`` with ``'num_gpus' in tf_args``; answer for the config."""
        return getattr(self.config, key, None) is not None

    @property
    def num_gpus(self):
        return self.config.num_gpus

    @property
    def node(self):
        return f"{self.role}:{self.index}"

    @property
    def global_batch(self):
        replicas = self.config.num_workers if self.config.strategy == "mwms" else 1
        return self.config.batch_size * replicas

    @property
    def dtypes(self):
        return self.plan.dtypes

    @property
    def stage_root(self):
        return os.path.join(self.config.local_root, self.config.run_id, "stage")

    @property
    def stage_dir(self):
        return os.path.join(self.stage_root, f"worker-{self.index}")

    @property
    def data_shard_index(self):
        """Which share of the files this node reads (None for nodes that read none)."""
        if self.config.strategy == "mwms":
            return 0 if self.role == "chief" else self.index + 1
        return self.index if self.role == "worker" else None

    @property
    def files(self):
        shards = self.config.num_workers
        return self.plan.shard(shards, self.data_shard_index) if self.data_shard_index is not None else []


def tf_roles(strategy, num_ps, tfos_cluster_spec):
    """Map TFoS's {chief, worker} template onto our TF cluster: the first ``num_ps`` TFoS workers
    become ps tasks. (TFoS itself would run 'ps' nodes in the background and shut them down only
    after 5-second polls.)"""
    chief = tfos_cluster_spec["chief"]
    workers = tfos_cluster_spec.get("worker", [])
    if strategy == "ps":
        return {"chief": chief, "ps": workers[:num_ps], "worker": workers[num_ps:]}
    return {"chief": chief, "worker": workers}


def assign_role(strategy, num_ps, job_name, task_index):
    if job_name == "chief":
        return "chief", 0
    if strategy == "ps" and task_index < num_ps:
        return "ps", task_index
    return "worker", task_index - (num_ps if strategy == "ps" else 0)


def node_main(spec, ctx):
    """TFoS map function: start this node's TF process and supervise it until it ends."""
    spec.role, spec.index = assign_role(spec.config.strategy, spec.config.num_ps, ctx.job_name, ctx.task_index)
    cluster = tf_roles(spec.config.strategy, spec.config.num_ps, ctx.cluster_spec)
    spec.tf_config = {"cluster": cluster, "task": {"type": spec.role, "index": spec.index}}
    workdir = tempfile.mkdtemp(prefix=f"tfos-{spec.role}{spec.index}-")
    spec_path = os.path.join(workdir, "spec.pkl")
    from pyspark import cloudpickle
    with open(spec_path, "wb") as handle:
        cloudpickle.dump(spec, handle)
    log_path = os.path.join(workdir, "node.log")
    env = dict(os.environ, TF_CONFIG=json.dumps(spec.tf_config), TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "tfos_jobs.node", spec_path], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = child.wait()
    finally:
        _kill_group(child)
        _stop_tfos_manager()
    if code != 0:
        raise RuntimeError(f"TF node {spec.node} exited with code {code}; its log ({log_path}) ends:\n"
                           + _tail(log_path))


def _kill_group(child):
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait(timeout=10)


def _stop_tfos_manager():
    """Stop TFoS's per-node manager process so nothing outlives the task."""
    from tensorflowonspark import TFSparkNode
    mgr = TFSparkNode.TFSparkNode.mgr
    if mgr is None:
        return
    try:
        mgr.set("state", "stopped")
        mgr.shutdown()
    except Exception:  # the manager may already be gone with its process
        pass
    TFSparkNode.TFSparkNode.mgr = None


def _tail(path, size=STDERR_TAIL):
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - size, 0))
        return handle.read().decode(errors="replace")


def _die_with_parent():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def is_peer_loss(err):
    """True for the errors TF raises when another node of the cluster went away (not a bug here)."""
    import tensorflow as tf
    peer_errors = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                   tf.errors.DeadlineExceededError)
    return isinstance(err, peer_errors)


def child_main(spec_path):
    """Entry of the TF process: run the role, report the outcome, exit without TF's slow teardown."""
    _die_with_parent()
    with open(spec_path, "rb") as handle:
        spec = pickle.load(handle)
    control = ControlClient(spec.control_address, spec.control_token, spec.node, spec.attempt)
    code = 0
    try:
        result = __import__("tfos_jobs.loops", fromlist=["run_role"]).run_role(spec, control)
        control.send("done", result=result)
    except BaseException as err:  # report everything, including KeyboardInterrupt, then exit non-zero
        code = 1
        text = traceback.format_exc()
        sys.stderr.write(text)
        try:
            control.send("failed", error=text, peer_lost=is_peer_loss(err))
        except DriverUnreachable:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.05)
    os._exit(code)


if __name__ == "__main__":
    child_main(sys.argv[1])
