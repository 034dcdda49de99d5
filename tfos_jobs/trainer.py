"""The driver side of distributed training: ``fit`` is the runtime's one public entry point.

One attempt = one TF cluster on Spark executors, formed by tensorflowonspark's reservation protocol
(``TFSparkNode.run`` reserves ports and builds the cluster spec on each executor). The driver then
watches the control channel, not Spark's status tracker, so it reacts within a fraction of a second:

* the chief reports ``done``  -> every ps/worker is told to stop; the attempt succeeds;
* a node reports ``failed``   -> the Spark job is cancelled and its traceback is raised (no retry:
  the same code would fail again);
* a node vanishes (executor lost) -> the job is cancelled and, while attempts remain, a new TF
  cluster resumes from the last checkpoint in ``model_dir``.
"""
import logging
import math
import numbers
import os
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from tfos_jobs import compat, feed, inputs
from tfos_jobs.control import ControlServer
from tfos_jobs.node import NodeSpec, node_main
from tfos_jobs.task import TrainResult

log = logging.getLogger("tfos_jobs")


class TrainingFailed(RuntimeError):
    """A TF node raised: the message carries the node's name and its traceback."""


class ClusterLost(RuntimeError):
    """The TF cluster lost a node without a traceback (executor died) on the last attempt."""


@dataclass
class TrainConfig:
    """How to train; every field is keyword-only in ``fit`` and travels to each TF node."""
    strategy: str = "mwms"            # "mwms" (MultiWorkerMirrored) or "ps" (ParameterServer)
    num_workers: int = 2              # TF workers; for mwms the chief is one of them
    num_ps: int = 1                   # ps tasks (strategy="ps" only)
    model_dir: str = ""               # storage URI for checkpoints and TensorBoard events
    export_uri: str = ""              # storage URI the chief publishes the model to
    batch_size: int = 256             # per worker
    epochs: float = 1.0
    steps: int = 0                    # total steps; 0 = derive from epochs and the row count
    checkpoint_every: int = 200
    log_every: int = 50
    steps_per_closure: int = 10       # ps: steps in one closure scheduled on a worker
    max_attempts: int = 2             # TF clusters started in all (executor loss restarts one)
    start_timeout_s: float = 300.0    # for every node to reserve its port and report ready
    orphan_timeout_s: float = 30.0    # a node exits if the driver is unreachable this long
    stall_timeout_s: float = 600.0    # training but no progress report this long: the attempt is lost
    #                                   (the chief reports every log_every steps: keep that well below it)
    num_gpus: int | None = None       # per node; None lets TFoS take 1 if the executor has any
    local_root: str = "/tmp/tfos_jobs"
    run_id: str = ""

    def validate(self):
        """Reject what the CLIs reject, for library callers too: ``steps=-1`` would otherwise skip
        training and publish an untrained model, ``epochs=nan`` would train for zero steps."""
        if self.strategy not in ("mwms", "ps"):
            raise ValueError(f"strategy must be 'mwms' or 'ps', not {self.strategy!r}")
        if self.num_workers < 1 or (self.strategy == "ps" and self.num_ps < 1):
            raise ValueError(f"need num_workers >= 1 (got {self.num_workers}) and, for ps, num_ps >= 1 "
                             f"(got {self.num_ps})")
        for name in ("batch_size", "max_attempts", "checkpoint_every", "log_every", "steps_per_closure"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer (0: derive from epochs), not {self.steps!r}")
        for name in ("epochs", "start_timeout_s", "orphan_timeout_s", "stall_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, not {value!r}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"num_gpus must be None or >= 0, not {self.num_gpus!r}")

    @property
    def num_nodes(self):
        """Spark executors needed: one TF node each."""
        return self.num_workers if self.strategy == "mwms" else 1 + self.num_ps + self.num_workers


def fit(sc, task, data, **options):
    """Train ``task`` on ``data`` (a :class:`~tfos_jobs.task.ParquetSource`) across Spark executors.

    Keyword options are the fields of :class:`TrainConfig`. Returns a
    :class:`~tfos_jobs.task.TrainResult`; raises :class:`TrainingFailed` with the failing node's
    traceback, or :class:`ClusterLost` when executors kept dying through every attempt.
    """
    config = TrainConfig(**options)
    config.run_id = config.run_id or uuid.uuid4().hex[:12]
    config.validate()
    plan = data.plan() if feed.is_feed(data) else inputs.plan_parquet(data)  # feed: DataFrameSource
    if not feed.is_feed(data) and len(plan.files) < config.num_workers:
        raise ValueError(f"{data.uri} has {len(plan.files)} data file(s) but {config.num_workers} TF workers each "
                         "need at least one: write the data set with more files (e.g. repartition)")
    if not feed.is_feed(data) and plan.smallest_shard_rows(config.num_workers) < config.batch_size:
        raise ValueError(f"{data.uri}: a worker's share has {plan.smallest_shard_rows(config.num_workers)} rows, "
                         f"fewer than one batch of {config.batch_size}: use a smaller batch_size or more data")
    # An MWMS step consumes one batch on every worker; a PS step one batch on one worker.
    rows_per_step = config.batch_size * (config.num_workers if config.strategy == "mwms" else 1)
    total_steps = config.steps or max(1, int(plan.num_rows * config.epochs // rows_per_step))
    if feed.is_feed(data):
        total_steps = config.steps  # 0: until the feed's last epoch (the rows are unknown up front)
    with ControlServer(host=_driver_host(sc)) as control:
        spec = NodeSpec(config=config, task=task, source=data, plan=plan, control_address=control.address,
                        control_token=control.token, total_steps=total_steps)
        for attempt in range(1, config.max_attempts + 1):
            control.reset(attempt)
            spec.attempt = attempt
            control.expect_ready(config.num_nodes if config.strategy == "ps" else 0)
            wait_for_executors(sc, config.num_nodes, timeout_s=config.start_timeout_s)
            with feed.attempt(sc, data, spec, control, _driver_host(sc)) as attempt_spec:  # no-op unless a feed
                outcome = _run_attempt(sc, attempt_spec, control, attempt)
            if outcome.get("result") is not None:
                result = outcome["result"]
                return TrainResult(export_uri=result.get("export_uri", ""), metrics=result.get("metrics", {}),
                                   attempts=attempt, steps=result.get("steps", total_steps),
                                   nodes=result["nodes"], resumed_from=result.get("resumed_from", 0),
                                   timings=outcome["timings"])
            log.warning("attempt %d/%d lost the TF cluster: %s", attempt, config.max_attempts, outcome["lost"])
        raise ClusterLost(f"TF cluster lost on all {config.max_attempts} attempts; last: {outcome['lost']}")


def _driver_host(sc):
    return sc.getConf().get("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))


def wait_for_executors(sc, count, timeout_s):
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
    TFSparkNode, reservation = compat.import_tfos()
    config = spec.config
    n = config.num_nodes
    template = {"chief": [0]}
    if n > 1:
        template["worker"] = list(range(1, n))
    server = reservation.Server(n)
    cluster_meta = {
        "id": random.getrandbits(64), "cluster_template": template, "num_executors": n,
        "default_fs": "file://", "working_dir": os.getcwd(), "server_addr": server.start(),
        "release_port": True,
    }
    group = f"tfos-{config.run_id}-{attempt}"
    spark_status = {}
    map_fn = TFSparkNode.run(node_main, spec, cluster_meta, False, None, ["control", "error"], background=False)

    def launch():
        sc.setJobGroup(group, f"TF cluster {config.run_id} attempt {attempt}", interruptOnCancel=True)
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
        outcome = _await_reservations(server, spark_status, config.start_timeout_s)
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
    while not server.reservations.done():
        if spark_status.get("finished"):
            return {"lost": spark_status.get("error", "the Spark job ended before every node reserved")}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.reservations.remaining()} TF node(s) did not start within {timeout_s:.0f} s: "
                               "are there enough free executors (one per node, one task slot each)?")
        time.sleep(0.02)
    return None


def _watch(spec, control, spark_status, timings):
    """Follow the nodes' events until the chief is done (or the cluster is lost).

    A node can hang without failing: under MultiWorkerMirrored, a collective whose peer died inside a
    still-running Spark task waits forever. So from the chief's first progress report until it starts
    evaluating, a gap of ``stall_timeout_s`` between reports counts as a lost cluster: the attempt is
    cancelled and the next one resumes from the last checkpoint."""
    config = spec.config
    result, seen, done = None, set(), []
    last_progress = None   # (monotonic time, step) while training; None before and after
    while True:
        try:
            event = control.events.get(timeout=0.2)
        except queue.Empty:
            event = None
        if event:
            seen.add(event["node"])
            if event["op"] == "progress":
                _print_progress(event)
                last_progress = (time.monotonic(), event["step"])
            elif event["op"] == "finishing":
                last_progress = None
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
        if spark_status.get("finished"):
            if result is not None:
                return {"result": dict(result, nodes=sorted(done))}
            return {"lost": spark_status.get("error", "the Spark job ended before the chief finished")}
        if last_progress and time.monotonic() - last_progress[0] > config.stall_timeout_s:
            return {"lost": f"no progress for {config.stall_timeout_s:.0f} s after step {last_progress[1]}: "
                            "a TF node or collective is stuck"}
        if not seen and time.monotonic() - timings["reserved"] > config.start_timeout_s:
            raise TimeoutError(f"no TF node reported within {config.start_timeout_s:.0f} s of starting")


def _print_progress(event):
    step, total = event["step"], event.get("total_steps") or 0
    rate, elapsed = event.get("examples_per_s", 0.0), event.get("elapsed_s", 0.0)
    eta = ""
    if total and step:
        eta = f"  eta {elapsed / max(step, 1) * (total - step):.0f}s"
    print(f"[tfos] step {step}/{total}  loss {event['loss']:.4f}  {rate:,.0f} examples/s{eta}",
          file=sys.stderr, flush=True)
