"""Resume from checkpoints and survive a lost executor: real TF training on Spark local-cluster."""
import os
import threading
import time

import psutil
import pytest

import hdfs_io
from tfos_jobs.trainer import TrainingFailed, fit

from conftest import own_tf_node_processes
from test_training_e2e import DemoCTRTask, assert_export_learned, ctr_data, source  # noqa: F401

pytestmark = pytest.mark.slow


def test_rerun_resumes_from_the_last_checkpoint(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    options = dict(strategy="mwms", num_workers=2, model_dir=str(tmp_path / "model"), batch_size=64,
                   checkpoint_every=1000, log_every=10)
    first = fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), steps=20, **options)
    assert first.resumed_from == 0 and first.steps == 20
    second = fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), steps=40,
                 export_uri=str(tmp_path / "export"), **options)
    assert second.resumed_from == 20, "the second run must start from the first run's final checkpoint"
    assert second.steps == 40
    assert hdfs_io.is_published(str(tmp_path / "export"))


def test_a_rerun_with_nothing_new_to_train_is_refused_unless_allowed(local_spark, ctr_data, tmp_path, capfd):
    """Resume is explicit: the run says it resumes, and a checkpoint already at the last step is not
    exported again as if it were a new model."""
    train, valid = ctr_data
    options = dict(strategy="mwms", num_workers=2, model_dir=str(tmp_path / "model"), batch_size=64,
                   checkpoint_every=1000, log_every=10, steps=10)
    fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), **options)
    capfd.readouterr()
    with pytest.raises(TrainingFailed, match="nothing new would be trained") as refused:
        fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), export_uri=str(tmp_path / "export"), **options)
    err = capfd.readouterr().err
    first = next(line for line in err.splitlines() if line.startswith("[tfos]"))
    assert first.startswith("[tfos] resuming: ") and "at step 10" in first, err[-3000:]
    assert not hdfs_io.exists(str(tmp_path / "export")), f"a refused run published: {refused.value}"
    again = fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), export_uri=str(tmp_path / "export"),
                allow_no_new_steps=True, **options)
    assert again.resumed_from == 10 and again.steps == 10, again
    assert again.metrics["resumed_from_step"] == 10, again.metrics


def _executor_of(pattern):
    """The Spark executor JVM above the TF node process whose command line contains ``pattern``, chosen
    among this test process's own descendants only: other jobs on the machine are never candidates."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    for proc in own_tf_node_processes():
        try:
            if pattern not in " ".join(proc.cmdline()):
                continue
            for parent in proc.parents():
                if parent.pid in ours and "CoarseGrainedExecutorBackend" in " ".join(parent.cmdline()):
                    return parent
        except psutil.Error:
            continue
    return None


def test_lost_executor_restarts_the_cluster_from_the_checkpoint(local_spark, ctr_data, tmp_path):
    train, valid = ctr_data
    model_dir = str(tmp_path / "model")
    outcome = {}

    def train_in_background():
        try:
            outcome["result"] = fit(local_spark.sparkContext, DemoCTRTask(valid), source(train), strategy="mwms",
                                    num_workers=2, model_dir=model_dir, export_uri=str(tmp_path / "export"),
                                    batch_size=32, steps=1500, checkpoint_every=20, log_every=50, max_attempts=3,
                                    stall_timeout_s=60)
        except BaseException as err:  # handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=train_in_background, daemon=True)
    thread.start()
    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + 300
    while not os.path.exists(index) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert os.path.exists(index), f"no checkpoint was written: {outcome}"
    victim = _executor_of("tfos-worker0-")
    assert victim is not None, "could not find the executor running TF worker:0"
    victim.kill()
    thread.join(timeout=600)
    assert not thread.is_alive(), "training did not finish after the executor was lost"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    # 2: the executor's loss ended attempt 1. 3 is allowed: once in CI (stop 13) attempt 2 hung after
    # step 100 with one of its nodes gone; the stall check now ends such an attempt and the next resumes.
    assert result.attempts in (2, 3)
    assert result.resumed_from >= 20, "the second TF cluster must resume from a checkpoint, not step 0"
    assert result.steps == 1500
    assert hdfs_io.is_published(str(tmp_path / "export"))
    # the model put together from checkpoints across attempts still learned
    assert_export_learned(result.export_uri, valid, result.metrics)
