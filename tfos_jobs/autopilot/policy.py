"""The retraining policy of one model: a YAML file, checked whole before anything runs.

```yaml
model: hdfs://nn:8020/registry/ctr        # the registered model (tfos_jobs.registry)
metric: auc                               # auc | log_loss | accuracy (survey: accuracy:<question>)
window: sliding 3600s every 900s          # a window the stream writes (tfos_jobs.streaming)
trigger:
  baseline: live                          # live: the champion's first `baseline_windows` windows; or validation
  baseline_windows: 3
  drop: 0.02                              # worse than the baseline by more than this ...
  consecutive: 3                          # ... in this many consecutive windows
  min_count: 500                          # windows with fewer labelled rows do not count
  psi: 0.25                               # or: prediction drift, PSI above this in as many windows (default null: off)
retrain:
  last_rows: 200000                       # the newest labelled rows (or last_s: seconds of them)
  holdout_fraction: 0.2                   # held out of them to judge champion and challenger alike
cooldown_s: 3600                          # after a retraining, none before this
blessing:
  floor: 0.70                             # the challenger's metric on the held-out rows: at least this
  min_change: 0.0                         # and better than the champion's by at least this
shadow_windows: 0                         # > 0: after the blessing, point `challenger` at it and judge it
                                          # beside the champion on this many live windows before promoting
approval: auto                            # auto | manual (stop before promoting; a person promotes)
```

Values for "better" follow the metric: AUC and accuracy are better higher, log loss lower; ``drop``
and ``min_change`` are always "in the better direction".
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import hdfs_io

METRICS = {"auc": +1, "log_loss": -1, "accuracy": +1}      # +1: higher is better
WINDOW_PATTERN = r"(sliding (\d+(\.\d+)?)s every (\d+(\.\d+)?)s|landmark|fading|tilted .+)"


class PolicyError(ValueError):
    """A policy file that cannot be used: the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Trigger:
    baseline: str = "live"
    baseline_windows: int = 3
    drop: float = 0.02
    consecutive: int = 3
    min_count: int = 500
    psi: float | None = None


@dataclasses.dataclass(frozen=True)
class Retrain:
    last_rows: int | None = 200_000
    last_s: float | None = None
    holdout_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class Blessing:
    floor: float | None = None
    min_change: float = 0.0


@dataclasses.dataclass(frozen=True)
class Policy:
    model: str
    metric: str = "auc"
    window: str = "sliding 3600s every 900s"
    trigger: Trigger = Trigger()
    retrain: Retrain = Retrain()
    cooldown_s: float = 3600.0
    blessing: Blessing = Blessing()
    shadow_windows: int = 0
    approval: str = "auto"

    @property
    def direction(self) -> int:
        """+1 when a higher metric is better."""
        return METRICS[self.metric.split(":", 1)[0]]

    def better(self, a: float, b: float, by: float = 0.0) -> bool:
        """``a`` is better than ``b`` by at least ``by`` (in the metric's direction)."""
        return self.direction * (a - b) >= by

    def window_kind(self) -> tuple[str, str]:
        """``(window_kind, window)`` as the stream's metrics records name them."""
        kind, _, rest = self.window.partition(" ")
        if kind == "sliding":
            length, slide = re.findall(r"(\d+(?:\.\d+)?)s", rest)
            return "sliding", f"{float(length):g}s every {float(slide):g}s"
        return kind, rest


def load(uri: str) -> Policy:
    """Read and check a policy file (YAML) from any storage URI."""
    import yaml
    try:
        with hdfs_io.open(uri, "r") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{uri}: not YAML: {str(exc).splitlines()[0]}") from None
    return parse(raw, uri)


def parse(raw: Any, source: str = "policy") -> Policy:
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: expected a mapping of settings, got {type(raw).__name__}")
    sections = {"trigger": Trigger, "retrain": Retrain, "blessing": Blessing}
    known = {f.name for f in dataclasses.fields(Policy)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {}
    for key, value in raw.items():
        if key in sections:
            values[key] = _section(sections[key], value or {}, f"{source}: {key}")
        else:
            values[key] = value
    if "model" not in values or not isinstance(values["model"], str) or not values["model"]:
        raise PolicyError(f"{source}: model: the registered model's URI is required")
    policy = Policy(**values)
    _check(policy, source)
    return policy


def _section(cls, value: Any, where: str):
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected a mapping, got {value!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**value)


def _number(value: Any, where: str, low: float | None = None, high: float | None = None, integer: bool = False,
            optional: bool = False) -> None:
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise PolicyError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        wanted = f"in [{low}, {high}]" if high is not None else f"at least {low}"
        raise PolicyError(f"{where}: must be {wanted}, got {value!r}")


def _check(p: Policy, source: str) -> None:
    name = p.metric.split(":", 1)[0] if isinstance(p.metric, str) else None
    if name not in METRICS or (name == "accuracy") != (":" in p.metric):
        raise PolicyError(f"{source}: metric: one of auc, log_loss, accuracy:<question>; got {p.metric!r}")
    if not isinstance(p.window, str) or not re.fullmatch(WINDOW_PATTERN, p.window):
        raise PolicyError(f"{source}: window: 'sliding <L>s every <S>s', 'landmark', 'fading' or 'tilted <level>'; "
                          f"got {p.window!r}")
    t, r, b = p.trigger, p.retrain, p.blessing
    if t.baseline not in ("live", "validation"):
        raise PolicyError(f"{source}: trigger: baseline: live or validation, got {t.baseline!r}")
    _number(t.baseline_windows, f"{source}: trigger: baseline_windows", 1, integer=True)
    _number(t.drop, f"{source}: trigger: drop", 0)
    _number(t.consecutive, f"{source}: trigger: consecutive", 1, integer=True)
    _number(t.min_count, f"{source}: trigger: min_count", 1, integer=True)
    _number(t.psi, f"{source}: trigger: psi", 0, optional=True)
    if (r.last_rows is None) == (r.last_s is None):
        raise PolicyError(f"{source}: retrain: give one of last_rows and last_s")
    _number(r.last_rows, f"{source}: retrain: last_rows", 100, integer=True, optional=True)
    _number(r.last_s, f"{source}: retrain: last_s", 1, optional=True)
    _number(r.holdout_fraction, f"{source}: retrain: holdout_fraction", 0.01, 0.9)
    _number(p.cooldown_s, f"{source}: cooldown_s", 0)
    _number(b.floor, f"{source}: blessing: floor", optional=True)
    _number(b.min_change, f"{source}: blessing: min_change")
    _number(p.shadow_windows, f"{source}: shadow_windows", 0, integer=True)
    if p.approval not in ("auto", "manual"):
        raise PolicyError(f"{source}: approval: auto or manual, got {p.approval!r}")
