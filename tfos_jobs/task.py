"""What a job tells the runtime: the model, the loss and the data. Everything else (strategy, cluster,
feeding, checkpoints, export) is the runtime's business, so the CTR and survey jobs share all of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tfos_jobs.sources import ParquetSource  # noqa: F401  (imported from here by jobs and users)


class TrainingTask:
    """Subclass and override ``build_model``; the other hooks have sensible defaults.

    Instances are pickled to every TF node, so keep them small: hyper-parameters, not data.
    """

    learning_rate = 1e-3
    export_kind: str | None = None   # e.g. "ctr-export": an export is only ever replaced by one of the same kind

    def build_model(self) -> Any:   # keras.Model
        """Return an uncompiled Keras model taking a dict of feature tensors."""
        raise NotImplementedError

    def build_optimizer(self) -> Any:   # keras.optimizers.Optimizer
        import keras
        return keras.optimizers.Adam(self.learning_rate)

    def per_example_loss(self, labels: Any, predictions: Any) -> Any:   # tensors
        """Loss per example, shape ``[batch]``; the runtime averages over the global batch."""
        import keras
        return keras.losses.binary_crossentropy(labels[:, None] if labels.shape.rank == 1 else labels,
                                                predictions)

    def evaluate(self, model: Any, context: Any) -> dict[str, float]:
        """Optional: metrics of the trained (plain, undistributed) model, run on the chief.

        ``context`` is the run's :class:`tfos_jobs.config.TrainConfig`; return a dict of floats.
        """
        return {}

    def validation_loss(self, model: Any) -> float | None:
        """Optional: a loss of the (plain) model on data held out of training, run on the chief every
        ``loop.validate_every`` steps; the weights with the lowest are exported, as this call left them
        (it may set weights that training does not). None: no such data."""
        return None

    def export_files(self) -> dict[str, Any]:
        """Optional: files published with the model, as ``{name: JSON-able object}`` (a job's config,
        how raw rows become features), so the export is usable on its own."""
        return {}

    def lineage(self) -> dict[str, Any]:
        """Optional: what the model registry records of this model's data (the prep it was trained
        on, its rows, the data window), beside the training config and the code version."""
        return {}


@dataclass
class TrainResult:
    export_uri: str
    metrics: dict = field(default_factory=dict)
    attempts: int = 1
    steps: int = 0
    nodes: list = field(default_factory=list)   # TF nodes that reported done, e.g. ["chief:0", "worker:0"]
    resumed_from: int = 0                         # the checkpoint step this run started from
    timings: dict = field(default_factory=dict)   # start_s, shutdown_s, total_s of the last attempt
