"""tfos-deploy without a cluster: spark-submit settings, EMR artefact shapes, fast clear errors."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cluster import deploy  # the facade that re-exports cluster.deployment's API
from cluster.deployment import cli as deploy_cli
from cluster.deployment import emr
from cluster.deployment import submit as deploy_submit
from cluster.deployment.resources import DeployError, Resources
from cluster.pseudo.testing import describe


def conf_of(argv):
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--conf")


def fake_package(tmp_path):
    files = {}
    for field, name in (("env_archive", "tfenv-0123456789abcdef.tar"), ("code_zip", "tfos-code-abc.zip"),
                        ("entry", "tfos_main.py")):
        path = tmp_path / name
        path.write_bytes(b"x")
        files[field] = str(path)
    return deploy.Package(node_python=sys.executable, **files)


CONFIG = {
    "name": "ctr-daily", "job": "tfos_jobs.ctr", "code_uri": "s3://bucket/tfos/pkg",
    "node_python": "/usr/bin/python3.11", "resources": {"tf_nodes": 3, "executor_memory": "1g"},
    "steps": [{"name": "prep", "args": ["prep", "--input", "s3://b/raw", "--output", "s3://b/prep"]},
              {"name": "train", "args": ["train", "--prep", "s3://b/prep", "--model-dir", "s3://b/m",
                                         "--export", "s3://b/e"]},
              {"name": "evaluate", "tf_nodes": 1, "args": ["evaluate", "--export", "s3://b/e", "--data",
                                                           "s3://b/prep/valid"]},
              {"name": "score", "args": ["score", "--export", "s3://b/e", "--input", "s3://b/new",
                                         "--output", "s3://b/scores"]}],
}


@pytest.mark.parametrize("mode", ["cluster", "client"])
def test_submit_argv_sets_tf_on_yarn(mode):
    argv = deploy.submit_argv("tfos_jobs.ctr", ["train", "--steps", "5"], env_uri="hdfs:///a/tfenv-k.tar",
                              code_uri="hdfs:///a/code.zip", entry_uri="hdfs:///a/tfos_main.py",
                              deploy_mode=mode, res=Resources(tf_nodes=3, executor_memory_overhead="3g"),
                              tag="t1")
    assert argv[argv.index("--archives") + 1] == "hdfs:///a/tfenv-k.tar#tfenv"
    assert argv[argv.index("--py-files") + 1] == "hdfs:///a/code.zip"
    assert argv[-5:] == ["hdfs:///a/tfos_main.py", "tfos_jobs.ctr", "train", "--steps", "5"]
    c = conf_of(argv)
    # one TF node per executor, exactly as many executors as TF nodes, no retries
    assert c["spark.executor.instances"] == "3" and c["spark.dynamicAllocation.enabled"] == "false"
    assert c["spark.executor.cores"] == c["spark.task.cpus"] == "1"
    assert c["spark.task.maxFailures"] == "1" and c["spark.yarn.maxAppAttempts"] == "1"
    assert c["spark.executor.memoryOverhead"] == "3g"
    assert c["spark.pyspark.python"] == c["spark.executorEnv.PYSPARK_PYTHON"] == "./tfenv/bin/python"
    assert c["spark.yarn.tags"] == "tfos-deploy,t1"
    if mode == "cluster":
        assert c["spark.pyspark.driver.python"] == "./tfenv/bin/python"
        assert c["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == "./tfenv/bin/python"
    else:
        assert c["spark.pyspark.driver.python"] == sys.executable


def test_submit_argv_other_masters_ship_code_only():
    argv = deploy.submit_argv("tfos_jobs.survey", ["prep"], env_uri="e", code_uri="c.zip", entry_uri="m.py",
                              master="spark://127.0.0.1:19830", deploy_mode="client")
    assert "--archives" not in argv and conf_of(argv)["spark.task.maxFailures"] == "1"
    with pytest.raises(DeployError, match="deploy mode"):
        deploy.submit_argv("m", [], env_uri="e", code_uri="c", entry_uri="m.py", deploy_mode="remote")


def test_submit_argv_standalone_and_local_cluster(tmp_path, capsys, monkeypatch):
    res = Resources(tf_nodes=2, executor_memory="512m")
    argv = deploy.submit_argv("tfos_jobs.ctr", ["train"], env_uri="e", code_uri="c.zip", entry_uri="m.py",
                              master="spark://127.0.0.1:19830", deploy_mode="client", res=res)
    c = conf_of(argv)
    # one TF node per 1-core executor, exactly as many cores as TF nodes, no retries
    assert c["spark.executor.cores"] == c["spark.task.cpus"] == "1" and c["spark.cores.max"] == "2"
    assert c["spark.executor.memory"] == "512m" and c["spark.task.maxFailures"] == "1"
    assert not any(k.startswith("spark.yarn.") for k in c)
    argv = deploy.submit_argv("tfos_jobs.survey", ["train"], env_uri="e", code_uri="c.zip", entry_uri="m.py",
                              master="local-cluster[2,1,1024]", deploy_mode="client", res=res)
    c = conf_of(argv)
    assert c["spark.pyspark.python"] == c["spark.pyspark.driver.python"] == sys.executable
    assert "spark.cores.max" not in c and "spark.executor.memory" not in c   # the master string sizes them
    with pytest.raises(DeployError, match=r"starts 1 executor\(s\) but 2 TF nodes"):
        deploy.submit_argv("m", [], env_uri="e", code_uri="c", entry_uri="m.py", master="local-cluster[1,1,1024]",
                           deploy_mode="client", res=res)
    # spark-submit refuses Python in cluster mode there: say so before it starts
    for master in ("spark://127.0.0.1:19830", "local-cluster[2,1,1024]", "local[2]"):
        with pytest.raises(DeployError, match="client deploy mode only"):
            deploy.submit_argv("m", [], env_uri="e", code_uri="c", entry_uri="m.py", master=master,
                               deploy_mode="cluster")
    # the CLI's default deploy mode follows the master
    pkg = fake_package(tmp_path)
    asked = []

    def package_uris(_dir, with_env=True):
        asked.append(with_env)
        return {"env_archive": pkg.env_archive if with_env else None, "code_zip": pkg.code_zip, "entry": pkg.entry}
    monkeypatch.setattr(deploy_cli, "_package_uris", package_uris)
    for master, mode in (("spark://127.0.0.1:19830", "client"), ("local-cluster[2,1,1024]", "client"),
                         ("yarn", "cluster")):
        assert deploy.main(["submit", "--master", master, "--package-dir", str(tmp_path), "--dry-run",
                            "tfos_jobs.ctr", "train"]) == 0
        printed = capsys.readouterr().out
        assert f"--deploy-mode {mode} " in printed, printed
        assert ("--archives" in printed) == master.startswith("yarn"), printed
    # only YARN ships the packed environment: the other masters' nodes have the toolkit installed
    assert asked == [False, False, True]


def test_memory_sizes_and_resource_check():
    assert deploy.mib("512m") == 512 and deploy.mib("2g") == 2048 and deploy.mib("1024") == 1024
    with pytest.raises(DeployError, match="not a memory size"):
        deploy.mib("lots")
    cluster = {"totalMB": 4096, "availableMB": 4096, "totalVirtualCores": 4, "nodes": 1, "nodeMB": 4096}
    small = Resources(tf_nodes=2, executor_memory="512m", executor_memory_overhead="768m",
                      driver_memory="512m", driver_memory_overhead="512m")
    assert deploy.check_resources(cluster, small, "cluster", 256) == {"am_mib": 1024, "executor_mib": 1280,
                                                                     "need_mib": 3584}
    small.tf_nodes = 3
    with pytest.raises(DeployError, match=r"too few YARN resources for 3 TF nodes.*4864 MiB.*4096 MiB"):
        deploy.check_resources(cluster, small, "cluster", 256)
    with pytest.raises(DeployError, match="does not fit on any YARN node"):
        deploy.check_resources(cluster, Resources(executor_memory="8g"), "client", 256)
    with pytest.raises(DeployError, match="no RUNNING NodeManager"):
        deploy.check_resources({**cluster, "nodes": 0}, small, "client", 256)


def test_missing_archive_fails_before_spark_submit(tmp_path):
    argv = deploy.submit_argv("tfos_jobs.ctr", ["prep"], env_uri=str(tmp_path / "nope.tar"),
                              code_uri=str(tmp_path / "c.zip"), entry_uri=str(tmp_path / "tfos_main.py"),
                              tag="t", spark_submit="/bin/false")
    t0 = time.monotonic()
    with pytest.raises(DeployError, match=r"nope.tar does not exist.*tfos-deploy package"):
        deploy.submit(argv)
    assert time.monotonic() - t0 < 5


def test_unreachable_yarn_is_reported_quickly(tmp_path):
    with socket.socket() as s:      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.resourcemanager.webapp.address</name>"
        f"<value>127.0.0.1:{port}</value></property></configuration>")
    pkg = fake_package(tmp_path)
    argv = deploy.submit_argv("tfos_jobs.ctr", ["prep"], env_uri=pkg.env_archive, code_uri=pkg.code_zip,
                              entry_uri=pkg.entry, tag="t", spark_submit="/bin/false")
    t0 = time.monotonic()
    with pytest.raises(DeployError, match=rf"ResourceManager at http://127.0.0.1:{port} is not reachable"):
        deploy.submit(argv, env={"HADOOP_CONF_DIR": str(tmp_path), "YARN_CONF_DIR": str(tmp_path)})
    assert time.monotonic() - t0 < 15
    with pytest.raises(DeployError, match="HADOOP_CONF_DIR or YARN_CONF_DIR"):
        deploy.submit(argv, env={"HADOOP_CONF_DIR": "", "YARN_CONF_DIR": ""})


def test_code_zip_is_deterministic_and_importable(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = deploy.build_code(tmp_path / "a"), deploy.build_code(tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "import tfos_jobs.executor.node, hdfs_io, cluster.probe; print(tfos_jobs.executor.node.__file__)", str(a)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, describe(out)
    assert out.stdout.strip().startswith(str(a)), describe(out)


def test_env_key_depends_on_what_the_environment_is_built_from():
    k = deploy.env_key("/usr/bin/python3.11", "none")
    assert k == deploy.env_key("/usr/bin/python3.11", "none")
    assert k != deploy.env_key("/opt/python/bin/python3.11", "none")
    assert k != deploy.env_key("/usr/bin/python3.11", "gzip")


def test_dependency_closure_is_the_runtime_only():
    names = set(deploy.dependency_closure())
    assert {"tensorflow-cpu", "tensorflowonspark", "pyarrow", "hdfs-native", "six", "setuptools"} <= names
    assert not names & {"pytest", "moto", "boto3", "pip", "tfos-jobs", "libclang"}


def test_emr_artefacts_have_the_documented_shapes(tmp_path):
    paths = emr.generate(CONFIG, tmp_path / "emr", pkg=fake_package(tmp_path))
    assert set(paths) == {"bootstrap.sh", "bootstrap-actions.json", "steps.json", "configurations.json"}
    steps = json.loads(open(paths["steps.json"]).read())
    emr.validate_steps(steps)
    assert [s["Name"] for s in steps] == ["ctr-daily: prep", "ctr-daily: train", "ctr-daily: evaluate",
                                          "ctr-daily: score"]
    for step, cfg_step in zip(steps, CONFIG["steps"]):
        assert step["Type"] == "CUSTOM_JAR" and step["Jar"] == "command-runner.jar"
        assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
        args = step["Args"]
        assert args[:5] == ["spark-submit", "--master", "yarn", "--deploy-mode", "cluster"]
        assert args[args.index("--archives") + 1] == "s3://bucket/tfos/pkg/tfenv-0123456789abcdef.tar#tfenv"
        assert args[-len(cfg_step["args"]) - 2:] == ["s3://bucket/tfos/pkg/tfos_main.py", "tfos_jobs.ctr",
                                                     *cfg_step["args"]]
        assert conf_of(args)["spark.executor.instances"] == str(cfg_step.get("tf_nodes", 3))
    configs = json.loads(open(paths["configurations.json"]).read())
    emr.validate_configurations(configs)
    by = {c["Classification"]: c["Properties"] for c in configs}
    assert by["spark-defaults"]["spark.task.maxFailures"] == "1"
    assert by["spark-defaults"]["spark.executor.cores"] == by["spark-defaults"]["spark.task.cpus"] == "1"
    assert by["yarn-site"]["yarn.nodemanager.vmem-check-enabled"] == "false"
    assert "DominantResourceCalculator" in by["capacity-scheduler"]["yarn.scheduler.capacity.resource-calculator"]
    actions = json.loads(open(paths["bootstrap-actions.json"]).read())
    emr.validate_bootstrap_actions(actions)
    assert actions == [{"Path": "s3://bucket/tfos/pkg/bootstrap.sh", "Name": "ctr-daily: python for tfos-jobs",
                        "Args": ["/usr/bin/python3.11"]}]


def test_bootstrap_script_checks_python(tmp_path):
    paths = emr.generate(CONFIG, tmp_path / "emr", pkg=fake_package(tmp_path))
    script = paths["bootstrap.sh"]
    assert os.access(script, os.X_OK) and open(script).readline() == "#!/bin/bash\n"
    syntax = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, describe(syntax)
    # the right Python already there: nothing to install
    ok = subprocess.run(["bash", script, os.path.realpath(sys.executable)], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and "is Python" in ok.stdout, describe(ok)
    # no such Python and no package manager on PATH: a clear failure, not a hang
    bad = subprocess.run(["/bin/bash", script, "/nonexistent/python3.11"], capture_output=True, text=True,
                         timeout=60, env={"PATH": str(tmp_path)})
    assert bad.returncode != 0 and "no package manager" in bad.stderr, describe(bad)


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s[0].update(ActionOnFailure="RETRY"), "ActionOnFailure"),
    (lambda s: s[0].pop("Jar"), "needs Jar"),
    (lambda s: s[0].update(Extra=1), "unknown keys"),
    (lambda s: s[0].update(Args=["spark-submit", 3]), "list of strings"),
    (lambda s: s.clear(), "non-empty"),
])
def test_step_validator_rejects_bad_shapes(mutate, match):
    steps = [{"Type": "CUSTOM_JAR", "Name": "x", "ActionOnFailure": "CONTINUE", "Jar": "command-runner.jar",
              "Args": ["spark-submit", "a.py"]}]
    emr.validate_steps(steps)
    mutate(steps)
    with pytest.raises(DeployError, match=match):
        emr.validate_steps(steps)


def test_configuration_validator_rejects_bad_shapes():
    emr.validate_configurations([{"Classification": "spark-defaults", "Properties": {"a": "1"},
                                  "Configurations": []}])
    with pytest.raises(DeployError, match="strings to strings"):
        emr.validate_configurations([{"Classification": "yarn-site", "Properties": {"a": 1}}])
    with pytest.raises(DeployError, match="Classification"):
        emr.validate_configurations([{"Classification": "sparkdefaults", "Properties": {}}])
    with pytest.raises(DeployError, match="Path"):
        emr.validate_bootstrap_actions([{"Path": "/local/bootstrap.sh", "Name": "b", "Args": []}])


@pytest.mark.parametrize("change, match", [
    ({"job": None}, "'job' is required"),
    ({"job": "tfos-jobs ctr"}, "module name"),
    ({"colour": "blue"}, "unknown keys"),
    ({"deploy_mode": "remote"}, "deploy_mode"),
    ({"resources": {"gpus": 1}}, "unknown resources"),
    ({"steps": [{"args": ["prep"]}]}, "name, args"),
])
def test_config_errors_are_clear(change, match):
    with pytest.raises(DeployError, match=match):
        emr.check_config({**CONFIG, **change})


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\njob: tfos_jobs.ctr\nsteps: []\n")
    code = deploy.main(["emr", str(cfg), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2 and "tfos-deploy: error:" in captured.err, (code, captured.out[-3000:], captured.err[-3000:])


RACE = ("py4j.protocol.Py4JJavaError: An error occurred while calling None.org.apache.spark.api.java."
        "JavaSparkContext.\n: java.util.ConcurrentModificationException\n\tat org.apache.spark.ui.SparkUI."
        "attachAllHandlers(SparkUI.scala:82)\n")


@pytest.mark.parametrize("first, calls, error", [
    (RACE, 2, None),                                   # Spark's UI startup race: one resubmission
    ("Traceback ...\nValueError: bad --rows\n", 1, "bad --rows"),  # the job's own failure: no retry
])
def test_submit_resubmits_only_on_spark_ui_startup_race(monkeypatch, first, calls, error):
    outputs = [first, "RESULT ok\n"]
    seen = []

    def once(argv, **kwargs):
        out = outputs[len(seen)]
        seen.append(kwargs)
        return deploy.Submission(0 if out.startswith("RESULT") else 1, out, None, None, None, 0.1)
    monkeypatch.setattr(deploy_submit, "_submit_once", once)
    if error:
        with pytest.raises(DeployError, match=error):
            deploy.submit(["spark-submit", "--master", "yarn", "app.py"], timeout=5)
    else:
        assert deploy.submit(["spark-submit", "--master", "yarn", "app.py"], timeout=5).output == "RESULT ok\n"
    assert len(seen) == calls and all(k["check"] is False and k["timeout"] == 5 for k in seen)


def test_code_zip_ships_only_what_jobs_run(tmp_path):
    """The jobs' packages and the probe go to YARN; the pseudo-cluster, the CLIs and the test helpers do not."""
    import zipfile
    names = set(zipfile.ZipFile(deploy.build_code(tmp_path)).namelist())
    assert {"tfos_jobs/__init__.py", "hdfs_io/__init__.py", "cluster/__init__.py", "cluster/probe.py",
            "cluster/deployment/__init__.py", "cluster/deployment/probe.py"} <= names
    assert not [n for n in names if n.startswith("cluster/") and n not in deploy.CODE_FILES]
