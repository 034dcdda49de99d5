"""The autopilot end to end on the pseudo-cluster, data on HDFS, typed as a user would: a champion trained
before the click model drifts, the drifting stream scored (following the champion alias) and
monitored, then `tfos-ctr autopilot --once`: the drop is caught in the configured windows, the model
is retrained on the newest labelled rows, judged against the champion on the same held-out rows, and
promoted (or, when it misses the blessing, rejected with the champion kept)."""
from __future__ import annotations

import json
import uuid

import pytest

import hdfs_io
from test_cli_e2e import cli, last_json
from tfos_jobs.autopilot.loop import decisions
from tfos_jobs.registry import ModelRegistry

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SMALL = ["--embedding-dim", "4", "--hidden", "16", "--cross-layers", "1"]
TRAIN = ["--steps", "300", "--batch-size", "128", "--strategy", "mwms", "--workers", "2", *SMALL]


@pytest.fixture(scope="module")
def drifted(pseudo_cluster):
    """A champion (version 1) trained on pre-drift rows, and the stream it scored and whose quality the
    monitor measured: 16,000 impressions, 4 a second, the click model drifting at row 6,000."""
    from cluster.pseudo import manager
    with pytest.MonkeyPatch.context() as patch:
        for key, value in manager.client_env(pseudo_cluster).items():
            patch.setenv(key, value)        # this process's own storage calls reach the cluster too
        hdfs_io.reset()
        try:
            yield from _drifted(pseudo_cluster)
        finally:
            hdfs_io.reset()


def _drifted(pseudo_cluster):
    root = hdfs_io.join(pseudo_cluster["hdfs"]["uri"], "tmp", f"autopilot-{uuid.uuid4().hex[:8]}")
    master = ["--master", pseudo_cluster["spark"]["master"]]
    registry = f"{root}/registry/ctr"
    try:
        cli(pseudo_cluster, "tfos-ctr", "generate", "--output", f"{root}/raw", "--rows", "20000", "--seed", "11")
        cli(pseudo_cluster, "tfos-ctr", "prep", "--input", f"{root}/raw", "--output", f"{root}/prep", "--hash-buckets",
            "500", "--validation-fraction", "0.2", "--partitions", "2", *master)
        cli(pseudo_cluster, "tfos-ctr", "train", "--prep", f"{root}/prep", "--model-dir", f"{root}/m1", "--export",
            registry, "--version", "auto", *TRAIN, *master)
        cli(pseudo_cluster, "tfos-registry", "promote", registry, "1", "--reason", "first model")
        stream = last_json(cli(pseudo_cluster, "tfos-ctr", "generate-stream", "--output", f"{root}/stream", "--rows",
                               "16000", "--files", "8", "--seed", "4", "--rows-per-s", "4", "--drift-at-row", "6000",
                               "--mean-click-delay-s", "60", "--max-click-delay-s", "300"))
        data = hdfs_io.resolve(f"{root}/stream")
        cli(pseudo_cluster, "tfos-ctr", "stream-score", "--export", f"{registry}@champion", "--input",
            f"{data}/impressions", "--output", f"{root}/pred", "--checkpoint", f"{root}/ck-score", "--trigger",
            "available-now", *master)
        cli(pseudo_cluster, "tfos-ctr", "stream-monitor", "--predictions", f"{root}/pred", "--clicks", f"{data}/clicks",
            "--labeled", f"{root}/labeled", "--metrics", f"{root}/metrics", "--checkpoint", f"{root}/ck-monitor",
            "--trigger", "available-now", "--sliding", "600:600", "--max-click-delay-s", "300", "--watermark-s", "60",
            "--quiet", *master)
        yield {"root": root, "registry": registry, "data": data, "stream": stream, "master": master}
    finally:
        hdfs_io.delete(root, recursive=True, missing_ok=True)


def autopilot_once(pseudo_cluster, run, name, **blessing):
    policy = {"model": run["registry"], "metric": "auc", "window": "sliding 600s every 600s",
              "trigger": {"baseline_windows": 2, "drop": 0.02, "consecutive": 2, "min_count": 300},
              "retrain": {"last_rows": 9000, "holdout_fraction": 0.25}, "cooldown_s": 0,
              "blessing": {"min_change": 0.01, **blessing}}
    uri = f"{run['root']}/{name}.yaml"
    with hdfs_io.open(uri, "w") as handle:
        json.dump(policy, handle)          # JSON is YAML
    done = last_json(cli(pseudo_cluster, "tfos-ctr", "autopilot", "--policy", uri, "--impressions",
                         f"{run['data']}/impressions", "--labeled", f"{run['root']}/labeled", "--metrics",
                         f"{run['root']}/metrics", "--work", f"{run['root']}/work", "--once", *TRAIN, *run["master"]))
    return done["decision"]


def test_a_challenger_that_misses_the_blessing_is_rejected_and_the_champion_stays(pseudo_cluster, drifted):
    decision = autopilot_once(pseudo_cluster, drifted, "strict", floor=0.99)
    assert decision["op"] == "rejected" and "does not reach the floor 0.99" in decision["reason"], json.dumps(decision)
    assert ModelRegistry(drifted["registry"]).state().current_aliases() == {"champion": 1}


def test_a_drop_is_caught_retrained_on_recent_rows_and_promoted(pseudo_cluster, drifted):
    decision = autopilot_once(pseudo_cluster, drifted, "default")
    assert decision["op"] == "promoted", json.dumps(decision)
    scores = decision["numbers"]
    assert scores["challenger"] >= scores["champion"] + 0.01, scores          # on the same held-out rows
    registry = ModelRegistry(drifted["registry"])
    champion = registry.state().alias("champion")
    assert champion == decision["challenger"] and registry.history()[-1]["decision"] == decision["decision"]
    lineage = registry.state().versions[champion]["lineage"]
    assert lineage["data"]["prep"].startswith(f"{drifted['root']}/work/retrain-"), lineage
    log = decisions(drifted["registry"])
    trigger = [e for e in log if e["op"] == "retrain"][-1]
    assert [e["op"] for e in log].count("baseline") == 1, log      # taken once, from the first two windows
    drift_ms = drifted["stream"]["drift_at_ms"]
    assert all(end > drift_ms for end in trigger["numbers"]["recent_end_ms"]), (trigger, drift_ms)
    assert [e["op"] for e in log if e.get("decision") == decision["decision"]] == ["trained", "evaluated", "promoted"]
