"""What the driver sends to each TF node: built on the driver, placed on the executor, read in the
TF process. Both objects are frozen: nothing on a node changes what the driver decided."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tfos_jobs import localdirs
from tfos_jobs.config import TrainConfig


@dataclass(frozen=True)
class NodeSpec:
    """One attempt's instructions, the same for every node."""
    config: TrainConfig
    task: Any                 # tfos_jobs.task.TrainingTask
    reader: Any               # tfos_jobs.tfnode.readers.ParquetReader | FeedReader
    control_address: str
    control_secret: str = field(repr=False)   # reaches the node only in the Spark task closure
    attempt: int              # which TF cluster of this run the nodes belong to


@dataclass(frozen=True)
class Node:
    """The spec plus this node's place in the TF cluster (assigned on the executor)."""
    spec: NodeSpec
    role: str                 # chief, worker or ps
    index: int
    tf_config: dict

    @property
    def name(self) -> str:
        return f"{self.role}:{self.index}"

    @property
    def is_chief(self) -> bool:
        return self.role == "chief"

    @property
    def global_batch(self) -> int:
        return self.spec.config.loop.batch_size * self.spec.config.scaling.replicas_per_step

    @property
    def run_root(self) -> str:
        """This run's node-local scratch: ``<local_root>/<run_id>`` (default root: the user's private
        one, :func:`tfos_jobs.localdirs.user_root`, resolved on the node)."""
        run = self.spec.config.run
        return os.path.join(localdirs.scratch_root(run.local_root), run.run_id)

    def local(self, *parts: str) -> str:
        """Node-local scratch: ``<local_root>/<run_id>/<role>-<index>/...``."""
        return os.path.join(self.run_root, f"{self.role}-{self.index}", *parts)

    @property
    def stage_root(self) -> str:
        return os.path.join(self.run_root, "stage")

    def scratch_dirs(self) -> list[str]:
        """The scratch directories this node alone writes (removed when it ends): ``local()``, and
        a PS worker's stage directory."""
        return [self.local()] + ([self.stage_dir] if self.role == "worker" else [])

    @property
    def stage_dir(self) -> str:
        return os.path.join(self.stage_root, f"worker-{self.index}")

    @property
    def data_shard_index(self) -> int | None:
        """Which share of the data this node reads (None for nodes that read none). Under mwms the
        chief is worker 0."""
        if self.spec.config.scaling.strategy == "mwms":
            return 0 if self.role == "chief" else self.index + 1
        return self.index if self.role == "worker" else None
