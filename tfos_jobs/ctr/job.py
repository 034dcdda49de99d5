"""Moved: the CTR job's steps are in :mod:`tfos_jobs.ctr.steps` (kept for ``benchmarks/ctr_quality.py``).

``train`` here still takes the old flat keywords and builds the typed configs from them.
"""
from __future__ import annotations

from typing import Any

from tfos_jobs.config import RunConfig, TrainConfig
from tfos_jobs.ctr.model import ModelConfig
from tfos_jobs.ctr.steps import CONFIG_FILE, EVALUATION_FILE, evaluate, read_config, score  # noqa: F401
from tfos_jobs.ctr.steps import LOOP, SCALING
from tfos_jobs.ctr.steps import train as _train


def train(sc: Any, prep_uri: str, model_dir: str, export_uri: str, *, model: ModelConfig = ModelConfig(),
          data: Any = None, **options: Any) -> Any:
    """``steps.train`` with ``fit``-style flat keywords (``strategy=``, ``num_workers=``, ``epochs=`` ...)."""
    config = TrainConfig(SCALING, RunConfig(model_dir=model_dir, export_uri=export_uri), LOOP, **options)
    return _train(sc, prep_uri, model, scaling=config.scaling, loop=config.loop, run=config.run, data=data)
