"""Old name of :mod:`cluster.pseudo.testing` (the pytest plugin and test helpers):
``pytest_plugins = ["cluster.testing"]`` and ``from cluster.testing import ...`` keep working."""
from .pseudo.testing import (auc, bounded, chance_auc_sd, cluster_env, describe, describe_steps,
                             describe_submission, describe_yarn, majority_baseline, pseudo_cluster,
                             pytest_configure, run_process, tail, yarn_app_ids, yarn_report)

__all__ = ["auc", "bounded", "chance_auc_sd", "cluster_env", "describe", "describe_steps",
           "describe_submission", "describe_yarn", "majority_baseline", "pseudo_cluster",
           "pytest_configure", "run_process", "tail", "yarn_app_ids", "yarn_report"]
