"""The autopilot: a long-running driver that watches the champion's live quality, and when it falls
retrains, checks and promotes (what to watch and when to act: :mod:`.policy`; the judgements:
:mod:`.decide`; the job's part — data, training, evaluation — comes as :class:`Hooks`).

Its state is on storage, not in memory: the registry (which version is champion, since when) and the
decisions ledger ``<model>/_autopilot/`` (baselines, triggers, retrainings and how each ended, with
their numbers). A restarted autopilot reads both and goes on; a retraining it had opened is resumed
(the hooks are idempotent per decision), never opened twice: opening one is a compare-and-set on the
ledger, refused while another is open. Two autopilots on one model: the second refuses to start while
the first's lease is fresh (renewed by a heartbeat), and takes over once it has gone stale.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Callable, Protocol

import hdfs_io
from tfos_jobs.autopilot import decide
from tfos_jobs.autopilot.policy import Policy
from tfos_jobs.registry import CHALLENGER, CHAMPION, ModelRegistry
from tfos_jobs.registry.ledger import Ledger, who

log = logging.getLogger("tfos_jobs.autopilot")
FORMAT = "tfos.autopilot/1"
CLOSING = ("promoted", "rejected", "awaiting-approval", "failed")


class Hooks(Protocol):
    """What a job gives the autopilot. ``decision`` is the open retraining (its ``id`` is stable across
    restarts: use it to name the run's directories, so a resumed retraining reuses what it finished)."""

    def windows(self) -> list[dict]:
        """The stream's metrics records (:func:`tfos_jobs.streaming.pipeline.read_metrics`)."""

    def retrain(self, decision: dict) -> int:
        """Prep and train on the recent labelled rows the policy names, publishing a new version with
        ``--version auto``; the registered version."""

    def evaluate(self, decision: dict, versions: dict[str, int]) -> dict[str, float]:
        """The policy's metric of each version (by role) on the same held-out recent rows."""

    def incompatible(self, champion: int, challenger: int) -> str | None:
        """Why the challenger cannot replace the champion for the server and the stream (signature,
        encoding), or None."""

    # Optional: only a job that has it can run a policy with ``shadow_windows``.
    def shadow(self, decision: dict, versions: dict[str, int], since_ms: int) -> list[dict]:
        """Both versions (by role) on the live labelled rows whose event time is after ``since_ms``:
        one record per window of the policy's length, ``{"window_end_ms", "count", role: metric ...}``,
        oldest first (the champion's own live predictions, the challenger's made for the same rows)."""


class StreamJobHooks:
    """What a job's hooks built on its stream share: the window records ``stream-monitor`` writes to
    ``metrics_uri``, and a scratch directory per retraining under ``work_uri`` (each step of a
    retraining leaves its output there, so a resumed one skips what is done)."""
    policy: Policy
    metrics_uri: str
    work_uri: str

    def windows(self) -> list[dict]:
        from tfos_jobs.streaming import pipeline    # Spark-free, but not needed by the loop itself
        return pipeline.read_metrics(self.metrics_uri)

    def _work(self, decision: dict, *parts: str) -> str:
        return hdfs_io.join(self.work_uri, f"retrain-{decision['id']}", *parts)

    def _window_s(self) -> float:
        """The length of the policy's windows, which shadow mode judges on."""
        kind, window = self.policy.window_kind()
        if kind != "sliding":
            raise ValueError(f"shadow mode judges windows of a fixed length: the policy's window is {kind!r}")
        return float(window.split("s", 1)[0])


class Busy(RuntimeError):
    """Another autopilot holds this model's lease."""


@dataclasses.dataclass
class Decisions:
    """The decisions ledger's state."""
    seq: int = 0
    baselines: dict[str, float] = dataclasses.field(default_factory=dict)    # champion version -> live baseline
    open: dict | None = None                   # the retraining in progress
    last_closed: dict | None = None            # how the last one ended
    lease: dict | None = None                  # {"owner", "until"} (epoch seconds)

    def apply(self, event: dict) -> None:
        op = event["op"]
        if op == "lease":
            self.lease = {"owner": event["owner"], "until": event["until"]}
        elif op == "baseline":
            self.baselines[str(event["version"])] = float(event["value"])
        elif op == "retrain":
            self.open = {"id": event["seq"], "opened": event["time"], "champion": event["champion"],
                         "trigger": event["numbers"]}
        elif op in ("trained", "evaluated", "shadowing"):
            kept = ("challenger", "scores", "shadow_since_ms")
            self.open = {**(self.open or {}), **{k: v for k, v in event.items() if k in kept}}
        elif op in CLOSING:
            self.last_closed = {"id": event.get("decision"), "op": op, "time": event["time"],
                                "epoch": event["epoch"]}
            self.open = None
        self.seq = int(event["seq"])

    def to_json(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "Decisions":
        return cls(**{k: v for k, v in data.items() if k != "format"})


class Autopilot:
    """One model's autopilot. ``step()`` looks once and acts; ``run()`` steps every ``poll_s`` until
    ``stop`` is set. Every decision goes to the ledger with its numbers."""

    def __init__(self, policy: Policy, hooks: Hooks, *, lease_s: float = 300.0, clock: Callable[[], float] = time.time,
                 by: str | None = None):
        if policy.shadow_windows and not callable(getattr(hooks, "shadow", None)):
            raise ValueError(f"{policy.model}: the policy asks for shadow_windows but this job's autopilot "
                             f"({type(hooks).__name__}) cannot score a challenger in shadow yet; set it to 0")
        self.policy, self.hooks, self.clock, self.lease_s = policy, hooks, clock, lease_s
        self.me = by or who()
        self.registry = ModelRegistry(policy.model, by=f"autopilot {self.me}")
        self.ledger = Ledger(hdfs_io.join(policy.model, "_autopilot"), Decisions, Decisions.from_json, self.me)
        self.heartbeat_uri = hdfs_io.join(policy.model, "_autopilot", "heartbeat.json")
        self._beating: threading.Event | None = None

    # -- the lease ------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the model's lease, or raise :class:`Busy` while another autopilot holds it (its heartbeat
        is fresh, or its process is alive on this host); then keep the heartbeat until :meth:`release`."""
        def change(state: Decisions) -> dict:
            holder = state.lease
            if holder and holder["owner"] != self.me and self._alive(holder["owner"]):
                raise Busy(f"{self.policy.model}: autopilot {holder['owner']} is running (its heartbeat is fresh); "
                           f"stop it first, or wait {self.lease_s:g} s after it stopped")
            return {"op": "lease", "owner": self.me, "until": self.clock() + self.lease_s}
        self.ledger.append(change)
        self.beat()
        self._beating = threading.Event()
        threading.Thread(target=self._keep_beating, args=(self._beating,), daemon=True,
                         name="autopilot-heartbeat").start()

    def release(self) -> None:
        """Stop the heartbeat (the lease goes stale; the next autopilot takes over without waiting on
        this host, where it sees that the process is gone)."""
        if self._beating:
            self._beating.set()

    def _alive(self, owner: str) -> bool:
        user_host, _, pid = owner.rpartition(":")
        if user_host.rpartition("@")[2] == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
            import psutil
            if not psutil.pid_exists(int(pid)):
                return False
        return self._heartbeat_of(owner) > self.clock() - self.lease_s

    def beat(self) -> None:
        with hdfs_io.open(self.heartbeat_uri, "w") as handle:
            json.dump({"owner": self.me, "epoch": self.clock()}, handle)

    def _heartbeat_of(self, owner: str) -> float:
        try:
            beat = json.loads(hdfs_io.read_snapshot(self.heartbeat_uri))
        except FileNotFoundError:
            return 0.0
        return float(beat["epoch"]) if beat.get("owner") == owner else 0.0

    def _record(self, body: dict, check: Callable[[Decisions], None] | None = None) -> dict | None:
        """Append a decision, refused (:class:`Busy`) when another autopilot has taken the lease."""
        def change(state: Decisions) -> dict | None:
            if state.lease is None or state.lease["owner"] != self.me:
                raise Busy(f"{self.policy.model}: the lease was taken by {state.lease and state.lease['owner']}")
            if check:
                check(state)
            return {**body, "epoch": self.clock()}
        event = self.ledger.append(change)
        log.info("autopilot %s: %s", self.policy.model, json.dumps(event, sort_keys=True))
        return event

    # -- one look -------------------------------------------------------------------------------------
    def step(self) -> dict | None:
        """Look at the champion's windows once; retrain (or resume a retraining) when called for. The
        last decision made, or None."""
        self.beat()
        decisions = self.ledger.state()
        if decisions.open:
            return self._carry_on(decisions.open)
        registry = self.registry.state()
        champion = registry.alias(CHAMPION)
        if champion is None:
            return None                                 # nothing served yet: a person promotes the first
        # The champion's own windows (records are per model version), by event time: not "since its
        # promotion" in wall-clock time, which a replayed or lagging stream's event times do not follow.
        windows = decide.champion_windows(self.policy, self.hooks.windows(), str(champion), since_ms=0)
        baseline = self._baseline(decisions, registry, champion, windows)
        verdict = decide.judge(self.policy, windows, baseline)
        if not verdict.retrain:
            return None
        last = decisions.last_closed
        if last and self.clock() - last["epoch"] < self.policy.cooldown_s:
            return None

        def none_open(state: Decisions) -> None:
            if state.open:
                raise Busy(f"retraining {state.open['id']} is already open")
        opened = self._record({"op": "retrain", "champion": champion, "reason": verdict.reason,
                               "numbers": verdict.numbers}, none_open)
        return self._carry_on(self.ledger.state().open or {"id": opened["seq"], "champion": champion})

    def _baseline(self, decisions: Decisions, registry, champion: int, windows: list[dict]) -> float | None:
        if self.policy.trigger.baseline == "validation":
            return registry.versions[champion].get("metrics", {}).get(self.policy.metric.split(":", 1)[0])
        if str(champion) in decisions.baselines:
            return decisions.baselines[str(champion)]
        value = decide.live_baseline(self.policy, windows)
        if value is not None:
            self._record({"op": "baseline", "version": champion, "value": value,
                          "windows": [w["window_end_ms"] for w in windows[:self.policy.trigger.baseline_windows]]})
        return value

    def _carry_on(self, decision: dict) -> dict:
        """Take an open retraining from where it stands to its end: train, check, evaluate, promote or not."""
        try:
            return self._finish(decision)
        except Busy:
            raise
        except Exception as exc:   # noqa: BLE001 - a failed retraining is a decision too; the champion stays
            log.exception("autopilot %s: retraining %s failed", self.policy.model, decision["id"])
            return self._record({"op": "failed", "decision": decision["id"], "error": f"{type(exc).__name__}: {exc}"[:1000]})

    def _keep_beating(self, done: threading.Event) -> None:
        while not done.wait(self.lease_s / 3):
            try:
                self.beat()
            except Exception as exc:   # noqa: BLE001 - storage hiccup: the next beat may get through
                log.warning("autopilot %s: heartbeat failed: %s", self.policy.model, exc)

    def _finish(self, decision: dict) -> dict:
        champion, key = int(decision["champion"]), decision["id"]
        challenger = decision.get("challenger")
        if challenger is None:
            challenger = int(self.hooks.retrain(decision))
            self._record({"op": "trained", "decision": key, "challenger": challenger})
        why = self.hooks.incompatible(champion, challenger)
        if why:
            return self._record({"op": "rejected", "decision": key, "challenger": challenger, "reason": why})
        scores = decision.get("scores")
        if scores is None:
            scores = self.hooks.evaluate({**decision, "challenger": challenger},
                                         {CHAMPION: champion, CHALLENGER: challenger})
            self._record({"op": "evaluated", "decision": key, "scores": scores})
        verdict = decide.bless(self.policy, scores.get(CHAMPION), scores[CHALLENGER])
        outcome = {"decision": key, "champion": champion, "challenger": challenger, "reason": verdict.reason,
                   "numbers": verdict.numbers}
        if verdict.retrain and self.policy.shadow_windows:
            if decision.get("shadow_since_ms") is None:
                return self._start_shadow(decision, champion, challenger)
            verdict = decide.judge_shadow(self.policy, self.hooks.shadow(
                decision, {CHAMPION: champion, CHALLENGER: challenger}, int(decision["shadow_since_ms"])))
            if verdict is None:
                return None                               # not enough live windows yet: look again later
            outcome.update(reason=f"shadow: {verdict.reason}", numbers={**outcome["numbers"], "shadow": verdict.numbers})
        if not verdict.retrain:
            if self.policy.shadow_windows and self.registry.state().alias(CHALLENGER) == challenger:
                self.registry.unalias(CHALLENGER, reason="rejected in shadow")
            return self._record({"op": "rejected", **outcome})
        alias = CHAMPION if self.policy.approval == "auto" else CHALLENGER
        if self.registry.state().alias(alias) != challenger:        # a resumed run may have promoted already
            self.registry.promote(challenger, alias, reason=verdict.reason, extra={"decision": key})
        if alias == CHAMPION and self.policy.shadow_windows and self.registry.state().alias(CHALLENGER) == challenger:
            self.registry.unalias(CHALLENGER, reason="promoted after shadow")     # the shadow scorer has nothing to do
        return self._record({"op": "promoted" if alias == CHAMPION else "awaiting-approval", **outcome})

    def _start_shadow(self, decision: dict, champion: int, challenger: int) -> dict:
        """Point ``challenger`` at the new version so a shadow scorer may follow it, and judge it from now
        on (the newest window end the stream has written: event time, as the windows are)."""
        ends = [w["window_end_ms"] for w in decide.champion_windows(self.policy, self.hooks.windows(), str(champion),
                                                                    since_ms=0)]
        since = max(ends, default=0)
        if self.registry.state().alias(CHALLENGER) != challenger:
            self.registry.promote(challenger, CHALLENGER, reason="shadow", extra={"decision": decision["id"]})
        return self._record({"op": "shadowing", "decision": decision["id"], "challenger": challenger,
                             "shadow_since_ms": since, "windows": self.policy.shadow_windows})

    def run(self, poll_s: float, stop: threading.Event) -> None:
        """Step every ``poll_s`` until ``stop`` is set (a failed look is logged and retried); after
        :meth:`acquire`."""
        while not stop.is_set():
            try:
                self.step()
            except Busy:
                raise
            except Exception as exc:   # noqa: BLE001 - storage or metrics unreachable: look again later
                log.warning("autopilot %s: %s", self.policy.model, exc)
            stop.wait(poll_s)


def run_until_signalled(pilot: Autopilot, poll_s: float, once: bool = False) -> int:
    """The command line's loop: take the lease, then step until SIGTERM/SIGINT (the first lets the
    current step finish; a second stops at once, and the next start resumes). ``once``: one step,
    its decision printed as JSON."""
    pilot.acquire()
    try:
        if once:
            print(json.dumps({"model": pilot.policy.model, "decision": pilot.step()}, sort_keys=True), flush=True)
            return 0
        _until_signalled(pilot, poll_s)
        return 0
    finally:
        pilot.release()


def _until_signalled(pilot: Autopilot, poll_s: float) -> None:
    stop = threading.Event()

    def stop_after_this_step(signum, _frame):
        stop.set()
        signal.signal(signum, signal.SIG_DFL)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_after_this_step)
    print(json.dumps({"model": pilot.policy.model, "autopilot": pilot.me, "poll_s": poll_s}), flush=True)
    pilot.run(poll_s, stop)


def decisions(model_uri: str) -> list[dict]:
    """Every decision the autopilot of ``model_uri`` logged, oldest first."""
    return Ledger(hdfs_io.join(model_uri, "_autopilot"), Decisions, Decisions.from_json).history()
