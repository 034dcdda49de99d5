"""``python -m cluster.probe [OUT_URI]``: the name users and EMR steps type; the probe itself is
:mod:`cluster.deployment.probe`."""
import sys

from cluster.deployment.probe import describe, executor_report, main

__all__ = ["describe", "executor_report", "main"]

if __name__ == "__main__":
    sys.exit(main())
