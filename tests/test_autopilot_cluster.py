"""The autopilot end to end on the pseudo-cluster, data on HDFS, typed as a user would: a champion trained
before the click model drifts, the drifting stream scored (following the champion alias) and
monitored, then `tfos-ctr autopilot --once`: the drop is caught in the configured windows, the model
is retrained on the newest labelled rows, judged against the champion on the same held-out rows, and
promoted (or, when it misses the blessing, rejected with the champion kept)."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import uuid

import numpy as np

import psutil
import pytest

import cluster
import hdfs_io
from test_cli_e2e import BIN, cli, last_json
from test_serving import Served
from test_serving_cluster import served_version
from tfos_jobs import metrics
from tfos_jobs.autopilot.loop import decisions
from tfos_jobs.registry import ModelRegistry

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SMALL = ["--embedding-dim", "4", "--hidden", "16", "--cross-layers", "1"]
TRAIN = ["--steps", "300", "--batch-size", "128", "--strategy", "mwms", "--workers", "2", *SMALL]


@pytest.fixture(scope="module")
def drifted(pseudo_cluster):
    """A champion (version 1, also aliased ``first``) trained on pre-drift rows, and the stream it scored
    and whose quality the monitor measured: 32,000 impressions landed, 8 a second, the click model
    drifting at row 12,000; 8,000 more held back to land after a promotion."""
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
        cli(pseudo_cluster, "tfos-registry", "promote", registry, "1", "--alias", "first", "--reason",
            "kept to compare")
        stream = last_json(cli(pseudo_cluster, "tfos-ctr", "generate-stream", "--output", f"{root}/stream", "--rows",
                               "40000", "--files", "10", "--seed", "4", "--rows-per-s", "8", "--drift-at-row", "12000",
                               "--mean-click-delay-s", "60", "--max-click-delay-s", "300"))
        run = {"root": root, "registry": registry, "data": hdfs_io.resolve(f"{root}/stream"), "stream": stream,
               "master": master, "live": f"{root}/live", "clicks": f"{root}/clicks"}
        run["parts"] = sorted(i.uri.rsplit("/", 1)[-1] for i in hdfs_io.ls(f"{run['data']}/impressions"))
        land(run, run["parts"][:8])
        stream_once(pseudo_cluster, run)
        yield run
    finally:
        hdfs_io.delete(root, recursive=True, missing_ok=True)


def land(run, parts):
    """Files land as time goes by: impressions and the clicks of the same stretch of time together."""
    for name in parts:
        hdfs_io.copy(f"{run['data']}/impressions/{name}", f"{run['live']}/{name}")
        hdfs_io.copy(f"{run['data']}/clicks/{name}", f"{run['clicks']}/{name}")


def stream_once(pseudo_cluster, run, monitor=True):
    """What has landed scored by the champion of the moment, then measured: both streams with
    `--trigger available-now` (process what is there, stop), resuming from their checkpoints."""
    root = run["root"]
    cli(pseudo_cluster, "tfos-ctr", "stream-score", "--export", f"{run['registry']}@champion", "--input", run["live"],
        "--output", f"{root}/pred", "--checkpoint", f"{root}/ck-score", "--trigger", "available-now", *run["master"])
    if monitor:
        cli(pseudo_cluster, "tfos-ctr", "stream-monitor", "--predictions", f"{root}/pred", "--clicks", run["clicks"],
            "--labeled", f"{root}/labeled", "--metrics", f"{root}/metrics", "--checkpoint", f"{root}/ck-monitor",
            "--trigger", "available-now", "--sliding", "600:600", "--max-click-delay-s", "300", "--watermark-s",
            "60", "--quiet", *run["master"])


def write_policy(run, name, last_rows=18000, **blessing) -> str:
    """18,000 rows: 13,500 to train on (the small model trained on half as many barely beats the old one)."""
    policy = {"model": run["registry"], "metric": "auc", "window": "sliding 600s every 600s",
              "trigger": {"baseline_windows": 2, "drop": 0.02, "consecutive": 2, "min_count": 300},
              "retrain": {"last_rows": last_rows, "holdout_fraction": 0.25}, "cooldown_s": 0,
              "blessing": {"min_change": 0.01, **blessing}}
    uri = f"{run['root']}/{name}.yaml"
    with hdfs_io.open(uri, "w") as handle:
        json.dump(policy, handle)          # JSON is YAML
    return uri


def autopilot_argv(run, policy_uri, *extra):
    return ["tfos-ctr", "autopilot", "--policy", policy_uri, "--impressions", run["live"],
            "--labeled", f"{run['root']}/labeled", "--metrics", f"{run['root']}/metrics", "--work",
            f"{run['root']}/work", *TRAIN, *run["master"], *extra]


def killed_mid_training(pseudo_cluster, run, policy_uri, timeout_s=420):
    """Start `tfos-ctr autopilot` (the long-running loop) and SIGKILL it, with everything it started,
    once its retraining has mirrored a checkpoint and not yet finished; the open decision and the step
    of that checkpoint."""
    from cluster.processes import stop_tree
    from tfos_jobs.tfnode.checkpoint import checkpoint_step
    argv = autopilot_argv(run, policy_uri, "--poll-s", "2", "--checkpoint-every", "50")
    before = len(decisions(run["registry"]))            # earlier decisions (another test's) are not this one
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **cluster.client_env(pseudo_cluster)},
                                start_new_session=True)
        try:
            deadline, step, opened = time.monotonic() + timeout_s, None, None
            while time.monotonic() < deadline and proc.poll() is None:
                opened = next((e for e in decisions(run["registry"])[before:] if e["op"] == "retrain"), None)
                model_dir = f"{run['root']}/work/retrain-{opened['seq']}/model" if opened else None
                step = checkpoint_step(model_dir) if model_dir else None
                if step is not None:
                    break
                time.sleep(1)
            ops = [e["op"] for e in decisions(run["registry"])[before:]]
            out.seek(0)
            seen = f"ops {ops}, exit {proc.poll()}\n{out.read().decode(errors='replace')[-6000:]}"
            assert step is not None and ops[-1] == "retrain", seen      # mid-training: nothing after the trigger
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                p.kill()                                     # no chance to clean up: as a lost host would
            proc.wait(timeout=30)
            return opened, step
        finally:
            stop_tree(proc)


def test_a_challenger_that_misses_the_blessing_is_rejected_and_the_champion_stays(pseudo_cluster, drifted):
    """Trained on too few rows for too few steps (cheap in CI), it cannot reach the policy's floor."""
    policy_uri = write_policy(drifted, "strict", last_rows=2000, floor=0.99)
    done = last_json(cli(pseudo_cluster, *autopilot_argv(drifted, policy_uri, "--once", "--steps", "30")))
    decision = done["decision"]
    assert decision["op"] == "rejected" and "does not reach the floor 0.99" in decision["reason"], json.dumps(decision)
    registry = ModelRegistry(drifted["registry"])
    assert registry.state().current_aliases() == {"champion": 1, "first": 1}
    assert registry.state().versions[decision["challenger"]]["state"] == "ready"     # kept, not served


class Probe(threading.Thread):
    """Asks the server for predictions every 0.2 s until stopped; every answer's status and version."""

    def __init__(self, server, records):
        super().__init__(daemon=True)
        self.server, self.records, self.answers, self.halt = server, records, [], threading.Event()

    def run(self):
        while not self.halt.wait(0.2):
            try:
                code, body, _ = self.server.call("POST", "/v1/models/ctr/records:predict", {"records": self.records})
                self.answers.append((code, body.get("model_version") if code == 200 else body))
            except OSError as error:
                self.answers.append((None, repr(error)))

    def stop(self):
        self.halt.set()
        self.join(60)
        return self.answers


def predict(server, name, records, chunk=1000):
    out = []
    for i in range(0, len(records), chunk):
        code, body, _ = server.call("POST", f"/v1/models/{name}/records:predict", {"records": records[i:i + chunk]})
        assert code == 200, body
        out.extend(body["predictions"])
    return np.array(out, dtype=np.float64).ravel()     # one [p] per record


def held_back_rows(run):
    """The impressions held back in the fixture: ids, raw records (the 39 fields) and click labels."""
    ids, records = [], []
    for name in run["parts"][8:]:
        with hdfs_io.open(f"{run['data']}/impressions/{name}", "r") as handle:
            for line in handle.read().splitlines():
                row_id, _, record = line.split("\t", 2)
                ids.append(row_id)
                records.append(record)
    clicked = set()
    for info in hdfs_io.ls(f"{run['data']}/clicks"):
        with hdfs_io.open(info.uri, "r") as handle:
            clicked.update(line.split("\t", 1)[0] for line in handle.read().splitlines())
    return ids, records, np.array([i in clicked for i in ids], dtype=np.float64)


def test_a_drop_is_caught_retrained_on_recent_rows_and_promoted_across_a_kill(pseudo_cluster, drifted, tmp_path):
    """The loop is killed mid-retraining; started again, it takes over the dead one's lease and finishes
    the same retraining from its checkpoint: one trigger, one challenger, promoted. The server following
    the champion alias swaps to it without a failed request, the stream scores the rows landed after
    the promotion with it, and there it is clearly better than the old champion."""
    ids, records, labels = held_back_rows(drifted)
    server = Served([str(BIN / "tfos-serve"), "--model", f"ctr={drifted['registry']}@champion", "--model",
                     f"first={drifted['registry']}@first", "--poll-s", "1", "--cache-dir", str(tmp_path / "cache")],
                    tmp_path / "serve.log", env={**os.environ, **cluster.client_env(pseudo_cluster)})
    probe = Probe(server, records[:16])
    try:
        assert served_version(server, "ctr") == ["1"], server.output()[-3000:]
        probe.start()
        promoted = promoted_across_a_kill(pseudo_cluster, drifted)
        deadline = time.monotonic() + 60
        while served_version(server, "ctr") != [str(promoted)] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        answers = probe.stop()
        assert answers and all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:5]
        seen = [version for _, version in answers]
        assert seen[0] == "1" and seen[-1] == str(promoted) and seen == sorted(seen, key=int), seen   # 1 ... 1 2 ... 2
        land(drifted, drifted["parts"][8:])
        stream_once(pseudo_cluster, drifted, monitor=False)
        scored = hdfs_io.read_parquet(f"{drifted['root']}/pred", columns=["id", "prediction", "model_version"])
        by_id = {i: (p, v) for i, p, v in zip(*(scored.column(c).to_pylist() for c in scored.column_names))}
        assert {by_id[i][1] for i in ids} == {str(promoted)}, "the stream did not switch to the new champion"
        live = np.array([by_id[i][0] for i in ids])
        np.testing.assert_allclose(predict(server, "ctr", records), live, rtol=1e-5, atol=1e-6)   # one model
        new, old = metrics.auc(labels, live), metrics.auc(labels, predict(server, "first", records))
        figures = {"new champion": new, "old champion": old, "rows": len(ids), "answers": len(answers)}
        print(json.dumps(figures))
        assert new >= old + 0.02, figures
    finally:
        probe.halt.set()
        assert server.stop() == 0, server.output()[-3000:]


def promoted_across_a_kill(pseudo_cluster, drifted):
    """Kill the autopilot mid-retraining, run it again to the end, check the decision and the registry;
    the promoted version."""
    policy_uri = write_policy(drifted, "default")
    opened, step = killed_mid_training(pseudo_cluster, drifted, policy_uri)
    done = last_json(cli(pseudo_cluster, *autopilot_argv(drifted, policy_uri, "--once")))
    decision = done["decision"]
    assert decision["op"] == "promoted" and decision["decision"] == opened["seq"], json.dumps(done)
    scores = decision["numbers"]
    assert scores["challenger"] >= scores["champion"] + 0.01, scores          # on the same held-out rows
    registry = ModelRegistry(drifted["registry"])
    champion = registry.state().alias("champion")
    assert champion == decision["challenger"] and registry.history()[-1]["decision"] == decision["decision"]
    record = registry.state().versions[champion]
    assert record["lineage"]["data"]["prep"] == f"{drifted['root']}/work/retrain-{opened['seq']}/prep", record
    assert record["metrics"]["resumed_from_step"] >= step > 0, record["metrics"]   # from the killed run's checkpoint
    log = decisions(drifted["registry"])
    trigger = [e for e in log if e["op"] == "retrain"][-1]
    assert trigger["seq"] == opened["seq"], log                      # the restart opened no second retraining
    assert [e["op"] for e in log].count("baseline") == 1, log      # taken once, from the first two windows
    leases = [e["owner"] for e in log if e["op"] == "lease"]
    assert leases[-1] != leases[-2], leases          # the restart took the dead one's lease without waiting
    drift_ms = drifted["stream"]["drift_at_ms"]
    assert all(end > drift_ms for end in trigger["numbers"]["recent_end_ms"]), (trigger, drift_ms)
    assert [e["op"] for e in log if e.get("decision") == decision["decision"]] == ["trained", "evaluated", "promoted"]
    return champion
