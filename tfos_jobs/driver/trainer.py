"""The driver side of distributed training: ``fit`` is the runtime's one public entry point.

One attempt = one TF cluster on Spark executors, formed by tensorflowonspark's reservation protocol
(``TFSparkNode.run`` reserves ports and builds the cluster spec on each executor) against our own
reservation server (``tfos_jobs.driver.reservation``: TFoS's unpickles network input). The driver then
watches the control channel, not Spark's status tracker, so it reacts within a fraction of a second:

* the chief reports ``done``  -> every ps/worker is told to stop; the attempt succeeds;
* a node reports ``failed``   -> the Spark job is cancelled and its traceback is raised (no retry:
  the same code would fail again);
* a node vanishes (executor lost) -> the job is cancelled and, while attempts remain, a new TF
  cluster resumes from the last checkpoint in ``model_dir``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import queue
import random
import sys
import threading
import time
import uuid
from typing import Any

from tfos_jobs import compat
from tfos_jobs.config import TrainConfig
from tfos_jobs.driver.reservation import ReservationServer, spark_executor_ips
from tfos_jobs.export import check_export_target
from tfos_jobs.executor.node import claim_and_reserve, node_main
from tfos_jobs.node_spec import NodeSpec
from tfos_jobs.sources import Source
from tfos_jobs.task import TrainingTask, TrainResult
from tfos_jobs.tfnode.checkpoint import checkpoint_step
from tfos_jobs.wire.control import ControlServer

log = logging.getLogger("tfos_jobs")
STOP_GRACE_S = 60.0   # after the chief's done, for the other nodes' Spark tasks to end


class TrainingFailed(RuntimeError):
    """A TF node raised: the message carries the node's name and its traceback."""


class ClusterLost(RuntimeError):
    """The TF cluster lost a node without a traceback (executor died) on the last attempt."""


def fit(sc: Any, task: TrainingTask, data: Source, config: TrainConfig | None = None, **options: Any) -> TrainResult:
    """Train ``task`` on ``data`` (a :class:`~tfos_jobs.sources.ParquetSource` or
    :class:`~tfos_jobs.sources.DataFrameSource`) across Spark executors.

    ``config`` is a :class:`~tfos_jobs.config.TrainConfig`; keyword ``options`` (the fields of its
    scaling, run and loop configs, e.g. ``num_workers=4, epochs=2``) override it. Returns a
    :class:`~tfos_jobs.task.TrainResult`; raises :class:`TrainingFailed` with the failing node's
    traceback, or :class:`ClusterLost` when executors kept dying through every attempt.
    """
    config = (config or TrainConfig()).replace(**options)
    config = config.replace(run_id=config.run.run_id or uuid.uuid4().hex[:12])
    _announce_resume(config.run.model_dir)
    if config.run.export_uri:   # a target the chief could not publish to fails now, not after training
        check_export_target(config.run.export_uri, task.export_kind, config.run.export_version,
                            config.run.overwrite_export)
    plan = data.plan(config)   # bad data fails here, before any TF node starts
    with ControlServer(host=_driver_host(sc)) as control:
        for attempt in range(1, config.run.max_attempts + 1):
            outcome = _attempt(sc, task, data, config, plan, control, attempt)
            if outcome.get("result") is not None:
                return _train_result(outcome, attempt)
            log.warning("attempt %d/%d lost the TF cluster: %s", attempt, config.run.max_attempts, outcome["lost"])
        raise ClusterLost(f"TF cluster lost on all {config.run.max_attempts} attempts; last: {outcome['lost']}")


def _announce_resume(model_dir):
    """A run that continues an earlier one says so first (the user may have meant a fresh model dir)."""
    step = checkpoint_step(model_dir) if model_dir else None
    if step is not None:
        print(f"[tfos] resuming: {model_dir} holds a checkpoint at step {step}; training continues from there",
              file=sys.stderr, flush=True)


def _attempt(sc, task, data, config, plan, control, attempt):
    """One TF cluster: wait for executors, open the source for it, run and watch it."""
    control.reset(attempt)
    control.expect_ready(config.num_nodes if config.scaling.strategy == "ps" else 0)
    wait_for_executors(sc, config.num_nodes, timeout_s=config.run.start_timeout_s)
    with data.open(sc, config, plan, control) as reader:
        spec = NodeSpec(config=config, task=task, reader=reader, control_address=control.address,
                        control_secret=control.secret, attempt=attempt)
        return _run_attempt(sc, spec, control, attempt)


def _train_result(outcome, attempt):
    result = outcome["result"]
    return TrainResult(export_uri=result.get("export_uri", ""), metrics=result.get("metrics", {}),
                       attempts=attempt, steps=result.get("steps", 0), nodes=result["nodes"],
                       resumed_from=result.get("resumed_from", 0), timings=outcome["timings"])


def _driver_host(sc):
    return sc.getConf().get("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))


def wait_for_executors(sc, count: int, timeout_s: float) -> int:
    """Wait until ``count`` executors are registered, else fail with the numbers (never hang)."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        if have >= count:
            return have
        if time.monotonic() > deadline:
            raise RuntimeError(f"the TF cluster needs {count} Spark executors (one TF node each) but only "
                               f"{have} registered within {timeout_s:.0f} s")
        time.sleep(0.2)


def _run_attempt(sc, spec, control, attempt):
    """Start one TF cluster and watch it; return {"result": ...} or {"lost": reason}."""
    TFSparkNode = compat.import_tfos()
    config = spec.config
    n = config.num_nodes
    template = {"chief": [0]}
    if n > 1:
        template["worker"] = list(range(1, n))
    server = ReservationServer(control.address.rsplit(":", 1)[0], template, lambda: spark_executor_ips(sc),
                               control.claimed_port, deadline_s=config.run.start_timeout_s + 60).start()
    cluster_meta = {
        "id": random.getrandbits(64), "cluster_template": template, "num_executors": n,
        "default_fs": "file://", "working_dir": os.getcwd(), "server_addr": server.host_port,
        "release_port": True,
    }
    group = f"tfos-{config.run.run_id}-{attempt}"
    spark_status = {}
    tf_args = argparse.Namespace(num_gpus=config.scaling.num_gpus) if config.scaling.num_gpus is not None \
        else argparse.Namespace()   # TFoS reads only num_gpus from it (``'num_gpus' in tf_args``)
    map_fn = functools.partial(
        claim_and_reserve, TFSparkNode.run(functools.partial(node_main, spec), tf_args, cluster_meta, False, None,
                                           ["control", "error"], background=False),
        control.address, control.secret, attempt)

    def launch():
        sc.setJobGroup(group, f"TF cluster {config.run.run_id} attempt {attempt}", interruptOnCancel=True)
        try:
            sc.parallelize(range(n), n).foreachPartition(map_fn)
        except Exception as err:  # reported through spark_status to the watching thread
            spark_status["error"] = str(err)
        finally:
            spark_status["finished"] = True

    thread = threading.Thread(target=launch, name=f"tfos-spark-{attempt}", daemon=True)
    timings = {"launched": time.monotonic()}
    thread.start()
    try:
        outcome = _await_reservations(server, spark_status, config.run.start_timeout_s)
        timings["reserved"] = time.monotonic()
        if outcome is None:
            outcome = _watch(spec, control, spark_status, timings)
    finally:
        control.request_stop()
        if thread.is_alive():
            sc.cancelJobGroup(group)
        thread.join(timeout=60)
        server.stop()
    timings["ended"] = time.monotonic()
    outcome["timings"] = {
        "start_s": timings["reserved"] - timings["launched"],
        "shutdown_s": timings["ended"] - timings.get("chief_done", timings["ended"]),
        "total_s": timings["ended"] - timings["launched"],
    }
    return outcome


def _await_reservations(server, spark_status, timeout_s):
    """Wait for every node to reserve its port. (TFoS's own wait polls once a second and calls
    ``sc.stop()`` and ``sys.exit`` on any error.) Returns None, or a "lost" outcome."""
    deadline = time.monotonic() + timeout_s
    while not server.done():
        if spark_status.get("finished"):
            return {"lost": spark_status.get("error", "the Spark job ended before every node reserved")}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.remaining()} TF node(s) did not start within {timeout_s:.0f} s: "
                               "are there enough free executors (one per node, one task slot each)?")
        time.sleep(0.02)
    return None


def _watch(spec, control, spark_status, timings):
    """Follow the nodes' events until the chief is done (or the cluster is lost); every phase of the
    attempt has a bound (:class:`_Phases`)."""
    result, done = None, []
    phases = _Phases(spec.config, timings["reserved"])
    while True:
        try:
            event = control.events.get(timeout=0.2)
        except queue.Empty:
            event = None
        if event:
            phases.saw(event)
            if event["op"] == "progress":
                _print_progress(event)
            elif event["op"] == "failed" and event.get("peer_lost"):
                return {"lost": f"TF node {event['node']} lost a peer: {event['error'].strip().splitlines()[-1]}"}
            elif event["op"] == "failed":
                raise TrainingFailed(f"TF node {event['node']} failed:\n{event['error']}")
            elif event["op"] == "done":
                done.append(event["node"])
                if event["node"] == "chief:0":
                    timings["chief_done"] = time.monotonic()
                    result = event["result"]
                    control.request_stop()
            continue
        if spark_status.get("finished") or phases.expired() == "stopped":
            if result is not None:
                return {"result": dict(result, nodes=sorted(done))}
            return {"lost": spark_status.get("error", "the Spark job ended before the chief finished")}
        if phases.expired() == "stalled":
            return {"lost": phases.stall_reason()}


class _Phases:
    """An attempt's phases and their bounds:

    * starting  -- until every node reported ``started`` (its TF process runs): ``start_timeout_s``,
      then TimeoutError (an environment problem a retry would not fix);
    * training  -- from then until the chief's ``finishing``: a gap of ``stall_timeout_s`` between
      progress reports (or before the first, which may come after slow first steps) loses the attempt:
      under MultiWorkerMirrored a collective whose peer died inside a still-running Spark task can
      wait forever, and the next attempt resumes from the last checkpoint;
    * finishing -- the chief's evaluation and export: ``finish_timeout_s``, then TimeoutError;
    * stopping  -- after the chief's ``done``, the other nodes get :data:`STOP_GRACE_S` to end their
      Spark tasks before the attempt returns (and cancels what is left).
    """

    def __init__(self, config: TrainConfig, reserved: float):
        self.run, self.nodes = config.run, config.num_nodes
        self.phase, self.since, self.step, self.started = "starting", reserved, None, set()

    def saw(self, event: dict) -> None:
        now, op = time.monotonic(), event["op"]
        if op == "started":
            self.started.add(event["node"])
        if self.phase == "starting" and (len(self.started) >= self.nodes or op == "progress"):
            self.phase, self.since = "training", now
        if op == "progress" and self.phase == "training":
            self.since, self.step = now, event["step"]
        elif op == "finishing":
            self.phase, self.since = "finishing", now
        elif op == "done" and event["node"] == "chief:0":
            self.phase, self.since = "stopping", now

    def expired(self) -> str | None:
        """None, "stalled" (lose the attempt) or "stopped" (return the result); raises TimeoutError."""
        waited = time.monotonic() - self.since
        if self.phase == "starting" and waited > self.run.start_timeout_s:
            raise TimeoutError(f"{self.nodes - len(self.started)} of {self.nodes} TF node(s) did not start within "
                               f"{self.run.start_timeout_s:.0f} s (started: {sorted(self.started) or 'none'})")
        if self.phase == "training" and waited > self.run.stall_timeout_s:
            return "stalled"
        if self.phase == "finishing" and waited > self.run.finish_timeout_s:
            raise TimeoutError(f"the chief's evaluation and export did not end within "
                               f"{self.run.finish_timeout_s:.0f} s of the last step")
        if self.phase == "stopping" and waited > STOP_GRACE_S:
            return "stopped"
        return None

    def stall_reason(self) -> str:
        where = f"after step {self.step}" if self.step is not None else "before the first step"
        return (f"no progress for {self.run.stall_timeout_s:.0f} s {where}: a TF node or collective is stuck")


def _print_progress(event):
    step, total = event["step"], event.get("total_steps") or 0
    rate, elapsed = event.get("examples_per_s", 0.0), event.get("elapsed_s", 0.0)
    eta = ""
    if total and step:
        eta = f"  eta {elapsed / max(step, 1) * (total - step):.0f}s"
    print(f"[tfos] step {step}/{total}  loss {event['loss']:.4f}  {rate:,.0f} examples/s{eta}",
          file=sys.stderr, flush=True)
