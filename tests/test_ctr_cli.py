"""tfos-ctr CLI: every command has --help; bad input gives one clear line and exit 2, no traceback."""
import json
import subprocess
import sys

import pytest

COMMANDS = ["generate", "prep", "train", "evaluate", "score", "demo"]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tfos_jobs.ctr", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and f"tfos-ctr {command}" in proc.stdout


def test_generate_prints_report(tmp_path):
    proc = run_cli("generate", "--output", str(tmp_path / "g"), "--rows", "500", "--malformed-fraction", "0.1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rows"] == 500 and report["malformed"] > 0 and 0.5 < report["bayes_auc"] < 1


def test_bad_arguments_are_one_line_errors(tmp_path):
    proc = run_cli("generate", "--output", str(tmp_path / "g"), "--rows", "0")
    assert proc.returncode == 2 and "--rows: must be a positive integer" in proc.stderr
    proc = run_cli("train", "--prep", str(tmp_path / "nope"), "--model-dir", str(tmp_path / "m"),
                   "--export", str(tmp_path / "e"), "--hidden", "64,x")
    assert proc.returncode == 2 and "--hidden" in proc.stderr
    proc = run_cli("evaluate", "--export", str(tmp_path / "nope"), "--data", str(tmp_path / "d"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    nope = tmp_path / "nope"
    assert proc.stderr.strip() == f"tfos-ctr evaluate: error: model export {nope} does not exist: train with --export {nope} first"


def test_prep_missing_input_names_it(tmp_path):
    missing = str(tmp_path / "no-such-input")
    proc = run_cli("prep", "--input", missing, "--output", str(tmp_path / "p"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"tfos-ctr prep: error: input {missing} does not exist"
