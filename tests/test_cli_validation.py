"""Numbers are validated where they enter: a bad flag is one line naming it, exit 2, nothing written;
``TrainConfig.validate`` rejects the same values for library callers."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from cluster.testing import describe
from tfos_jobs.trainer import TrainConfig, fit

CTR_TRAIN = ["tfos_jobs.ctr", "train", "--prep", "{tmp}/prep", "--model-dir", "{tmp}/model", "--export", "{tmp}/export"]
SURVEY_TRAIN = ["tfos_jobs.survey", "train", "--prep", "{tmp}/prep", "--model-dir", "{tmp}/model",
                "--export", "{tmp}/export"]


@pytest.mark.parametrize("argv, flag", [
    (CTR_TRAIN + ["--steps", "-1"], "--steps"),
    (CTR_TRAIN + ["--epochs", "0"], "--epochs"),
    (CTR_TRAIN + ["--epochs", "-2"], "--epochs"),
    (CTR_TRAIN + ["--epochs", "nan"], "--epochs"),
    (CTR_TRAIN + ["--epochs", "inf"], "--epochs"),
    (CTR_TRAIN + ["--learning-rate", "0"], "--learning-rate"),
    (CTR_TRAIN + ["--dropout", "1"], "--dropout"),
    (CTR_TRAIN + ["--cross-layers", "-1"], "--cross-layers"),
    (CTR_TRAIN + ["--embedding-l2", "-0.1"], "--embedding-l2"),
    (["tfos_jobs.ctr", "prep", "--input", "{tmp}/raw", "--output", "{tmp}/prep", "--partitions", "0"], "--partitions"),
    (["tfos_jobs.ctr", "prep", "--input", "{tmp}/raw", "--output", "{tmp}/prep", "--hash-buckets", "0"],
     "--hash-buckets"),
    (["tfos_jobs.ctr", "score", "--export", "{tmp}/e", "--input", "{tmp}/i", "--output", "{tmp}/o",
      "--partitions", "-3"], "--partitions"),
    (["tfos_jobs.ctr", "evaluate", "--export", "{tmp}/e", "--data", "{tmp}/d", "--max-rows", "0"], "--max-rows"),
    (["tfos_jobs.ctr", "demo", "--work-dir", "{tmp}/demo", "--epochs", "nan"], "--epochs"),
    (SURVEY_TRAIN + ["--steps", "-5"], "--steps"),
    (SURVEY_TRAIN + ["--epochs", "0"], "--epochs"),
    (["tfos_jobs.survey", "prep", "--data", "{tmp}/d.csv", "--spec", "{tmp}/s.yaml", "--out", "{tmp}/p",
      "--validation-fraction", "1.0"], "--validation-fraction"),
    (["tfos_jobs.survey", "predict", "--prep", "{tmp}/p", "--export", "{tmp}/e", "--data", "{tmp}/d",
      "--out", "{tmp}/o", "--partitions", "0"], "--partitions"),
    (["cluster.deploy", "submit", "--dry-run", "--conf", "spark.executor.cores", "tfos_jobs.ctr", "prep"], "--conf"),
    (["cluster.deploy", "submit", "--dry-run", "--tf-nodes", "0", "tfos_jobs.ctr", "prep"], "--tf-nodes"),
    (["cluster.deploy", "submit", "--dry-run", "--timeout", "-1", "tfos_jobs.ctr", "prep"], "--timeout"),
])
def test_bad_number_is_one_line_naming_the_flag(argv, flag, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, describe(proc)
    assert f"argument {flag}" in lines[0] and "error" in lines[0], describe(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == "", describe(proc)
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


@pytest.mark.parametrize("options, field", [
    ({"steps": -1}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": -1.0}, "epochs"),
    ({"epochs": math.nan}, "epochs"),
    ({"epochs": math.inf}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"log_every": -1}, "log_every"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"steps_per_closure": 0}, "steps_per_closure"),
    ({"start_timeout_s": 0}, "start_timeout_s"),
    ({"orphan_timeout_s": math.nan}, "orphan_timeout_s"),
    ({"num_gpus": -1}, "num_gpus"),
])
def test_train_config_rejects_what_the_cli_rejects(options, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**options).validate()


def test_train_config_accepts_the_defaults_and_derived_steps():
    TrainConfig().validate()
    TrainConfig(steps=0, epochs=0.5, num_gpus=0).validate()


def test_fit_rejects_negative_steps_before_touching_spark_or_data():
    """``fit(steps=-1)`` used to skip training and publish an untrained model."""
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"fit used {name} before validating its options")

    with pytest.raises(ValueError, match="steps"):
        fit(Untouchable(), Untouchable(), Untouchable(), steps=-1)
