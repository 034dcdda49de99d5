"""The chief's reporting (runs in the chief's TF process): progress lines to the driver, scalars to
TensorBoard, and the end of training -- evaluate and export a plain copy of the model."""
from __future__ import annotations

import time

import hdfs_io
from tfos_jobs.export import publish_export


class Progress:
    """Chief-side progress: lines to the driver and scalars to TensorBoard."""

    def __init__(self, node, control, start_step: int, total_steps: int):
        import tensorflow as tf
        self.node, self.control = node, control
        self.total_steps = total_steps   # 0 while unknown (a feed trained until its last epoch)
        self.tb_dir = node.local("tensorboard")
        self.writer = tf.summary.create_file_writer(self.tb_dir)
        self.start_step, self.start_time = start_step, time.monotonic()
        self.first = None

    def report(self, step: int, loss) -> float:
        """Send a progress line; return the steady examples/s (since the first report, which
        includes tracing and warm-up)."""
        now = time.monotonic()
        elapsed = max(now - self.start_time, 1e-6)
        rate = (step - self.start_step) * self.node.global_batch / elapsed
        if self.first is None:
            self.first = (step, now)
        elif step > self.first[0]:
            rate = (step - self.first[0]) * self.node.global_batch / max(now - self.first[1], 1e-6)
        with self.writer.as_default():
            _scalar("loss", loss, step)
            _scalar("examples_per_second", rate, step)
        self.control.send("progress", step=int(step), total_steps=self.total_steps, loss=float(loss),
                          examples_per_s=rate, elapsed_s=elapsed)
        return rate

    def publish(self) -> None:
        self.writer.flush()
        model_dir = self.node.spec.config.run.model_dir
        if model_dir:
            hdfs_io.upload(self.tb_dir, hdfs_io.join(model_dir, "tensorboard"))


def _scalar(tag, value, step):
    """A TensorBoard scalar without the ``tensorboard`` package (``tf.summary.scalar`` needs it and
    TF 2.21 no longer installs it): the same event, tagged for TensorBoard's scalars plugin."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.cast(value, tf.float32), step=step, metadata=metadata.SerializeToString())


class BestWeights:
    """On the chief, every ``loop.validate_every`` steps: the task's ``validation_loss`` of a plain copy
    of the model; the weights of the lowest are what :func:`finish_on_chief` evaluates and exports
    (early stopping with the best checkpoint restored, without stopping: the workers of a synchronous
    strategy run the planned steps in lockstep, and stopping them early would need one more agreement).

    The best weights are kept in memory: a run resumed from a checkpoint judges from that step on."""

    def __init__(self, node, model):
        self.task, self.model = node.spec.task, model
        self.every = node.spec.config.loop.validate_every
        self.plain = None
        self.best = None   # (loss, step, weights)
        self.checks = 0

    def due(self, step: int, last: bool = False) -> bool:
        return self.every > 0 and (last or step % self.every == 0)

    def check(self, step: int) -> None:
        if self.plain is None:
            self.plain = self.task.build_model()
        self.plain.set_weights(self.model.get_weights())
        loss = self.task.validation_loss(self.plain)
        if loss is None:   # the task has no validation data: nothing to choose between
            self.every = 0
            return
        self.checks += 1
        if self.best is None or loss < self.best[0]:   # the copy as validation left it (untrained weights set)
            self.best = (float(loss), int(step), self.plain.get_weights())

    def metrics(self) -> dict:
        if self.best is None:
            return {}
        return {"best_step": self.best[1], "best_validation_loss": self.best[0], "validation_checks": self.checks}


def finish_on_chief(node, model, progress: Progress, steps: int, last_loss, rate: float,
                    best: BestWeights | None = None) -> dict:
    """Evaluate and export a plain copy of the model (no distribution state inside it), with the
    weights ``best`` chose when it chose any; return the result the chief reports to the driver."""
    spec = node.spec
    progress.control.send("finishing")   # no more progress reports: the driver's stall check ends
    plain = spec.task.build_model()
    plain.set_weights(best.best[2] if best is not None and best.best else model.get_weights())
    progress.publish()
    metrics = {"final_loss": float(last_loss), "steps": steps, "resumed_from_step": progress.start_step,
               "examples_per_s": rate, "strategy": spec.config.scaling.strategy,
               **(best.metrics() if best is not None else {})}
    metrics.update({k: float(v) for k, v in spec.task.evaluate(plain, spec.config).items()})
    run = spec.config.run
    export_uri = run.export_uri
    if export_uri:
        features = {name: spec.reader.dtypes[name] for name in spec.reader.features}
        export_uri = publish_export(export_uri, plain, features, metrics, kind=spec.task.export_kind,
                                    files=spec.task.export_files(), version=run.export_version,
                                    overwrite=run.overwrite_export,
                                    lineage={"training": spec.config.as_dict(), "data": spec.task.lineage()})
    return {"metrics": metrics, "export_uri": export_uri, "steps": steps, "resumed_from": progress.start_step}
