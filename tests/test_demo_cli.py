"""Bad input to the demo CLI: one clear line and a non-zero exit, never a Spark traceback."""
import os
import subprocess
import sys


def run_demo(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tfos_jobs.demo", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def test_unknown_flag():
    proc = run_demo("--no-such-flag")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_path(tmp_path):
    missing = str(tmp_path / "nope")
    proc = run_demo("--data", missing, "--work-dir", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"tfos-demo: error: --data {missing} does not exist"


def test_java_missing(tmp_path):
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-java"), PATH="/usr/bin:/bin")
    proc = run_demo("--work-dir", str(tmp_path / "w"), "--rows", "1000", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Java 17 or newer is required" in lines[0], proc.stderr
