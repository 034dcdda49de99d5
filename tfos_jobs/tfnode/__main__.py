"""Entry of the TF process: ``python -m tfos_jobs.tfnode <node.pkl>`` (started by the executor's
supervisor, ``tfos_jobs.executor.node``). Runs the node's role, reports the outcome on the control
channel and exits without TF's slow teardown."""
import ctypes
import os
import pickle
import signal
import sys
import time
import traceback

from tfos_jobs.tfnode.roles import run_role   # TensorFlow itself is imported by the roles, lazily
from tfos_jobs.wire.control import ControlClient, DriverUnreachable


def _die_with_parent():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def is_peer_loss(err: BaseException) -> bool:
    """True for the errors TF raises when another node of the cluster went away (not a bug here)."""
    import tensorflow as tf
    peer_errors = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                   tf.errors.DeadlineExceededError)
    return isinstance(err, peer_errors)


def child_main(node_path: str) -> None:
    _die_with_parent()
    # The file was written by our own supervisor on this host (not received from the network).
    with open(node_path, "rb") as handle:
        node = pickle.load(handle)
    spec = node.spec
    control = ControlClient(spec.control_address, spec.control_secret, node.name, spec.attempt)
    code = 0
    try:
        control.send("started")   # ends the driver's start watch: what follows is bounded by the stall watch
        control.send("done", result=run_role(node, control))
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
