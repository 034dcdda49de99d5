"""The two training loops (run in the TF process): one for MultiWorkerMirrored, one for
ParameterServer. Both take their data from the node's reader (``tfos_jobs.tfnode.readers``), so a
Parquet data set and a DataFrame feed train through the same code.

mwms:  every worker (the chief is worker 0) runs the same synchronous loop.
ps:    the chief coordinates with ``ClusterCoordinator``; ps tasks and workers only host a
       ``tf.distribute.Server`` (``tfos_jobs.tfnode.roles``).
"""
from __future__ import annotations

import os

import hdfs_io
from tfos_jobs.tfnode.checkpoint import StorageCheckpoints, require_new_steps
from tfos_jobs.tfnode.datasets import staged_dataset
from tfos_jobs.tfnode.progress import BestWeights, Progress, finish_on_chief

# TensorFlow is imported inside the functions: this module is imported by the node process before
# TF_CONFIG and the thread settings are final.

# Input iterators are kept, never deleted, until the TF process ends with os._exit (tfnode/__main__):
# deleting a distributed tf.data iterator waits for its background threads, and took 2.2-3.5 s in 3 of
# 5 runs of benchmarks/runtime.py (2026-12-06), after the last step: on the chief before evaluation
# and export, on a worker before it reports done. Autotuning off did not shorten it.
_KEPT_UNTIL_EXIT: list = []


def _model_state(node, strategy):
    import tensorflow as tf
    with strategy.scope():
        model = node.spec.task.build_model()
        optimizer = node.spec.task.build_optimizer()
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    return model, optimizer, step, checkpoint


def _apply_gradients(task, model, optimizer, features, labels, global_batch):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        predictions = model(features, training=True)
        per_example = task.per_example_loss(labels, predictions)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        if model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
    gradients = [_dense_if_small(g) for g in tape.gradient(loss, model.trainable_variables)]
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss


def _dense_if_small(gradient):
    """An embedding's gradient comes as IndexedSlices, which MWMS all-gathers in several collectives
    of their own. When the whole table is not much bigger than the slices, a dense gradient joins
    the one packed all-reduce of the dense layers instead: 1.8x the steps/s of the toy CTR model on
    2 workers. Large hashed tables stay sparse (measured in benchmarks/runtime.py)."""
    import tensorflow as tf
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    table = gradient.dense_shape
    if table is None or gradient.values.shape.rank is None or not table.shape.is_fully_defined():
        return gradient
    static = tf.get_static_value(table)
    rows = gradient.values.shape[0]
    if static is None or rows is None:
        return gradient
    return tf.convert_to_tensor(gradient) if int(static[0]) <= 2 * rows else gradient


def _steps_to_boundary(loop, current, total, limit=None):
    """Steps until the next log line, checkpoint or ``total`` (0: no end known), at most ``limit``."""
    boundaries = [(current // loop.log_every + 1) * loop.log_every,
                  (current // loop.checkpoint_every + 1) * loop.checkpoint_every]
    if loop.validate_every:
        boundaries.append((current // loop.validate_every + 1) * loop.validate_every)
    if total:
        boundaries.append(total)
    count = min(boundaries) - current
    return min(count, limit) if limit else count


def _checkpoints(node, checkpoint, writer):
    model_dir = node.spec.config.run.model_dir
    remote = hdfs_io.join(model_dir, "checkpoints") if model_dir else None
    # In MWMS every worker must save; only the chief's copy goes to storage.
    return StorageCheckpoints(checkpoint, node.local("checkpoints"), remote, writer=writer)


# ----------------------------------------------------------------------------------- mwms


def train_multi_worker(node, control) -> dict:
    """Every worker runs this loop in lockstep. A repeating input trains the planned steps; a finite
    one (the feed) trains until it ends on every worker, or until ``steps`` when that is set."""
    import tensorflow as tf
    config = node.spec.config
    # No CommunicationOptions(timeout_seconds=...): TF starts one sleeping thread per collective for
    # that timeout (tensorflow/tensorflow#62466), so a 120 s timeout reached the thread limit and
    # aborted the process within seconds of training (measured here). A lost peer ends the attempt
    # through its Spark task or the stall bound instead.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model, optimizer, step, checkpoint = _model_state(node, strategy)
    with strategy.scope():
        # The last step's loss, summed over the workers only when read: one collective per call of
        # train_steps instead of one per step.
        last_loss = tf.Variable(0.0, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                                aggregation=tf.VariableAggregation.SUM)
    checkpoints = _checkpoints(node, checkpoint, writer=node.is_chief)
    checkpoints.restore_latest()
    with node.spec.reader.worker_input(node) as data:
        total = config.loop.steps if data.finite else config.loop.total_steps(node.spec.reader.rows(),
                                                                              config.scaling)
        require_new_steps(node, int(step.numpy()), total)
        iterator = iter(strategy.distribute_datasets_from_function(data.dataset_fn))
        _KEPT_UNTIL_EXIT.append(iterator)   # from the start: a loop that raises must not wait on it either
        train_steps = _mwms_step_function(node, strategy, model, optimizer, step, last_loss, data.finite)
        best = BestWeights(node, model) if node.is_chief else None
        outcome = _run_mwms(node, control, checkpoints, train_steps, iterator, int(step.numpy()), total, best)
        extra = data.metrics()
    current, loss, rate, progress = outcome
    if not node.is_chief:
        return {"steps": current}
    result = finish_on_chief(node, model, progress, current, loss, rate, best)
    result["metrics"].update(extra)
    return result


def _mwms_step_function(node, strategy, model, optimizer, step, last_loss, finite):
    """``train_steps(iterator, count)``: run up to ``count`` steps, return (loss, steps run).

    A repeating input runs them in one tf.function: one Python round trip per log/checkpoint interval,
    not per step. A finite input (the feed) runs one traced step per batch, for two reasons: the last
    batches of an epoch differ in size between workers, and only a trace with the batch's static size
    turns small embedding gradients dense (``_dense_if_small``), so that workers never all-gather
    slices of different shapes; and ``get_next_as_optional`` is asked eagerly, so all workers agree
    when the data has ended."""
    import tensorflow as tf
    task, global_batch = node.spec.task, node.global_batch

    def apply(features, labels):
        return _apply_gradients(task, model, optimizer, features, labels, global_batch)

    @tf.function
    def repeated_steps(iterator, count):
        for _ in tf.range(count):
            features, labels = next(iterator)
            strategy.run(lambda f, l: last_loss.assign(apply(f, l)), args=(features, labels))
        step.assign_add(tf.cast(count, tf.int64))
        return last_loss.read_value(), count   # one collective per call: the summed loss

    @tf.function
    def one_step(features, labels):
        per_replica = strategy.run(apply, args=(features, labels))
        step.assign_add(1)
        return strategy.reduce("SUM", per_replica, axis=None)

    def finite_steps(iterator, count):
        loss, done = float("nan"), 0
        for _ in range(int(count)):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            loss, done = one_step(*optional.get_value()), done + 1
        return loss, done

    return finite_steps if finite else repeated_steps


def _run_mwms(node, control, checkpoints, train_steps, iterator, current, total, best=None):
    """Call ``train_steps`` from boundary to boundary: report (and validate) on the chief, checkpoint on
    every worker."""
    import tensorflow as tf
    loop = node.spec.config.loop
    progress = Progress(node, control, current, total) if node.is_chief else None
    loss, rate, reported, saved = float("nan"), 0.0, current, current
    if best is not None and best.due(current, last=True):
        best.check(current)   # the starting point is a candidate too
    while not (total and current >= total):
        count = _steps_to_boundary(loop, current, total)
        loss, done = train_steps(iterator, tf.constant(count, tf.int64))
        current += int(done)
        ended = int(done) < count   # a finite input ran out
        last = ended or current == total
        if node.is_chief and current != reported and (current % loop.log_every == 0 or last):
            rate, reported = progress.report(current, loss), current
        if best is not None and best.due(current, last):
            best.check(current)
        if current != saved and (current % loop.checkpoint_every == 0 or last):
            checkpoints.save(current)
            saved = current
        if ended:
            break
    return current, loss, rate, progress


# ----------------------------------------------------------------------------------- ps


def train_parameter_server(node, control) -> dict:
    """The chief: wait until every worker has staged its share, then schedule closures of
    ``steps_per_closure`` steps on the workers, which read their staged shares with native ops."""
    import tensorflow as tf
    config, reader = node.spec.config, node.spec.reader
    control.send("ready")
    control.wait_for("all_ready", deadline_s=config.run.start_timeout_s, orphan_timeout_s=config.run.orphan_timeout_s)
    rows = reader.staged_rows()
    total = config.loop.total_steps(rows, config.scaling)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    model, optimizer, step, checkpoint = _model_state(node, strategy)
    checkpoints = _checkpoints(node, checkpoint, writer=True)
    checkpoints.restore_latest()
    require_new_steps(node, int(step.numpy()), total)
    stage_pattern = os.path.join(node.stage_root, "worker-{}", "*.tfrecord")

    def dataset_fn():
        index = tf.distribute.coordinator.experimental_get_current_worker_index()
        return staged_dataset(reader, reader.dtypes, tf.strings.format(stage_pattern, index)).repeat().prefetch(2)

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))
    _KEPT_UNTIL_EXIT.append(iterator)   # from the start: a loop that raises must not wait on it either
    train_steps = _ps_step_function(node, strategy, model, optimizer)
    progress = Progress(node, control, int(step.numpy()), total)
    best = BestWeights(node, model)
    loss, rate = _run_ps(node, coordinator, checkpoints, train_steps, iterator, step, progress, total, best)
    result = finish_on_chief(node, model, progress, total, loss, rate, best)
    result["metrics"].update(reader.metrics(rows))
    return result


def _ps_step_function(node, strategy, model, optimizer):
    import tensorflow as tf
    task, batch = node.spec.task, node.spec.config.loop.batch_size

    @tf.function
    def train_steps(iterator, count):
        # A closure runs `count` steps on one worker: fewer coordinator round trips per step.
        loss = tf.constant(0.0)
        for _ in tf.range(count):
            features, labels = next(iterator)
            loss = strategy.run(lambda f, l: _apply_gradients(task, model, optimizer, f, l, batch),
                                args=(features, labels))
        return loss

    return train_steps


def _run_ps(node, coordinator, checkpoints, train_steps, iterator, step, progress, total, best):
    import tensorflow as tf
    loop = node.spec.config.loop
    current, loss, rate = int(step.numpy()), None, 0.0
    if best.due(current, last=True):
        best.check(current)
    while current < total:
        count = _steps_to_boundary(loop, current, total, limit=loop.steps_per_closure)
        loss = coordinator.schedule(train_steps, args=(iterator, tf.constant(count)))
        current += count
        save = current % loop.checkpoint_every == 0 or current == total
        if save or current % loop.log_every == 0:
            coordinator.join()
            step.assign(current)
            rate = progress.report(current, loss.fetch())
        if save:
            checkpoints.save(current)
        if best.due(current, current == total):
            coordinator.join()
            best.check(current)
    coordinator.join()
    return (loss.fetch() if loss is not None else float("nan")), rate
