"""What each TF process does, by role (runs in the node process started by ``tfos_jobs.executor.node``)."""
from __future__ import annotations

from tfos_jobs.tfnode.loops import train_multi_worker, train_parameter_server


def run_role(node, control) -> dict:
    """Run this node's role; return the result dict the chief reports to the driver."""
    if node.spec.config.scaling.strategy == "mwms":
        return train_multi_worker(node, control)
    if node.is_chief:
        return train_parameter_server(node, control)
    return serve_until_stopped(node, control)


def serve_until_stopped(node, control) -> dict:
    """A ps task or PS-mode worker: host a TF server until the driver says the chief is done. A worker
    stages its share first, so the chief's dataset function can read it with native ops."""
    import tensorflow as tf
    if node.role == "worker":
        node.spec.reader.stage(node)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tf.distribute.Server(resolver.cluster_spec(), job_name=node.role, task_index=node.index,
                         protocol="grpc", start=True)
    control.send("ready")
    if not control.wait_for("stop", orphan_timeout_s=node.spec.config.run.orphan_timeout_s):
        raise RuntimeError("lost contact with the driver; stopping this TF node")
    return {}
