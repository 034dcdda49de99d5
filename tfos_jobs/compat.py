"""Fixes for running tensorflowonspark 2.2.5 on today's stack, applied by our code, never by patching
site-packages.

tensorflowonspark (TFoS) had its last release in April 2022. Each known break is handled here or by a
dependency pin in setup.cfg, and each has a test in tests/test_compat.py:

* ``import pkg_resources`` in TFNode/TFSparkNode: setuptools >= 82 no longer ships it. Pinned
  ``setuptools<82`` (the module must exist on executors too, where our code cannot run before
  unpickling TFoS's own functions); :func:`check_pkg_resources` turns the failure into a clear error.
* ``six`` used but not declared: declared in setup.cfg.
* ``compat.export_saved_model`` calls ``model.save(dir, save_format='tf')``, which Keras 3 rejects: we
  never call it; ``tfos_jobs.export`` writes the SavedModel itself.
* ``TFManager.start`` pickles a lambda, which fails under the ``forkserver``/``spawn`` start methods
  (Python 3.14's default on Linux): :func:`use_fork_for_tfmanager` gives TFoS's manager a fork context.
* ``TFSparkNode.run`` logs each node's ``node_meta`` at INFO, manager ``authkey`` included:
  :func:`hide_authkeys` redacts it in the executor's log records.
* ``reservation.Server`` (driver) unpickles network input on all interfaces: never started;
  ``tfos_jobs.driver.reservation`` speaks its protocol safely.
* ``tensorboard=True`` looks for a ``tensorboard`` executable TF no longer installs: we never ask TFoS
  for it and write event files with ``tf.summary`` instead.
"""
import logging
import multiprocessing
import re
import warnings

_FIX_MARK = "_tfos_jobs_fork_context"


class IncompatibleEnvironment(RuntimeError):
    """The Python environment cannot run tensorflowonspark; the message says what to install."""


def check_pkg_resources() -> None:
    """Fail with an actionable message when ``pkg_resources`` (needed by TFoS) is missing."""
    try:
        with warnings.catch_warnings():  # its deprecation notice is about TFoS, not the user's code
            warnings.simplefilter("ignore")
            import pkg_resources  # noqa: F401  (import is the check)
    except ModuleNotFoundError as err:
        raise IncompatibleEnvironment(
            "tensorflowonspark 2.2.5 imports pkg_resources, which setuptools>=82 removed: "
            "run `pip install 'setuptools<82'` in this environment") from err


def use_fork_for_tfmanager() -> None:
    """Make TFoS's multiprocessing manager start with ``fork`` whatever the default start method is.

    TFManager registers lambdas as manager callables; only ``fork`` can start such a manager.
    Idempotent; returns the TFManager class it patched.
    """
    from multiprocessing.managers import BaseManager
    from tensorflowonspark import TFManager

    cls = TFManager.TFManager
    if getattr(cls, _FIX_MARK, False):
        return cls

    def __init__(self, *args, ctx=None, **kwargs):
        BaseManager.__init__(self, *args, ctx=ctx or multiprocessing.get_context("fork"), **kwargs)

    cls.__init__ = __init__
    setattr(cls, _FIX_MARK, True)
    return cls


_AUTHKEY = re.compile(r"""'authkey': b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


class _HideAuthkey(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "authkey" in text:
            record.msg, record.args = _AUTHKEY.sub("'authkey': '<redacted>'", text), None
        return True


def hide_authkeys() -> None:
    """Redact TFoS's manager authkeys in its executor-side log records (idempotent)."""
    for name in ("tensorflowonspark.TFSparkNode", "tensorflowonspark.reservation"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideAuthkey) for f in logger.filters):
            logger.addFilter(_HideAuthkey())


def import_tfos():
    """Import the TFoS module our runtime uses, with every fix applied."""
    check_pkg_resources()
    use_fork_for_tfmanager()
    from tensorflowonspark import TFSparkNode
    return TFSparkNode
