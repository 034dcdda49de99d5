"""What each TF process does, by role. Runs in the node process started by ``tfos_jobs.node``.

mwms:  every worker (the chief is worker 0) runs the same synchronous loop.
ps:    ps tasks and workers only host a ``tf.distribute.Server`` (workers stage their data first) until
       the driver says stop; the chief coordinates the training with ``ClusterCoordinator``.
"""
import os
import time

from tfos_jobs import feed, inputs
from tfos_jobs.checkpoint import StorageCheckpoints
from tfos_jobs.export import publish_export

import hdfs_io


def run_role(spec, control):
    """Run this node's role; return the result dict the chief reports to the driver."""
    if spec.config.strategy == "mwms":
        if feed.is_feed(spec.source):  # a Spark DataFrame streamed to every worker (tfos_jobs/feed.py)
            return feed.train_multi_worker(spec, control)
        return train_multi_worker(spec, control)
    if spec.role == "chief":
        return train_parameter_server(spec, control)
    return serve_until_stopped(spec, control)


# ----------------------------------------------------------------------------------- helpers


def _local(spec, *parts):
    return os.path.join(spec.config.local_root, spec.config.run_id, f"{spec.role}-{spec.index}", *parts)


def _model_state(spec, strategy):
    import tensorflow as tf
    with strategy.scope():
        model = spec.task.build_model()
        optimizer = spec.task.build_optimizer()
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    return model, optimizer, step, checkpoint


def _apply_gradients(spec, model, optimizer, features, labels, global_batch):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        predictions = model(features, training=True)
        per_example = spec.task.per_example_loss(labels, predictions)
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


class Progress:
    """Chief-side progress: lines to the driver and scalars to TensorBoard."""

    def __init__(self, spec, control, start_step):
        import tensorflow as tf
        self.spec, self.control = spec, control
        self.tb_dir = _local(spec, "tensorboard")
        self.writer = tf.summary.create_file_writer(self.tb_dir)
        self.start_step, self.start_time = start_step, time.monotonic()
        self.first = None

    def report(self, step, loss):
        """Send a progress line; return the steady examples/s (since the first report, which
        includes tracing and warm-up)."""
        now = time.monotonic()
        elapsed = max(now - self.start_time, 1e-6)
        rate = (step - self.start_step) * self.spec.global_batch / elapsed
        if self.first is None:
            self.first = (step, now)
        elif step > self.first[0]:
            rate = (step - self.first[0]) * self.spec.global_batch / max(now - self.first[1], 1e-6)
        with self.writer.as_default():
            _scalar("loss", loss, step)
            _scalar("examples_per_second", rate, step)
        self.control.send("progress", step=int(step), total_steps=self.spec.total_steps, loss=float(loss),
                          examples_per_s=rate, elapsed_s=elapsed)
        return rate

    def publish(self):
        self.writer.flush()
        if self.spec.config.model_dir:
            hdfs_io.upload(self.tb_dir, hdfs_io.join(self.spec.config.model_dir, "tensorboard"))


def _scalar(tag, value, step):
    """A TensorBoard scalar without the ``tensorboard`` package (``tf.summary.scalar`` needs it and
    TF 2.21 no longer installs it): the same event, tagged for TensorBoard's scalars plugin."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.cast(value, tf.float32), step=step, metadata=metadata.SerializeToString())


def _finish_on_chief(spec, model, progress, last_loss, rate):
    """Evaluate and export a plain copy of the model (no distribution state inside it)."""
    progress.control.send("finishing")   # no more progress reports: the driver's stall check ends
    plain = spec.task.build_model()
    plain.set_weights(model.get_weights())
    progress.publish()
    metrics = {"final_loss": float(last_loss), "steps": spec.total_steps, "examples_per_s": rate,
               "strategy": spec.config.strategy}
    metrics.update({k: float(v) for k, v in spec.task.evaluate(plain, spec.config).items()})
    export_uri = spec.config.export_uri
    if export_uri:
        features = {name: spec.dtypes[name] for name in spec.source.features}
        publish_export(export_uri, plain, features, metrics)
    return {"metrics": metrics, "export_uri": export_uri, "steps": spec.total_steps,
            "resumed_from": progress.start_step}


def _steps_to_boundary(spec, current, limit=None):
    """Steps until the next log line, checkpoint or the end (at most ``limit``)."""
    config = spec.config
    boundaries = [spec.total_steps, (current // config.log_every + 1) * config.log_every,
                  (current // config.checkpoint_every + 1) * config.checkpoint_every]
    count = min(boundaries) - current
    return min(count, limit) if limit else count


def _checkpoints(spec, checkpoint, writer):
    remote = hdfs_io.join(spec.config.model_dir, "checkpoints") if spec.config.model_dir else None
    # In MWMS every worker must save; only the chief's copy goes to storage.
    return StorageCheckpoints(checkpoint, _local(spec, "checkpoints"), remote, writer=writer)


# ----------------------------------------------------------------------------------- mwms


def train_multi_worker(spec, control):
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model, optimizer, step, checkpoint = _model_state(spec, strategy)
    with strategy.scope():
        # The last step's loss, summed over the workers only when read: one collective per call of
        # train_steps instead of one per step.
        last_loss = tf.Variable(0.0, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                                aggregation=tf.VariableAggregation.SUM)
    is_chief = spec.role == "chief"
    checkpoints = _checkpoints(spec, checkpoint, writer=is_chief)
    checkpoints.restore_latest()
    files = spec.files

    def dataset_fn(_context):
        return inputs.streaming_dataset(spec.source, files, spec.config.batch_size).repeat().prefetch(2)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    @tf.function
    def train_steps(it, count):
        # Several steps per call: one Python round trip per log/checkpoint interval, not per step.
        for _ in tf.range(count):
            features, labels = next(it)
            strategy.run(lambda f, l: last_loss.assign(_apply_gradients(
                spec, model, optimizer, f, l, spec.global_batch)), args=(features, labels))
        step.assign_add(tf.cast(count, tf.int64))
        return last_loss.read_value()

    current = int(step.numpy())
    progress = Progress(spec, control, current) if is_chief else None
    loss, rate = float("nan"), 0.0
    while current < spec.total_steps:
        count = _steps_to_boundary(spec, current)
        loss = train_steps(iterator, tf.constant(count))
        current += count
        if is_chief and (current % spec.config.log_every == 0 or current == spec.total_steps):
            rate = progress.report(current, loss)
        if current % spec.config.checkpoint_every == 0 or current == spec.total_steps:
            checkpoints.save(current)
    if not is_chief:
        return {"steps": int(step.numpy())}
    return _finish_on_chief(spec, model, progress, loss, rate)


# ----------------------------------------------------------------------------------- ps


def serve_until_stopped(spec, control):
    """A ps task or PS-mode worker: host a TF server until the driver says the chief is done."""
    import tensorflow as tf
    if spec.role == "worker":
        if feed.is_feed(spec.source):  # DataFrame feed: one pass received into the same staged format
            rows = feed.stage(spec)
            if rows == 0:
                raise ValueError(f"worker {spec.index} got no rows from the DataFrame feed")
        else:
            rows = inputs.stage_shard(spec.source, spec.files, spec.config.batch_size, spec.stage_dir)
        if rows == 0:
            raise ValueError(f"worker {spec.index} got no rows from its shard {[f.uri for f in spec.files]}")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tf.distribute.Server(resolver.cluster_spec(), job_name=spec.role, task_index=spec.index,
                         protocol="grpc", start=True)
    control.send("ready")
    if not control.wait_for("stop", orphan_timeout_s=spec.config.orphan_timeout_s):
        raise RuntimeError("lost contact with the driver; stopping this TF node")
    return {}


def train_parameter_server(spec, control):
    import tensorflow as tf
    control.send("ready")
    control.wait_for("all_ready", deadline_s=spec.config.start_timeout_s,
                     orphan_timeout_s=spec.config.orphan_timeout_s)
    fed_rows = None
    if feed.is_feed(spec.source):  # the workers have staged the feed: now its row count is known
        fed_rows = feed.fed_rows(spec)
        spec.total_steps = spec.config.steps or max(1, int(fed_rows * spec.config.epochs
                                                           // spec.config.batch_size))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    model, optimizer, step, checkpoint = _model_state(spec, strategy)
    checkpoints = _checkpoints(spec, checkpoint, writer=True)
    checkpoints.restore_latest()
    stage_pattern = os.path.join(spec.stage_root, "worker-{}", "*.tfrecord")
    dtypes = spec.dtypes

    def dataset_fn():
        index = tf.distribute.coordinator.experimental_get_current_worker_index()
        pattern = tf.strings.format(stage_pattern, index)
        return inputs.staged_dataset(spec.source, dtypes, pattern).repeat().prefetch(2)

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))

    @tf.function
    def train_steps(it, count):
        # A closure runs `count` steps on one worker: fewer coordinator round trips per step.
        loss = tf.constant(0.0)
        for _ in tf.range(count):
            features, labels = next(it)
            loss = strategy.run(lambda f, l: _apply_gradients(
                spec, model, optimizer, f, l, spec.config.batch_size), args=(features, labels))
        return loss

    progress = Progress(spec, control, int(step.numpy()))
    current, loss, rate = int(step.numpy()), None, 0.0
    while current < spec.total_steps:
        count = _steps_to_boundary(spec, current, limit=spec.config.steps_per_closure)
        loss = coordinator.schedule(train_steps, args=(iterator, tf.constant(count)))
        current += count
        if current % spec.config.log_every == 0 or current % spec.config.checkpoint_every == 0 \
                or current == spec.total_steps:
            coordinator.join()
            step.assign(current)
            rate = progress.report(current, loss.fetch())
        if current % spec.config.checkpoint_every == 0 or current == spec.total_steps:
            checkpoints.save(current)
    coordinator.join()
    result = _finish_on_chief(spec, model, progress, loss.fetch() if loss is not None else float("nan"), rate)
    if fed_rows is not None:
        result["metrics"]["feed_rows"] = fed_rows
    return result
