"""The autopilot's policy file and judgements, on numbers alone."""
from __future__ import annotations

import time

import numpy as np
import pytest

from tfos_jobs.autopilot import decide, policy as policies
from tfos_jobs.autopilot.policy import PolicyError
from tfos_jobs.streaming import quality


def window(end_min, value, version="1", count=1000, metric="auc", kind="sliding", name="3600s every 900s", series=""):
    return {"window_kind": kind, "window": name, "model_version": version, "series": series, "count": count,
            "window_end_ms": end_min * 60_000, metric: value}


def test_a_policy_file_is_read_and_checked(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("model: hdfs://nn/registry/ctr\nmetric: log_loss\nwindow: sliding 600s every 300s\n"
                    "trigger: {drop: 0.05, consecutive: 2}\nretrain: {last_rows: 5000}\nblessing: {floor: 0.6}\n")
    p = policies.load(str(path))
    assert (p.metric, p.trigger.drop, p.trigger.consecutive, p.retrain.last_rows, p.direction) == (
        "log_loss", 0.05, 2, 5000, -1)
    assert p.window_kind() == ("sliding", "600s every 300s") and p.trigger.min_count == 500
    bad = {"trigger: {drop: -1}": "trigger: drop: must be at least 0, got -1",
           "trigger: {dorp: 1}": "trigger: unknown key(s) ['dorp']",
           "metric: accuracy": "metric: one of auc, log_loss, accuracy:<question>",
           "window: hourly": "window: 'sliding <L>s every <S>s'",
           "retrain: {last_rows: 10, last_s: 60}": "retrain: give one of last_rows and last_s",
           "approval: maybe": "approval: auto or manual",
           "shadow_windows: 1.5": "shadow_windows: expected an integer",
           "trigger: {psi: -0.2}": "trigger: psi: must be at least 0"}
    for line, message in bad.items():
        path.write_text(f"model: file:///m\n{line}\n")
        with pytest.raises(PolicyError) as caught:
            policies.load(str(path))
        assert str(caught.value) == f"{path}: {message}" or message in str(caught.value), (line, str(caught.value))
        assert str(path) in str(caught.value)
    path.write_text("metric: auc\n")
    with pytest.raises(PolicyError, match="model: the registered model's URI is required"):
        policies.load(str(path))
    path.write_text("model: [unclosed\n")
    with pytest.raises(PolicyError, match="not YAML"):
        policies.load(str(path))


def test_a_drop_in_consecutive_windows_triggers_and_a_dip_does_not():
    p = policies.parse({"model": "file:///m", "trigger": {"drop": 0.02, "consecutive": 3, "baseline_windows": 2}})
    live = [window(15 * i, v) for i, v in enumerate([0.80, 0.78, 0.79, 0.75, 0.79, 0.74, 0.75, 0.76], start=1)]
    live.append(window(200, 0.50, count=10))                      # too few rows: not counted
    live.append(window(210, 0.50, version="2"))                   # another version's window
    windows = decide.champion_windows(p, live, "1", since_ms=0)
    assert len(windows) == 8
    baseline = decide.live_baseline(p, windows)
    assert baseline == pytest.approx(0.79)
    assert not decide.judge(p, windows[:6], baseline).retrain     # 0.75, 0.79, 0.74: one recovered
    verdict = decide.judge(p, windows, baseline)
    assert verdict.retrain and verdict.numbers["recent"] == [0.74, 0.75, 0.76], verdict
    assert not decide.judge(p, decide.champion_windows(p, live, "1", since_ms=16 * 60_000 * 15), baseline).retrain
    assert not decide.judge(p, windows[:1], decide.live_baseline(p, windows[:1])).retrain


def test_log_loss_is_better_lower_and_survey_accuracy_reads_its_question():
    p = policies.parse({"model": "file:///m", "metric": "log_loss", "trigger": {"drop": 0.05, "consecutive": 2}})
    assert decide.judge(p, [window(i, v, metric="log_loss") for i, v in enumerate([0.4, 0.4, 0.4, 0.5, 0.5])],
                        0.4).retrain
    assert not decide.judge(p, [window(i, v, metric="log_loss") for i, v in enumerate([0.4, 0.4, 0.4, 0.3, 0.3])],
                            0.4).retrain
    q = policies.parse({"model": "file:///m", "metric": "accuracy:q7"})
    records = [window(1, 0.6, metric="ctr", series="q7"), window(2, 0.9, metric="ctr", series="q1")]
    assert [decide.metric_of(q, r) for r in decide.champion_windows(q, records, "1", 0)] == [0.6]


def test_psi_is_zero_on_the_same_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    def hist(predictions):
        return quality.histogram(quality.sketch(np.zeros(len(predictions)), predictions))
    base = hist(rng.beta(2, 30, 50_000))                          # CTR-like: most mass below 0.15
    assert decide.psi(base, base) == pytest.approx(0.0, abs=1e-12)
    assert decide.psi(base, hist(rng.beta(2, 30, 50_000))) < 0.01   # sampling noise only
    small, large = decide.psi(base, hist(rng.beta(2, 24, 50_000))), decide.psi(base, hist(rng.beta(2, 12, 50_000)))
    assert 0.01 < small < large and large > 0.25, (small, large)
    # the textbook formula on the reference's deciles, computed here by hand on the raw predictions
    ref, cur = rng.beta(2, 30, 50_000), rng.beta(2, 12, 50_000)
    edges = np.quantile(ref, np.linspace(0, 1, 11))[1:-1]
    r = np.bincount(np.searchsorted(edges, ref), minlength=10) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur), minlength=10) / len(cur)
    assert decide.psi(hist(ref), hist(cur)) == pytest.approx(np.sum((c - r) * np.log(c / r)), rel=0.25)
    assert decide.psi(base, [0.0] * len(base)) is None


def test_prediction_drift_triggers_with_psi_and_not_without():
    rng = np.random.default_rng(1)
    def drifting(end_min, a, b, auc=0.80):
        w = window(end_min, auc)
        w["prediction_histogram"] = quality.histogram(quality.sketch(np.zeros(5000), rng.beta(a, b, 5000)))
        return w
    live = [drifting(i, 2, 30) for i in range(1, 4)] + [drifting(i, 2, 10) for i in range(4, 7)]
    off = policies.parse({"model": "file:///m", "trigger": {"consecutive": 3, "baseline_windows": 3}})
    on = policies.parse({"model": "file:///m", "trigger": {"consecutive": 3, "baseline_windows": 3, "psi": 0.25}})
    assert not decide.judge(off, live, 0.80).retrain                 # the AUC held: no trigger without psi
    verdict = decide.judge(on, live, 0.80)
    assert verdict.retrain and "prediction drift" in verdict.reason and min(verdict.numbers["psi"]) > 0.25, verdict
    calm = live[:3] + [drifting(i, 2, 30) for i in range(4, 7)]
    verdict = decide.judge(on, calm, 0.80)
    assert not verdict.retrain and max(verdict.numbers["psi"]) < 0.05, verdict
    assert not decide.judge(on, live[:3] + live[3:5] + calm[5:], 0.80).retrain   # two drifted of three
    old = [{k: v for k, v in w.items() if k != "prediction_histogram"} for w in live]   # records from before
    assert decide.judge(on, old, 0.80).numbers["psi"] == [None, None, None]


def test_blessing_needs_the_floor_and_the_change():
    p = policies.parse({"model": "file:///m", "blessing": {"floor": 0.7, "min_change": 0.01}})
    assert decide.bless(p, 0.72, 0.74).retrain
    assert not decide.bless(p, 0.72, 0.725).retrain              # better, by less than min_change
    assert "floor" in decide.bless(p, None, 0.65).reason
    assert decide.bless(p, None, 0.71).retrain                   # no champion yet
    assert not decide.bless(p, 0.72, float("nan")).retrain
    lower = policies.parse({"model": "file:///m", "metric": "log_loss", "blessing": {"floor": 0.5}})
    assert decide.bless(lower, 0.45, 0.40).retrain and not decide.bless(lower, 0.45, 0.55).retrain


# ------------------------------------------------------------------------------------ the loop
class FakeJob:
    """Hooks with scripted numbers: windows of the champion, a retraining that publishes a stand-in
    version, and the scores the evaluation reports."""

    def __init__(self, registry, tmp_path, scores=(0.70, 0.80), fail=None, incompatible=None):
        self.registry, self.tmp_path = registry, tmp_path
        self.scores, self.fail, self.why = scores, fail, incompatible
        self.values, self.trained = [], []

    def windows(self):
        start = int(time.time() * 1000) + 60_000
        return [window(0, v) | {"window_end_ms": start + 60_000 * i, "model_version": str(self.registry.state().alias("champion"))}
                for i, v in enumerate(self.values)]

    def retrain(self, decision):
        self.trained.append(decision["id"])
        if self.fail:
            raise self.fail
        from test_registry import publish_fake
        return publish_fake(self.registry, self.tmp_path, f"retrain-{decision['id']}-{len(self.trained)}")

    def evaluate(self, decision, versions):
        return {"champion": self.scores[0], "challenger": self.scores[1]}

    def incompatible(self, champion, challenger):
        return self.why


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def autopilot_for(tmp_path, job=None, clock=None, by="a", job_class=None, **policy):
    from tfos_jobs.autopilot.loop import Autopilot
    from tfos_jobs.registry import ModelRegistry
    from test_registry import publish_fake
    uri = f"file://{tmp_path}/reg/ctr"
    registry = ModelRegistry(uri)
    if not registry.exists():
        publish_fake(registry, tmp_path, "first")
        registry.promote(1)
    p = policies.parse({"model": uri, "trigger": {"drop": 0.02, "consecutive": 2, "baseline_windows": 2, "min_count": 1},
                        "cooldown_s": 600, **policy})
    job = job or (job_class or FakeJob)(registry, tmp_path)
    pilot = Autopilot(p, job, clock=clock or Clock(), by=by, lease_s=60)
    pilot.acquire()
    return pilot, job, registry


def ops(pilot):
    from tfos_jobs.autopilot.loop import decisions
    return [e["op"] for e in decisions(pilot.policy.model)]


def test_a_drop_retrains_blesses_and_promotes(tmp_path):
    pilot, job, registry = autopilot_for(tmp_path)
    job.values = [0.80, 0.80, 0.79]
    assert pilot.step() is None                           # baseline taken, no drop
    job.values += [0.70, 0.71]
    promoted = pilot.step()
    assert promoted["op"] == "promoted" and promoted["challenger"] == 2, promoted
    assert registry.state().alias("champion") == 2 and registry.history()[-1]["decision"] == promoted["decision"]
    assert ops(pilot) == ["lease", "baseline", "retrain", "trained", "evaluated", "promoted"]
    job.values = [0.70, 0.70]
    assert pilot.step() is None                           # the new champion's windows start afresh


def test_a_worse_challenger_is_rejected_and_the_cooldown_holds(tmp_path):
    clock = Clock()
    pilot, job, registry = autopilot_for(tmp_path, clock=clock)
    job.scores = (0.75, 0.74)
    job.values = [0.80, 0.80, 0.70, 0.70]
    rejected = pilot.step()
    assert rejected["op"] == "rejected" and "not better than the champion" in rejected["reason"], rejected
    assert registry.state().alias("champion") == 1
    clock.now += 300
    assert pilot.step() is None and len(job.trained) == 1     # cooling down
    clock.now += 400
    assert pilot.step()["op"] == "rejected" and len(job.trained) == 2


def test_manual_approval_incompatibility_and_failure_keep_the_champion(tmp_path):
    pilot, job, registry = autopilot_for(tmp_path / "manual", approval="manual")
    job.values = [0.80, 0.80, 0.70, 0.70]
    assert pilot.step()["op"] == "awaiting-approval"
    assert registry.state().current_aliases() == {"champion": 1, "challenger": 2}
    pilot, job, registry = autopilot_for(tmp_path / "incompatible")
    job.why, job.values = "input C1 is int32 in the challenger, int64 in the champion", [0.8, 0.8, 0.7, 0.7]
    assert "int32" in pilot.step()["reason"] and registry.state().alias("champion") == 1
    pilot, job, registry = autopilot_for(tmp_path / "failing")
    job.fail, job.values = RuntimeError("executor lost"), [0.8, 0.8, 0.7, 0.7]
    failed = pilot.step()
    assert failed["op"] == "failed" and "executor lost" in failed["error"] and registry.state().alias("champion") == 1


class ShadowJob(FakeJob):
    """A job that can score the challenger in shadow: ``live`` are the windows it reports."""

    def __init__(self, registry, tmp_path, **kwargs):
        super().__init__(registry, tmp_path, **kwargs)
        self.live, self.asked = [], []

    def shadow(self, decision, versions, since_ms):
        self.asked.append((versions, since_ms))
        return [{"window_end_ms": since_ms + 60_000 * (i + 1), "count": n, "champion": a, "challenger": b}
                for i, (n, a, b) in enumerate(self.live)]


def test_shadow_mode_judges_the_challenger_on_live_windows_before_promoting(tmp_path):
    from tfos_jobs.autopilot.loop import Autopilot
    pilot, shadow, registry = autopilot_for(tmp_path / "good", job_class=ShadowJob, shadow_windows=2)
    shadow.values = [0.80, 0.80, 0.70, 0.70]
    started = pilot.step()
    assert started["op"] == "shadowing" and started["challenger"] == 2, started
    assert registry.state().current_aliases() == {"champion": 1, "challenger": 2}   # the shadow scorer follows it
    assert abs(started["shadow_since_ms"] - shadow.windows()[-1]["window_end_ms"]) < 1000   # the newest window's end
    shadow.live = [(500, 0.70, 0.76)]
    assert pilot.step() is None and len(shadow.trained) == 1          # one window of two: wait, never retrain again
    shadow.live += [(0, None, None), (500, 0.71, 0.75)]              # an empty window does not count
    promoted = pilot.step()
    assert promoted["op"] == "promoted" and promoted["reason"].startswith("shadow: blessed"), promoted
    assert promoted["numbers"]["shadow"]["challenger"] == pytest.approx(0.755), promoted
    assert registry.state().current_aliases() == {"champion": 2}
    assert shadow.asked[-1] == ({"champion": 1, "challenger": 2}, started["shadow_since_ms"])
    assert [o for o in ops(pilot) if o != "lease"] == ["baseline", "retrain", "trained", "evaluated", "shadowing",
                                                        "promoted"]

    pilot, shadow, registry = autopilot_for(tmp_path / "bad", job_class=ShadowJob, shadow_windows=1)
    shadow.values = [0.80, 0.80, 0.70, 0.70]
    assert pilot.step()["op"] == "shadowing"
    shadow.live = [(800, 0.72, 0.69)]                               # better held out, worse live
    rejected = pilot.step()
    assert rejected["op"] == "rejected" and "not better than the champion" in rejected["reason"], rejected
    assert registry.state().current_aliases() == {"champion": 1}      # challenger alias taken back

    with pytest.raises(ValueError, match="cannot score a challenger in shadow"):
        Autopilot(policies.parse({"model": f"file://{tmp_path}/x", "shadow_windows": 1}), FakeJob(None, tmp_path))


def test_a_killed_autopilot_is_resumed_by_the_next_and_two_never_run_at_once(tmp_path):
    from tfos_jobs.autopilot.loop import Autopilot, Busy
    clock = Clock()
    pilot, job, registry = autopilot_for(tmp_path, clock=clock, by="first")
    job.values, job.fail = [0.8, 0.8, 0.7, 0.7], KeyboardInterrupt()      # killed inside the training
    with pytest.raises(KeyboardInterrupt):
        pilot.step()
    pilot.release()                                                       # its process is gone ...
    assert ops(pilot) == ["lease", "baseline", "retrain"]
    second = Autopilot(pilot.policy, job, clock=clock, by="second", lease_s=60)
    with pytest.raises(Busy, match="autopilot first is running"):
        second.acquire()
    clock.now += 61                                                       # ... and its heartbeat went stale
    second.acquire()
    job.fail = None
    done = second.step()
    assert done["op"] == "promoted" and job.trained == [3, 3], (done, job.trained)   # the same decision, resumed
    assert ops(pilot).count("retrain") == 1 and registry.state().alias("champion") == 2
    with pytest.raises(Busy, match="the lease was taken by second"):
        pilot.step()


def test_on_this_host_a_dead_autopilot_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys
    from tfos_jobs.autopilot.loop import Autopilot, Busy
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    clock = Clock()
    dead = f"someone@{socket.gethostname()}:{gone.pid}"
    first, job, _ = autopilot_for(tmp_path, clock=clock, by=dead)
    first.release()
    second = Autopilot(first.policy, job, clock=clock, by="next", lease_s=60)
    second.acquire()                                      # at once: no wait for the dead one's lease to expire
    try:
        with pytest.raises(Busy, match="autopilot next is running"):
            Autopilot(first.policy, job, clock=clock, by="third", lease_s=60).acquire()
    finally:
        second.release()
