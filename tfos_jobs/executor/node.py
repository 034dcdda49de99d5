"""The executor side of a TF node.

TFoS runs :func:`node_main` in the Spark Python worker (after reserving a port and building the cluster
spec). We do not run TensorFlow there: a TF gRPC server cannot be stopped, and Spark reuses its Python
workers, so ports and threads would outlive the job. :func:`node_main` starts TF in a child process
(``python -m tfos_jobs.tfnode``) and supervises it; the child dies with its parent (``PR_SET_PDEATHSIG``),
exits when the driver is gone, and is killed by PID when the task ends for any reason.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Callable, Iterator

from tfos_jobs import compat, localdirs
from tfos_jobs.node_spec import Node, NodeSpec
from tfos_jobs.wire.control import ControlClient

STDERR_TAIL = 8000


def claim_and_reserve(tfos_map_fn: Callable, control_address: str, control_secret: str, attempt: int,
                      partition: Iterator) -> None:
    """The Spark task of one TF node: claim a TF port over the authenticated control channel, then run
    TFoS's map function, which registers that port with the driver's cluster formation.

    TFoS's registration is unauthenticated (its client is TFoS code); the driver accepts it only for the
    port claimed here by a holder of the job's secret, so a process that races the real node to
    register an executor id is refused. TFoS takes the port from ``TENSORFLOW_PORT``.
    """
    compat.hide_authkeys()
    (executor_id,) = list(partition)        # TFoS's partition holds the node's executor id
    with socket.socket() as probe:          # a free port, released at once as TFoS itself does
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    ControlClient(control_address, control_secret, f"executor:{executor_id}", attempt).send(
        "claim", executor_id=executor_id, port=port)
    saved = os.environ.get("TENSORFLOW_PORT")
    os.environ["TENSORFLOW_PORT"] = str(port)
    try:
        return tfos_map_fn(iter([executor_id]))
    finally:   # Spark reuses this Python worker for other tasks
        if saved is None:
            os.environ.pop("TENSORFLOW_PORT", None)
        else:
            os.environ["TENSORFLOW_PORT"] = saved


def tf_roles(strategy: str, num_ps: int, tfos_cluster_spec: dict) -> dict:
    """Map TFoS's {chief, worker} template onto our TF cluster: the first ``num_ps`` TFoS workers
    become ps tasks. (TFoS itself would run 'ps' nodes in the background and shut them down only
    after 5-second polls.)"""
    chief = tfos_cluster_spec["chief"]
    workers = tfos_cluster_spec.get("worker", [])
    if strategy == "ps":
        return {"chief": chief, "ps": workers[:num_ps], "worker": workers[num_ps:]}
    return {"chief": chief, "worker": workers}


def assign_role(strategy: str, num_ps: int, job_name: str, task_index: int) -> tuple[str, int]:
    if job_name == "chief":
        return "chief", 0
    if strategy == "ps" and task_index < num_ps:
        return "ps", task_index
    return "worker", task_index - (num_ps if strategy == "ps" else 0)


def node_main(spec: NodeSpec, tf_args, ctx) -> None:
    """TFoS map function (bound to ``spec`` with ``functools.partial``): start this node's TF process
    and supervise it until it ends. ``tf_args`` is what TFoS reads ``num_gpus`` from."""
    scaling = spec.config.scaling
    role, index = assign_role(scaling.strategy, scaling.num_ps, ctx.job_name, ctx.task_index)
    cluster = tf_roles(scaling.strategy, scaling.num_ps, ctx.cluster_spec)
    node = Node(spec=spec, role=role, index=index,
                tf_config={"cluster": cluster, "task": {"type": role, "index": index}})
    # A private (0700) per-node directory, removed with the node's scratch when it ends: node.pkl is
    # code the TF process loads, so nobody else may read or replace it.
    with localdirs.node_dirs(node) as workdir:
        node_path = os.path.join(workdir, "node.pkl")
        from pyspark import cloudpickle   # the task (a user's class) may be defined in __main__
        with open(node_path, "wb") as handle:
            cloudpickle.dump(node, handle)
        log_path = os.path.join(workdir, "node.log")
        env = dict(os.environ, TF_CONFIG=json.dumps(node.tf_config), TF_CPP_MIN_LOG_LEVEL="2")
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "tfos_jobs.tfnode", node_path], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = child.wait()
        finally:
            _kill_group(child)
            _stop_tfos_manager()
        if code != 0:
            raise RuntimeError(f"TF node {node.name} exited with code {code}; its log ({log_path}) ends:\n"
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
