"""Moved to :mod:`tfos_jobs.survey.synthetic` (kept for the deploy tests)."""
from tfos_jobs.survey.synthetic import *  # noqa: F401,F403
