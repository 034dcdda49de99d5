"""The autopilot's judgements, as pure functions of the numbers (no storage, no Spark): whether the
live windows call for a retraining, and whether a challenger is blessed. Each returns its numbers so
the decisions log can say why."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfos_jobs.autopilot.policy import Policy

PSI_GROUPS = 10          # deciles of the reference, as PSI is usually computed
PSI_FLOOR = 1e-4


@dataclasses.dataclass(frozen=True)
class Verdict:
    retrain: bool
    reason: str
    numbers: dict


def metric_of(policy: Policy, record: dict) -> float | None:
    """The policy's metric in one metrics record (survey accuracy is the record's "ctr": the share of
    answers predicted right, see tfos_jobs.streaming.quality)."""
    name = policy.metric.split(":", 1)[0]
    value = record.get("ctr" if name == "accuracy" else name)
    return None if value is None or not math.isfinite(value) else float(value)


def champion_windows(policy: Policy, records: list[dict], version: str, since_ms: int) -> list[dict]:
    """The policy's windows of the champion ``version`` that ended after ``since_ms`` (its promotion)
    with enough labelled rows and a value, oldest first."""
    kind, window = policy.window_kind()
    series = policy.metric.split(":", 1)[1] if ":" in policy.metric else ""
    chosen = [r for r in records
              if r["window_kind"] == kind and r["window"] == window and str(r["model_version"]) == str(version)
              and r.get("series", "") == series and r["window_end_ms"] > since_ms
              and (r.get("count") or 0) >= policy.trigger.min_count and metric_of(policy, r) is not None]
    return sorted(chosen, key=lambda r: r["window_end_ms"])


def live_baseline(policy: Policy, windows: list[dict]) -> float | None:
    """The mean of the champion's first ``baseline_windows`` windows; None until there are that many."""
    first = windows[:policy.trigger.baseline_windows]
    if len(first) < policy.trigger.baseline_windows:
        return None
    return sum(metric_of(policy, r) for r in first) / len(first)


def psi(reference, current, groups: int = PSI_GROUPS, floor: float = PSI_FLOOR) -> float | None:
    """Population stability index of the ``current`` prediction histogram against the ``reference`` one
    (:func:`tfos_jobs.streaming.quality.histogram`): sum of (c - r) * ln(c / r) over the shares of
    ``groups`` bins that each hold about the same share of the reference (its quantiles: equal-width bins
    would put most CTR predictions in two or three of them). Shares are floored at ``floor`` so that an
    empty bin costs a bounded amount. None while either histogram is empty."""
    r, c = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if r.shape != c.shape or r.sum() <= 0 or c.sum() <= 0:
        return None
    # fine bin i joins the group its reference mass up to i falls in: quantile groups of the reference
    cumulative = (np.cumsum(r) - r / 2) / r.sum()
    group = np.minimum((cumulative * groups).astype(np.int64), groups - 1)
    rs, cs = np.zeros(groups), np.zeros(groups)
    np.add.at(rs, group, r)
    np.add.at(cs, group, c)
    used = rs > 0
    rs, cs = np.maximum(rs[used] / r.sum(), floor), np.maximum(cs[used] / c.sum(), floor)
    return float(np.sum((cs - rs) * np.log(cs / rs)))


def judge(policy: Policy, windows: list[dict], baseline: float | None) -> Verdict:
    """Retrain when each of the last ``consecutive`` windows (after those the live baseline was taken
    from) is worse than ``baseline`` by more than ``drop``, or (with ``trigger.psi``) when the prediction
    distribution of each of them drifted from the baseline windows' by a PSI above ``psi``: a drift is
    seen before labels arrive to show the loss it causes, or where they never do."""
    t = policy.trigger
    if baseline is None:
        return Verdict(False, f"no baseline yet ({len(windows)} of {t.baseline_windows} windows)",
                       {"windows": len(windows)})
    judged = windows[t.baseline_windows:] if t.baseline == "live" else windows
    recent = judged[-t.consecutive:]
    values = [metric_of(policy, r) for r in recent]
    worse = [not policy.better(v, baseline, -t.drop) for v in values]   # v is worse than baseline - drop
    numbers = {"baseline": baseline, "drop": t.drop, "recent": values,
               "recent_end_ms": [r["window_end_ms"] for r in recent], "windows": len(windows)}
    full = len(recent) == t.consecutive
    if full and all(worse):
        return Verdict(True, f"{policy.metric} below the baseline {baseline:.4f} by more than {t.drop} in "
                             f"{t.consecutive} consecutive windows", numbers)
    reason = f"{sum(worse)} of the last {len(recent)} windows below the baseline by more than {t.drop}"
    if t.psi is not None:
        # records written before windows carried a histogram have none: no PSI for them, not an error
        kept = [r["prediction_histogram"] for r in windows[:t.baseline_windows] if r.get("prediction_histogram")]
        reference = np.sum(kept, axis=0) if kept else []
        drifts = [psi(reference, r.get("prediction_histogram") or []) for r in recent]
        numbers.update(psi=drifts, psi_threshold=t.psi)
        drifted = [d is not None and d > t.psi for d in drifts]
        if full and all(drifted):
            return Verdict(True, f"prediction drift: PSI above {t.psi} in {t.consecutive} consecutive windows "
                                 f"({', '.join(f'{d:.3f}' for d in drifts)})", numbers)
        reason += f"; {sum(drifted)} with a PSI above {t.psi}"
    return Verdict(False, reason, numbers)


def bless(policy: Policy, champion: float | None, challenger: float) -> Verdict:
    """The challenger is blessed when it is at least the floor and better than the champion (scored on the
    same held-out rows) by at least ``min_change``."""
    b = policy.blessing
    numbers = {"champion": champion, "challenger": challenger, "floor": b.floor, "min_change": b.min_change}
    if not math.isfinite(challenger):
        return Verdict(False, f"the challenger's {policy.metric} is {challenger}", numbers)
    if b.floor is not None and not policy.better(challenger, b.floor):
        return Verdict(False, f"the challenger's {policy.metric} {challenger:.4f} does not reach the floor {b.floor}",
                       numbers)
    if champion is not None and not policy.better(challenger, champion, b.min_change):
        return Verdict(False, f"the challenger's {policy.metric} {challenger:.4f} is not better than the champion's "
                              f"{champion:.4f} by {b.min_change}", numbers)
    return Verdict(True, f"blessed: {policy.metric} {challenger:.4f} against the champion's "
                         f"{'none' if champion is None else f'{champion:.4f}'}", numbers)


def judge_shadow(policy: Policy, windows: list[dict]) -> Verdict | None:
    """The challenger scored in shadow beside the champion on the same live rows: over the first
    ``shadow_windows`` windows with at least ``min_count`` rows, its mean metric must be better than the
    champion's by ``min_change`` (and reach the floor). None until there are that many windows."""
    from tfos_jobs.registry import CHALLENGER, CHAMPION
    counted = [w for w in windows if (w.get("count") or 0) >= policy.trigger.min_count
               and all(w.get(role) is not None and math.isfinite(w[role]) for role in (CHAMPION, CHALLENGER))]
    if len(counted) < policy.shadow_windows:
        return None
    used = counted[:policy.shadow_windows]
    weight = sum(w["count"] for w in used)
    mean = {role: sum(w[role] * w["count"] for w in used) / weight for role in (CHAMPION, CHALLENGER)}
    verdict = bless(policy, mean[CHAMPION], mean[CHALLENGER])
    numbers = {**verdict.numbers, "windows": [w["window_end_ms"] for w in used], "rows": weight}
    return Verdict(verdict.retrain, f"{verdict.reason} (live, {len(used)} windows, {int(weight)} rows)", numbers)
