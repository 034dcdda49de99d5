"""Bad input to `make demo` (``python -m tfos_jobs.ctr demo``): one clear line, non-zero exit, no
Spark traceback."""
import os
import subprocess
import sys


def run_ctr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tfos_jobs.ctr", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def test_unknown_flag():
    proc = run_ctr("demo", "--no-such-flag")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_path(tmp_path):
    missing = str(tmp_path / "nope")
    proc = run_ctr("prep", "--input", missing, "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"tfos-ctr prep: error: input {missing} does not exist"
    assert "Traceback" not in proc.stderr


def test_java_missing(tmp_path):
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-java"), PATH="/usr/bin:/bin")
    proc = run_ctr("demo", "--work-dir", str(tmp_path / "w"), "--rows", "1000", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Java 17 or newer is required" in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "w"), "nothing may be written before the Java check"
