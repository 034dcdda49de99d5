"""`tfos-survey autopilot` end to end on local Spark, typed as a user would: a champion trained on the
ANES 1996 example, its respondents' records streamed and answered later, and halfway through the stream
the `vote` answers flip (the population changes its mind: the old model is now wrong where it was right).
The drop in live accuracy is caught, the model retrained on the newest answered respondents with the
champion's own encoding, judged against the champion on the same held-out respondents and promoted."""
from __future__ import annotations

import json
import os

import pytest

import hdfs_io
from cluster.testing import describe, run_process
from tfos_jobs.streaming.pipeline import read_metrics
from tfos_jobs.survey import synthetic as data

pytestmark = pytest.mark.slow
T0_MS, STEP_MS, ANSWER_DELAY_MS, WINDOW_S = 1_780_000_000_000, 10_000, 60_000, 1200
MODEL = ["--hidden", "16", "--embedding-dim", "4", "--learning-rate", "0.01", "--batch-size", "32",
         "--steps", "150", "--strategy", "mwms", "--workers", "2", "--master", "local-cluster[2,1,1024]"]
STREAM = ["--trigger", "available-now", "--master", "local[2]"]


def survey(*args, timeout=900):
    done = run_process([os.path.join(os.path.dirname(os.sys.executable), "tfos-survey"), *args], timeout=timeout)
    assert done.returncode == 0, describe(done)
    return done


def last_json(done):
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def write_stream(root, flip_from: int) -> None:
    """Every respondent's record (10 s apart) and, a minute later, their answers; from respondent
    ``flip_from`` on, `vote` is answered the other way."""
    rows = data.anes96_table().to_pylist()
    targets = ("vote", "PID", "selfLR")
    (root / "records").mkdir()
    (root / "answers").mkdir()
    for part in range(4):
        chunk = range(part * len(rows) // 4, (part + 1) * len(rows) // 4)
        records, answers = [], []
        for i in chunk:
            r = rows[i]
            records.append(json.dumps({**{k: v for k, v in r.items() if k not in targets}, "event_time": T0_MS + STEP_MS * i}))
            given = {t: r[t] for t in targets}
            if i >= flip_from:
                given["vote"] = 1 - int(given["vote"])
            answers.append(json.dumps({"respondent": r["respondent"], **given,
                                       "event_time": T0_MS + STEP_MS * i + ANSWER_DELAY_MS}))
        for name, lines in (("records", records), ("answers", answers)):
            path = root / name / f"part-{part}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            os.utime(path, (1e9 + part, 1e9 + part))        # land in order


def test_a_flipped_answer_is_caught_retrained_with_the_champions_encoding_and_promoted(tmp_path, local_spark):
    from tfos_jobs.autopilot.loop import decisions
    from tfos_jobs.registry import ModelRegistry
    from tfos_jobs.survey import prep, steps
    root, registry = tmp_path, str(tmp_path / "registry" / "anes")
    example = last_json(survey("example", "--out", str(root / "example")))
    survey("prep", "--data", example["data"], "--spec", example["spec"], "--out", str(root / "prep"), "--files", "2",
           "--master", "local[2]")
    survey("train", "--prep", str(root / "prep"), "--model-dir", str(root / "m1"), "--export", registry,
           "--version", "auto", *MODEL)
    run_process([os.path.join(os.path.dirname(os.sys.executable), "tfos-registry"), "promote", registry, "1"],
                timeout=120)
    n = data.anes96_table().num_rows
    write_stream(root, flip_from=n // 2)
    champion = f"{registry}@champion"
    predict = ["stream-predict", "--export", champion, "--input", str(root / "records"), "--output",
               str(root / "pred"), "--checkpoint", str(root / "ck-pred"), *STREAM]
    survey(*predict)
    survey("stream-monitor", "--export", champion, "--predictions", str(root / "pred"), "--answers",
           str(root / "answers"), "--metrics", str(root / "metrics"), "--checkpoint", str(root / "ck-mon"),
           "--max-answer-delay-s", "600", "--watermark-s", "300", "--sliding", f"{WINDOW_S}:{WINDOW_S}", "--quiet",
           *STREAM)
    policy = {"model": registry, "metric": "accuracy:vote", "window": f"sliding {WINDOW_S}s every {WINDOW_S}s",
              "trigger": {"baseline_windows": 2, "drop": 0.1, "consecutive": 2, "min_count": 80},
              "retrain": {"last_rows": 400, "holdout_fraction": 0.25}, "cooldown_s": 0,
              "blessing": {"min_change": 0.1}}
    (root / "policy.yaml").write_text(json.dumps(policy))      # JSON is YAML
    done = survey("autopilot", "--policy", str(root / "policy.yaml"), "--records", str(root / "records"),
                  "--answers", str(root / "answers"), "--metrics", str(root / "metrics"), "--work",
                  str(root / "work"), "--once", *MODEL)
    decision = last_json(done)["decision"] or {}
    log = decisions(registry)
    assert decision.get("op") == "promoted", (json.dumps(decision), log, describe(done))
    scores = decision["numbers"]
    assert scores["challenger"] >= scores["champion"] + 0.1, scores        # on the same held-out respondents
    trigger = [e for e in log if e["op"] == "retrain"][-1]
    flip_ms = T0_MS + STEP_MS * (n // 2)
    assert all(end > flip_ms for end in trigger["numbers"]["recent_end_ms"]), trigger
    state = ModelRegistry(registry).state()
    assert state.alias("champion") == decision["challenger"] == 2, state.current_aliases()
    # the challenger takes the champion's inputs: the server and the stream encode answers as before
    plans = [steps.export_plan(ModelRegistry(registry).version_uri(v)) for v in (1, 2)]
    assert prep.plan_id(plans[0]) == prep.plan_id(plans[1])
    raw = str(root / "work" / f"retrain-{trigger['seq']}" / "raw")
    assert state.versions[2]["lineage"]["data"]["data"] == raw and plans[1]["rows"]["total"] == 400, state.versions[2]
    assert hdfs_io.read_parquet(raw).num_rows == 400
    # records landing after the promotion are answered by the new champion, the version on each
    later = [json.dumps({**r, "respondent": 100_000 + r["respondent"], "event_time": T0_MS + STEP_MS * (n + i)})
             for i, r in enumerate(data.anes96_table().drop_columns(["vote", "PID", "selfLR"]).to_pylist()[:50])]
    (root / "records" / "part-4.jsonl").write_text("\n".join(later) + "\n")
    survey(*predict)
    scored = hdfs_io.read_parquet(str(root / "pred"), columns=["id", "model_version"]).to_pylist()
    versions = {v for r in scored for v in [r["model_version"]] if int(r["id"]) >= 100_000}
    assert versions == {"2"} and len(scored) == n + 50, (versions, len(scored))
    # shadow mode's judging: champion and challenger on the same live respondents after the flip; the
    # champion's figures are the ones the monitor measured live
    shadow = shadow_windows(local_spark, root, registry, policy, flip_ms)
    live = {r["window_end_ms"]: r for r in read_metrics(str(root / "metrics")) if r.get("series") == "vote"
            and r["window_kind"] == "sliding" and str(r["model_version"]) == "1"}
    assert len(shadow) >= 2, shadow
    for w in shadow:
        if w["window_end_ms"] - WINDOW_S * 1000 >= flip_ms and w["window_end_ms"] in live:   # wholly after the flip
            assert w["count"] == live[w["window_end_ms"]]["count"], (w, live[w["window_end_ms"]])
            assert abs(w["champion"] - live[w["window_end_ms"]]["ctr"]) < 1e-6, (w, live[w["window_end_ms"]])
            assert w["challenger"] >= w["champion"] + 0.1, w
    assert any(w["window_end_ms"] - WINDOW_S * 1000 >= flip_ms and w["window_end_ms"] in live for w in shadow), (
        shadow, sorted(live))


def shadow_windows(spark, root, registry, policy_json, since_ms):
    """SurveyRetraining.shadow as the autopilot calls it (versions 1 and 2), on the tests' shared Spark
    (not stopped here: the session is the process's one active session, which later tests use)."""
    from tfos_jobs.autopilot import policy as policies
    from tfos_jobs.survey.autopilot import SurveyRetraining
    hooks = SurveyRetraining(spark, policies.parse(policy_json), str(root / "records"), str(root / "answers"),
                             str(root / "metrics"), str(root / "work"))
    return hooks.shadow({"id": "test"}, {"champion": 1, "challenger": 2}, since_ms)
