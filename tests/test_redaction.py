"""Secrets are never printed, logged or written (issue #17): the redaction helper (Spark's
``spark.redaction.regex``), ``tfos-deploy submit --dry-run``, the EMR artefacts and step runner, and
URIs with credentials in them, refused by hdfs_io and by every CLI in one line that does not echo them.
Fast: no cluster, no Spark."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hdfs_io
from cluster.deployment import cli as deploy_cli
from cluster.deployment import emr
from cluster.deployment.resources import DeployError
from cluster.redaction import REDACTED, redact, redact_argv, redact_text
from test_deploy import fake_package

BIN = Path(sys.executable).parent
SECRET, KEY = "S3CR3T", "AKIAEXAMPLE"
CRED_URIS = [f"s3://{KEY}:{SECRET}@bucket/x", f"s3a://{KEY}:{SECRET}@bucket/p",
             f"s3://{KEY}:{SECRET}/with/slashes@bucket/x",   # AWS secret keys often hold a '/'
             f"s3://{KEY}@bucket/x",                          # a bucket name has no '@': that is a key
             f"hdfs://{KEY}:{SECRET}@namenode:8020/p", f"viewfs://{KEY}:{SECRET}@cluster/p"]


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A console script of this install, as a user types it."""
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def shown(proc: subprocess.CompletedProcess) -> str:
    return f"command: {proc.args}\nexit code: {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}" \
           f"\n--- stderr ---\n{proc.stderr[-3000:]}"


def assert_clean(text: str, *secrets: str) -> None:
    for s in secrets or (SECRET, KEY):
        assert s not in text, f"{s!r} leaked into:\n{text}"


# ---------------------------------------------------------------------------------------------
# the helper


@pytest.mark.parametrize("key", ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key",
                                 "spark.hadoop.fs.s3a.session.token", "spark.hadoop.fs.s3a.accesskey",
                                 "spark.ssl.keyStorePassword", "spark.authenticate.secret",
                                 "-Djavax.net.ssl.trustStorePassword", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"])
def test_sensitive_keys_are_redacted_in_conf_pairs_env_entries_and_dicts(key):
    argv = ["spark-submit", "--conf", f"{key}={SECRET} with blanks", "--conf", "spark.executor.memory=1g"]
    out = redact_argv(argv)
    assert out == ["spark-submit", "--conf", f"{key}={REDACTED}", "--conf", "spark.executor.memory=1g"], out
    assert argv[2] == f"{key}={SECRET} with blanks", "the real command must keep its values"
    d = redact({key: SECRET, "spark.executor.memory": "1g", "nested": {key: SECRET}, "list": [f"{key}={SECRET}"]})
    assert d == {key: REDACTED, "spark.executor.memory": "1g", "nested": {key: REDACTED},
                 "list": [f"{key}={REDACTED}"]}, d
    line = redact_text(f"step x: spark-submit --conf {key}={SECRET} --conf spark.app.name=n")
    assert line == f"step x: spark-submit --conf {key}={REDACTED} --conf spark.app.name=n", line


def test_harmless_keys_and_uris_are_left_alone():
    argv = ["--conf", "spark.executor.memory=1g", "--conf", "spark.yarn.tags=tfos", "hdfs://nn:8020/dir/a@b",
            "hdfs://alice@nn:8020/p", "s3://bucket/a@b:c", "--name", "ctr-daily"]
    assert redact_argv(argv) == argv, redact_argv(argv)
    # AWS_ACCESS_KEY_ID is no secret by Spark's rule (access[.]?key), and Spark's rule is the one we follow
    assert redact({"AWS_ACCESS_KEY_ID": "id", "AWS_REGION": "r"}) == {"AWS_ACCESS_KEY_ID": "id", "AWS_REGION": "r"}


@pytest.mark.parametrize("uri", [u for u in CRED_URIS if ":" in u.split("://")[1].split("@")[0]])
def test_uri_credentials_are_redacted_where_printed(uri):
    for text in (redact_text(f"cannot check {uri}: gone"), redact_argv(["--input", uri])[1],
                 redact_argv([f"--input={uri}"])[0], redact({"uri": uri})["uri"]):
        assert_clean(text)
        assert REDACTED in text, text


# ---------------------------------------------------------------------------------------------
# tfos-deploy submit


def test_submit_dry_run_prints_no_secret(tmp_path):
    proc = run("tfos-deploy", "submit", "--master", "local-cluster[2,1,1024]", "--package-dir", str(tmp_path),
               "--dry-run", "--conf", "spark.hadoop.fs.s3a.secret.key=S3CR3T-VALUE",
               "--conf", f"spark.hadoop.fs.s3a.access.key={KEY}", "--conf", "spark.hadoop.fs.s3a.session.token=TOK3N",
               "tfos_jobs.ctr", "train", "--prep", "s3://bucket/prep")
    assert proc.returncode == 0, shown(proc)
    assert_clean(proc.stdout + proc.stderr, "S3CR3T-VALUE", KEY, "TOK3N")
    assert f"spark.hadoop.fs.s3a.secret.key={REDACTED}" in proc.stdout, shown(proc)
    assert "spark.task.maxFailures=1" in proc.stdout and "s3://bucket/prep" in proc.stdout, shown(proc)


def test_submit_runs_the_real_values(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(deploy_cli, "_package_uris", lambda _dir, with_env=True: {
        "env_archive": None, "code_zip": str(tmp_path / "c.zip"), "entry": str(tmp_path / "tfos_main.py")})
    monkeypatch.setattr(deploy_cli, "submit", lambda cmd, **kw: ran.append(cmd) or _Sub())
    assert deploy_cli.main(["submit", "--master", "local[2]", "--conf", f"spark.hadoop.fs.s3a.secret.key={SECRET}",
                            "tfos_jobs.ctr", "train"]) == 0
    assert f"spark.hadoop.fs.s3a.secret.key={SECRET}" in ran[0], ran


class _Sub:
    output, app_id, state, final_status, returncode, wall_s = "", None, None, None, 0, 0.0


# ---------------------------------------------------------------------------------------------
# EMR artefacts and the step runner

CONFIG = {"name": "ctr-daily", "job": "tfos_jobs.ctr", "code_uri": "s3://bucket/tfos/pkg",
          "node_python": "/usr/bin/python3.11", "steps": [{"name": "prep", "args": ["prep", "--input", "s3://b/raw"]}]}


@pytest.mark.parametrize("change", [
    {"spark_conf": {"spark.hadoop.fs.s3a.secret.key": SECRET}},
    {"spark_conf": {"spark.hadoop.fs.s3a.access.key": KEY}},
    {"yarn_site": {"hadoop.http.authentication.signature.secret": SECRET}},
    {"code_uri": f"s3://{KEY}:{SECRET}@bucket/tfos/pkg"},
    {"steps": [{"name": "prep", "args": ["prep", "--input", f"s3a://{KEY}:{SECRET}@b/raw"]}]},
])
def test_emr_artefacts_never_hold_a_secret(tmp_path, change):
    out = tmp_path / "emr"
    try:
        emr.generate({**CONFIG, **change}, out, pkg=fake_package(tmp_path))
    except DeployError as exc:
        assert_clean(str(exc))
        assert "\n" not in str(exc), str(exc)
    written = "".join(p.read_text() for p in out.glob("*")) if out.exists() else ""
    assert_clean(written)
    assert written == "", f"the artefacts were written with a secret in the config:\n{written}"


def test_emr_takes_a_reference_to_a_secret_and_settings_that_are_none(tmp_path):
    conf = {"spark.hadoop.fs.s3a.secret.key": "${env.S3A_SECRET_KEY}",   # resolved by Hadoop on the cluster
            "spark.hadoop.dfs.block.access.token.enable": "true",
            "spark.hadoop.yarn.resourcemanager.delegation.token.max-lifetime": "604800000"}
    paths = emr.generate({**CONFIG, "spark_conf": conf}, tmp_path / "emr", pkg=fake_package(tmp_path))
    args = json.loads(Path(paths["steps.json"]).read_text())[0]["Args"]
    assert all(f"{k}={v}" in args for k, v in conf.items()), args


def test_emr_step_runner_logs_no_secret(tmp_path):
    pkg = fake_package(tmp_path)
    steps = [{"Name": "prep", "ActionOnFailure": "CONTINUE", "Jar": "command-runner.jar",
              "Args": ["spark-submit", "--conf", f"spark.hadoop.fs.s3a.secret.key={SECRET}", "--master", "yarn",
                       "--deploy-mode", "cluster", "--py-files", f"s3://{KEY}:{SECRET}@bucket/code.zip",
                       "--conf", "spark.yarn.tags=tfos-deploy,t", pkg.entry, "tfos_jobs.ctr", "prep"]}]
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    logged = []
    results = emr.run_steps(tmp_path / "steps.json", env={"HADOOP_CONF_DIR": "", "YARN_CONF_DIR": ""},
                            log=logged.append)
    text = "\n".join(logged) + "\n" + json.dumps(redact(results))
    assert_clean(text)
    assert f"spark.hadoop.fs.s3a.secret.key={REDACTED}" in logged[0], text
    assert not results[0]["ok"], text
    assert_clean(results[0]["error"])


def test_emr_cli_refuses_a_secret_in_one_line(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**CONFIG, "spark_conf": {"spark.hadoop.fs.s3a.secret.key": SECRET}}))
    proc = run("tfos-deploy", "emr", str(cfg), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, shown(proc)
    assert_clean(proc.stdout + proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, shown(proc)
    assert "spark.hadoop.fs.s3a.secret.key" in proc.stderr, shown(proc)
    assert not (tmp_path / "out" / "steps.json").exists(), shown(proc)


# ---------------------------------------------------------------------------------------------
# URIs with credentials: hdfs_io and the CLIs


@pytest.mark.parametrize("uri", CRED_URIS)
def test_hdfs_io_refuses_credentials_in_uris(uri):
    with pytest.raises(ValueError) as info:
        hdfs_io.exists(uri)
    msg = str(info.value)
    assert isinstance(info.value, hdfs_io.CredentialsInURIError), repr(info.value)
    assert_clean(msg)
    scheme = uri.split("://")[0]
    host = uri.rsplit("@", 1)[1].split("/")[0]
    assert msg.startswith(f"{scheme}://{host}:") and "\n" not in msg and "environment" in msg, msg


@pytest.mark.parametrize("uri, authority", [("hdfs://alice@namenode:8020/p", "alice@namenode:8020"),
                                            ("hdfs://namenode:8020/dir/a@b:c", "namenode:8020"),
                                            ("s3://bucket/dir/user@example.com", "bucket"),
                                            ("/tmp/a:b@c", "")])
def test_uris_without_credentials_still_parse(uri, authority):
    assert hdfs_io.uri.parse(uri).authority == authority


@pytest.mark.parametrize("argv", [
    ["tfos-ctr", "generate", "--output", f"s3://{KEY}:{SECRET}@bucket/x", "--rows", "1"],
    ["tfos-survey", "example", "--out", f"s3a://{KEY}:{SECRET}/x@bucket/x"],
    ["tfos-survey", "train", "--prep", f"hdfs://user:{SECRET}@namenode:8020/p", "--model-dir", "m", "--export", "e"],
    ["tfos-deploy", "submit", "--package-dir", f"s3://{KEY}:{SECRET}@bucket/x", "--dry-run", "tfos_jobs.ctr", "train"],
    ["tfos-deploy", "submit", "--master", "local[2]", "--dry-run", "tfos_jobs.ctr", "train", "--prep",
     f"s3://{KEY}:{SECRET}@bucket/x"],
    ["tfos-deploy", "package", "--upload", f"s3://{KEY}:{SECRET}@bucket/x"],
])
def test_clis_refuse_credentials_in_one_line(argv):
    proc = run(*argv)
    assert proc.returncode != 0, shown(proc)
    assert_clean(proc.stdout + proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, shown(proc)
    assert "bucket" in proc.stderr or "namenode:8020" in proc.stderr, shown(proc)
    assert "credentials in the URI" in proc.stderr, shown(proc)
