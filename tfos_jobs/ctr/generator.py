"""Moved to :mod:`tfos_jobs.ctr.synthetic` (kept for the deploy tests and ``benchmarks/ctr_quality.py``)."""
from tfos_jobs.ctr.synthetic import *  # noqa: F401,F403
