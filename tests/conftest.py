"""Shared pytest fixtures.

The pseudo-cluster fixtures live in ``cluster.testing`` so that the jobs' own test suites and the
notebooks can reuse them; Spark-session helpers live in ``tests/sparkutil.py``.
"""
pytest_plugins = ["cluster.testing"]
