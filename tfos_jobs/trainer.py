"""``from tfos_jobs.trainer import fit``: the runtime's entry point, kept at the path the README and
users' code import (the driver side lives in ``tfos_jobs.driver.trainer``)."""
from tfos_jobs.config import TrainConfig
from tfos_jobs.driver.trainer import ClusterLost, TrainingFailed, fit

__all__ = ["ClusterLost", "TrainConfig", "TrainingFailed", "fit"]
