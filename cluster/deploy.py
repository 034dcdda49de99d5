"""Old name of ``tfos-deploy`` and its API, now in :mod:`cluster.deployment` (``package``, ``submit``,
``yarn``, ``resources``, ``emr``, ``cli``). ``python -m cluster.deploy ...`` still runs ``tfos-deploy``.

Patch the defining module, not this one: ``monkeypatch.setattr(submit, "_submit_once", ...)`` with
``from cluster.deployment import submit``."""
import sys

from cluster.deployment.cli import build_parser, main
from cluster.deployment.package import (CODE_FILES, CODE_PACKAGES, ENTRY, ENV_ALIAS, ENV_PYTHON,
                                        EXCLUDE_DISTS, EXCLUDE_PATTERN, FORMAT, MANIFEST, REPO,
                                        ROOT_DIST, Package, build_code, build_code_and_entry,
                                        build_env, cache_dir, dependency_closure, env_key,
                                        node_python_default, package, read_manifest, upload)
from cluster.deployment.resources import DeployError, Resources, mib, tf_conf
from cluster.deployment.submit import (Submission, check_uri, env_conf, spark_submit_path,
                                       spark_ui_startup_race, submit, submit_argv)
from cluster.deployment.yarn import (check_resources, check_yarn, find_app, kill_app, loopback_conf,
                                     rm_web)

__all__ = ["CODE_FILES", "CODE_PACKAGES", "ENTRY", "ENV_ALIAS", "ENV_PYTHON", "EXCLUDE_DISTS",
           "EXCLUDE_PATTERN", "FORMAT", "MANIFEST", "REPO", "ROOT_DIST", "DeployError", "Package",
           "Resources", "Submission", "build_code", "build_code_and_entry", "build_env",
           "build_parser", "cache_dir", "check_resources", "check_uri", "check_yarn",
           "dependency_closure", "env_conf", "env_key", "find_app", "kill_app", "loopback_conf",
           "main", "mib", "node_python_default", "package", "read_manifest", "rm_web",
           "spark_submit_path", "spark_ui_startup_race", "submit", "submit_argv", "tf_conf", "upload"]

if __name__ == "__main__":
    sys.exit(main())
