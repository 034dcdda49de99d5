"""EMR-style artefacts from one small config (``tfos-deploy emr CONFIG``), and a runner that executes
the generated steps on a YARN cluster reachable from here (the pseudo-cluster in the tests).

Config (YAML or JSON)::

    name: ctr-daily
    job: tfos_jobs.ctr                    # the module each step runs (tfos_jobs.ctr, tfos_jobs.survey)
    code_uri: s3://my-bucket/tfos/pkg     # where `tfos-deploy package --upload` puts the package
    node_python: /usr/bin/python3.11      # the interpreter on the nodes (the bootstrap action checks it)
    deploy_mode: cluster                  # EMR steps: cluster (the driver runs in YARN)
    action_on_failure: CANCEL_AND_WAIT
    resources: {tf_nodes: 2, executor_memory: 1g, executor_memory_overhead: 2g}
    spark_conf: {}                        # extra --conf for every step (no secrets: they would be in steps.json)
    yarn_site: {}                         # extra yarn-site properties
    steps:
      - {name: prep, args: [prep, --input, s3://..., --output, s3://...], tf_nodes: 2}
      - {name: train, args: [train, ...]}

Written to the output directory, each in the shape the AWS CLI documents for
``aws emr create-cluster`` / ``add-steps`` (``file://`` arguments):

* ``bootstrap.sh`` + ``bootstrap-actions.json`` (``[{"Path", "Name", "Args"}]``): make sure every node
  has the Python the packed environment links to;
* ``steps.json`` (``[{"Type": "CUSTOM_JAR", "Name", "ActionOnFailure", "Jar": "command-runner.jar",
  "Args": ["spark-submit", ...]}]``);
* ``configurations.json`` (``[{"Classification", "Properties", "Configurations"}]``): spark-defaults,
  yarn-site, capacity-scheduler and spark classifications.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from ..redaction import redact, redact_argv, redact_text, sensitive
from . import package as packaging
from .package import Package, bounded, node_python_default, upload as upload_package, write_text
from .resources import DeployError, Resources, refuse_credentials, tf_conf
from .submit import spark_submit_path, submit, submit_argv

STEP_TYPES = {"CUSTOM_JAR", "STREAMING", "HIVE", "PIG", "IMPALA", "SPARK"}
ACTIONS = {"TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE"}
STEP_KEYS = {"Type", "Name", "ActionOnFailure", "Jar", "Args", "MainClass", "Properties"}
CLASSIFICATIONS = {"spark-defaults", "yarn-site", "capacity-scheduler", "spark", "spark-env", "export",
                   "core-site", "hdfs-site", "spark-log4j2"}
CONFIG_KEYS = {"name", "job", "code_uri", "node_python", "deploy_mode", "action_on_failure", "resources",
               "spark_conf", "yarn_site", "steps", "release_label"}


# ---------------------------------------------------------------------------------------------
# validation of the documented shapes


def _fail(where: str, why: str):
    raise DeployError(f"{where}: {why}")


def _str_list(value, where: str):
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        _fail(where, "must be a list of strings")


def validate_steps(steps: object) -> None:
    """``aws emr add-steps --steps file://steps.json`` / ``create-cluster --steps``: a list of steps."""
    if not isinstance(steps, list) or not steps:
        _fail("steps", "must be a non-empty JSON list")
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(step, dict):
            _fail(where, "must be an object")
        extra = set(step) - STEP_KEYS
        if extra:
            _fail(where, f"unknown keys {sorted(extra)} (allowed: {sorted(STEP_KEYS)})")
        if step.get("Type", "CUSTOM_JAR") not in STEP_TYPES:
            _fail(where, f"Type must be one of {sorted(STEP_TYPES)}")
        name = step.get("Name")
        if not isinstance(name, str) or not 1 <= len(name) <= 256:
            _fail(where, "Name must be a string of 1-256 characters")
        if step.get("ActionOnFailure", "CONTINUE") not in ACTIONS:
            _fail(where, f"ActionOnFailure must be one of {sorted(ACTIONS)}")
        if step.get("Type", "CUSTOM_JAR") == "CUSTOM_JAR" and not isinstance(step.get("Jar"), str):
            _fail(where, "a CUSTOM_JAR step needs Jar (e.g. command-runner.jar)")
        if "Args" in step:
            _str_list(step["Args"], f"{where}.Args")
        if "Properties" in step and not isinstance(step["Properties"], str):
            _fail(where, "Properties must be a string (k=v,...)")


def validate_configurations(configs: object, where: str = "configurations") -> None:
    """``--configurations file://configurations.json``: a list of classifications (nestable)."""
    if not isinstance(configs, list):
        _fail(where, "must be a JSON list")
    for i, c in enumerate(configs):
        w = f"{where}[{i}]"
        if not isinstance(c, dict):
            _fail(w, "must be an object")
        extra = set(c) - {"Classification", "Properties", "Configurations"}
        if extra:
            _fail(w, f"unknown keys {sorted(extra)}")
        if c.get("Classification") not in CLASSIFICATIONS:
            _fail(w, f"Classification {c.get('Classification')!r} is not one of {sorted(CLASSIFICATIONS)}")
        props = c.get("Properties", {})
        if not isinstance(props, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in props.items()):
            _fail(w, "Properties must map strings to strings (EMR rejects numbers and booleans)")
        validate_configurations(c.get("Configurations", []), f"{w}.Configurations")


def validate_bootstrap_actions(actions: object) -> None:
    """``--bootstrap-actions file://bootstrap-actions.json``: [{"Path", "Name", "Args"}]."""
    if not isinstance(actions, list):
        _fail("bootstrap-actions", "must be a JSON list")
    for i, a in enumerate(actions):
        w = f"bootstrap-actions[{i}]"
        if not isinstance(a, dict) or set(a) - {"Path", "Name", "Args"}:
            _fail(w, "must be an object with Path, Name and Args only")
        if not isinstance(a.get("Path"), str) or not re.match(r"^(s3|hdfs|file)://", a["Path"]):
            _fail(w, "Path must be the script's s3:// URI")
        if not isinstance(a.get("Name"), str) or not a["Name"]:
            _fail(w, "Name is required")
        _str_list(a.get("Args", []), f"{w}.Args")


# ---------------------------------------------------------------------------------------------
# generation


def load_config(path: str | os.PathLike) -> dict:
    text = Path(path).read_text()
    try:
        import yaml
        cfg = yaml.safe_load(text)
    except Exception as exc:
        raise DeployError(f"{path}: not valid YAML/JSON: {exc}") from None
    return check_config(cfg, str(path))


def check_config(cfg: object, where: str = "config") -> dict:
    if not isinstance(cfg, dict):
        _fail(where, "must be a mapping")
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        _fail(where, f"unknown keys {sorted(unknown)} (known: {sorted(CONFIG_KEYS)})")
    for key in ("name", "job", "code_uri", "steps"):
        if not cfg.get(key):
            _fail(where, f"'{key}' is required")
    if not re.fullmatch(r"[A-Za-z_][\w.]*", str(cfg["job"])):
        _fail(where, f"job must be a module name like tfos_jobs.ctr, got {cfg['job']!r}")
    if cfg.get("deploy_mode", "cluster") not in ("cluster", "client"):
        _fail(where, "deploy_mode must be cluster or client")
    if cfg.get("action_on_failure", "CANCEL_AND_WAIT") not in ACTIONS:
        _fail(where, f"action_on_failure must be one of {sorted(ACTIONS)}")
    res = cfg.get("resources") or {}
    unknown = set(res) - {f.name for f in Resources.__dataclass_fields__.values()}
    if unknown:
        _fail(where, f"unknown resources {sorted(unknown)}")
    steps = cfg["steps"]
    if not isinstance(steps, list):
        _fail(where, "steps must be a list of {name, args[, tf_nodes]}")
    for i, s in enumerate(steps):
        if not isinstance(s, dict) or not s.get("name") or set(s) - {"name", "args", "tf_nodes"}:
            _fail(f"{where}: steps[{i}]", "must be {name, args[, tf_nodes]}")
        _str_list(s.get("args", []), f"{where}: steps[{i}].args")
        refuse_credentials(s.get("args", []), f"{where}: steps[{i}].args")
    refuse_credentials([str(cfg["code_uri"])], f"{where}: code_uri")
    for key in ("spark_conf", "yarn_site"):
        _refuse_secrets(cfg.get(key) or {}, f"{where}: {key}")
    return cfg


def _refuse_secrets(conf: dict, where: str) -> None:
    """steps.json and configurations.json are handed to EMR as they are, and EMR shows a step's
    arguments and a cluster's configurations to anyone allowed to describe them: a secret cannot be
    redacted there (the step would run with the placeholder), so it must not be in the config at all.
    A reference that the cluster resolves (``${env.NAME}``, Hadoop's variable syntax) may be, and so may
    what is plainly no secret under such a key (``...token.enable: true``, ``...token.max-lifetime: 7d``)."""
    for key, value in conf.items():
        if sensitive(str(key)) and not re.fullmatch(r"\$\{[^}]+\}|true|false|\d+[a-z]{0,2}", str(value).lower()):
            _fail(where, f"{key} holds a secret, which would be written into the EMR artefacts as it is "
                  "(value not shown); leave S3 credentials to the cluster's instance profile, keep the secret in "
                  "a Hadoop credential store (spark.hadoop.hadoop.security.credential.provider.path=jceks://...), "
                  "or reference an environment variable (${env.NAME})")


def resources(cfg: dict, step: dict | None = None) -> Resources:
    res = Resources(**{k: (int(v) if k == "tf_nodes" else str(v)) for k, v in (cfg.get("resources") or {}).items()})
    if step and step.get("tf_nodes"):
        res.tf_nodes = int(step["tf_nodes"])
    return res


def bootstrap_script(node_python: str) -> str:
    want = "%d.%d" % os.sys.version_info[:2]
    return f"""#!/bin/bash
# tfos-deploy bootstrap action: runs on every node before applications start. The packed
# environment (--archives ...#tfenv) links bin/python to {node_python}: make sure it is there.
# Usage: bootstrap.sh [PYTHON]   (idempotent; exits non-zero with a message when it cannot)
set -euo pipefail
PYTHON="${{1:-{node_python}}}"
WANT="{want}"
have_python() {{
  [ -x "$PYTHON" ] && [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$WANT" ]
}}
if ! have_python; then
  pkg="python$WANT"
  if command -v dnf >/dev/null 2>&1; then sudo dnf install -y "$pkg"
  elif command -v yum >/dev/null 2>&1; then sudo yum install -y "$pkg"
  elif command -v apt-get >/dev/null 2>&1; then sudo apt-get update -q && sudo apt-get install -y "$pkg"
  else echo "bootstrap: no package manager to install $pkg" >&2; exit 1
  fi
fi
if ! have_python; then
  echo "bootstrap: $PYTHON is not Python $WANT; set node_python in the tfos-deploy config" >&2
  exit 1
fi
echo "bootstrap: $PYTHON is Python $WANT"
"""


def configurations(cfg: dict) -> list:
    res = resources(cfg)
    spark = {k: v for k, v in tf_conf(res).items()
             if k not in ("spark.executor.instances", "spark.driver.memory", "spark.driver.memoryOverhead",
                          "spark.executor.memory")}
    spark["spark.executor.memory"] = res.executor_memory
    yarn = {
        # TF reserves far more virtual memory than it uses: the vmem check would kill its containers
        "yarn.nodemanager.vmem-check-enabled": "false",
        # keep the packed environment (~1.6 GiB) in the NodeManagers' public cache between steps
        "yarn.nodemanager.localizer.cache.target-size-mb": "20480",
    }
    yarn.update({k: str(v) for k, v in (cfg.get("yarn_site") or {}).items()})
    return [
        {"Classification": "spark", "Properties": {"maximizeResourceAllocation": "false"}},
        {"Classification": "spark-defaults", "Properties": spark},
        {"Classification": "yarn-site", "Properties": yarn},
        # count vcores too, so that spark.executor.cores=1 really means one TF node per executor slot
        {"Classification": "capacity-scheduler", "Properties": {
            "yarn.scheduler.capacity.resource-calculator":
                "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"}},
    ]


def steps(cfg: dict, uris: dict) -> list:
    out = []
    for i, step in enumerate(cfg["steps"]):
        argv = submit_argv(
            cfg["job"], list(step.get("args", [])), env_uri=uris["env_archive"], code_uri=uris["code_zip"],
            entry_uri=uris["entry"], master="yarn", deploy_mode=cfg.get("deploy_mode", "cluster"),
            res=resources(cfg, step), name=f"{cfg['name']}-{step['name']}",
            tag=f"{_slug(cfg['name'])}-{_slug(step['name'])}-{i}",
            extra_conf={k: str(v) for k, v in (cfg.get("spark_conf") or {}).items()})
        out.append({"Type": "CUSTOM_JAR", "Name": f"{cfg['name']}: {step['name']}",
                    "ActionOnFailure": cfg.get("action_on_failure", "CANCEL_AND_WAIT"),
                    "Jar": "command-runner.jar", "Args": argv})
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40] or "x"


def generate(cfg: dict, out_dir: str | os.PathLike, pkg: Package | None = None,
             upload: bool = False) -> dict:
    """Write the artefacts; returns {name: path}. Every file is validated before it is written."""
    cfg = check_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    node_python = cfg.get("node_python") or node_python_default()
    pkg = pkg or packaging.package(node_python=node_python)
    if upload:
        uris = upload_package(pkg, cfg["code_uri"])
    else:
        import hdfs_io
        uris = {f: hdfs_io.join(cfg["code_uri"], os.path.basename(getattr(pkg, f)))
                for f in ("env_archive", "code_zip", "entry")}
    boot_uri = f"{cfg['code_uri'].rstrip('/')}/bootstrap.sh"
    files = {
        "bootstrap.sh": bootstrap_script(node_python),
        "bootstrap-actions.json": [{"Path": boot_uri, "Name": f"{cfg['name']}: python for tfos-jobs",
                                    "Args": [node_python]}],
        "steps.json": steps(cfg, uris),
        "configurations.json": configurations(cfg),
    }
    validate_bootstrap_actions(files["bootstrap-actions.json"])
    validate_steps(files["steps.json"])
    validate_configurations(files["configurations.json"])
    paths = {}
    for name, content in files.items():
        path = out / name
        path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2) + "\n")
        if name.endswith(".sh"):
            path.chmod(0o755)
        paths[name] = str(path)
    if upload:
        bounded(lambda: write_text(boot_uri, files["bootstrap.sh"]), 60, f"write {boot_uri}")
    return paths


# ---------------------------------------------------------------------------------------------
# running the generated steps here (what EMR's command-runner.jar does on the master node)


def resources_from_argv(argv: list[str]) -> Resources:
    conf = dict(a.split("=", 1) for a in argv if "=" in a and a.startswith("spark."))
    res = Resources()
    res.tf_nodes = int(conf.get("spark.executor.instances", res.tf_nodes))
    for field, key in (("executor_memory", "spark.executor.memory"),
                       ("executor_memory_overhead", "spark.executor.memoryOverhead"),
                       ("driver_memory", "spark.driver.memory"),
                       ("driver_memory_overhead", "spark.driver.memoryOverhead"),
                       ("am_memory", "spark.yarn.am.memory")):
        setattr(res, field, conf.get(key, getattr(res, field)))
    return res


def run_steps(steps_json: str | os.PathLike | list, env: dict | None = None, timeout: float = 1800,
              accept_timeout: float = 120, log: Callable[[str], object] = print) -> list[dict]:
    """Run each step's Args (``spark-submit`` -> this install's) in order, watched like ``submit``.
    A failed step stops the run unless its ActionOnFailure is CONTINUE."""
    steps_list = steps_json if isinstance(steps_json, list) else json.loads(Path(steps_json).read_text())
    validate_steps(steps_list)
    results = []
    for step in steps_list:
        argv = list(step["Args"])
        if argv and argv[0] == "spark-submit":
            argv[0] = spark_submit_path()
        log(f"step {step['Name']}: {shlex.join(redact_argv(argv))[:300]} ...")
        t0 = time.monotonic()
        try:
            sub = submit(argv, env=env, timeout=timeout, accept_timeout=accept_timeout,
                                res=resources_from_argv(argv))
            results.append({"name": step["Name"], "ok": True, "app_id": sub.app_id,
                            "final_status": sub.final_status, "wall_s": sub.wall_s, "output": sub.output})
        except DeployError as exc:
            results.append({"name": step["Name"], "ok": False, "error": redact_text(str(exc)),
                            "wall_s": round(time.monotonic() - t0, 1)})
            if step.get("ActionOnFailure", "CONTINUE") != "CONTINUE":
                break
        log(f"step {step['Name']}: {'ok' if results[-1]['ok'] else 'FAILED'} in {results[-1]['wall_s']} s")
    return results


def main_emr(args: argparse.Namespace) -> int:
    """``tfos-deploy emr CONFIG [--upload] [--run]``."""
    cfg = load_config(args.config)
    paths = generate(cfg, args.out, upload=args.upload)
    print(json.dumps(paths, indent=1))
    if args.run:
        results = run_steps(paths["steps.json"], log=lambda m: print(m, file=sys.stderr))
        for r in results:
            r.pop("output", None)
        print(json.dumps(redact(results), indent=1))
        return 0 if all(r["ok"] for r in results) and len(results) == len(cfg["steps"]) else 1
    return 0
