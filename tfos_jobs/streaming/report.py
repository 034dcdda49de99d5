"""The model's AUC over time in every window kind, from a metrics sink: one figure and its numbers.

Series (x: the window's end, y: AUC): each sliding window as it closes; landmark and fading as they
stood after every micro-batch; each tilted-time level's slots. ``mark_ms`` (a known drift, a new
model) splits each series into before and after, which is what an operator reads off the plot.
"""
from __future__ import annotations

from typing import Any

import hdfs_io
from tfos_jobs.streaming.pipeline import read_metrics


def auc_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``{series name: [(window end ms, auc), ...]}`` from :func:`read_metrics` (``history=True``)
    records; windows without both classes (AUC undefined) are left out."""
    versions = {r["model_version"] for r in records}
    latest: dict[tuple[str, int], float] = {}    # a window updated by later batches: its last value
    for r in sorted(records, key=lambda r: (r["window_end_ms"], r["batch_id"])):
        name = (f"{r['series']} " if r.get("series") else "") + f"{r['window_kind']} {r['window']}" + (
            f" (model {r['model_version']})" if len(versions) > 1 else "")
        latest[(name, int(r["window_end_ms"]))] = r.get("auc")
    series: dict[str, list[tuple[int, float]]] = {}
    for (name, end), auc in sorted(latest.items(), key=lambda kv: kv[0][1]):
        if auc is not None:
            series.setdefault(name, []).append((end, float(auc)))
    return series


def summarize(series: dict[str, list[tuple[int, float]]], mark_ms: int | None = None) -> dict[str, dict]:
    """Per series: points, last AUC and, with ``mark_ms``, the mean AUC of the windows that ended
    before it and of those that started after it was in their past (ended after it)."""
    out = {}
    for name, points in series.items():
        entry: dict[str, Any] = {"points": len(points), "last_auc": round(points[-1][1], 4)}
        if mark_ms is not None:
            before = [a for t, a in points if t <= mark_ms]
            after = [a for t, a in points if t > mark_ms]
            entry["mean_auc_before"] = round(sum(before) / len(before), 4) if before else None
            entry["mean_auc_after"] = round(sum(after) / len(after), 4) if after else None
        out[name] = entry
    return out


def plot_auc(metrics_uri: str, out_uri: str, mark_ms: int | None = None, title: str = "AUC per window") -> dict:
    """Write a PNG of every series' AUC over time to ``out_uri`` (any storage URI); return
    :func:`summarize` of the same series."""
    import io

    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the AUC plot needs matplotlib: pip install 'tfos-jobs[notebooks]'") from None
    matplotlib.use("Agg")      # headless: the driver of a job has no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    series = auc_series(read_metrics(metrics_uri, history=True))
    if not series:
        raise ValueError(f"no window with both clicks and non-clicks under {metrics_uri}: nothing to plot")

    def when(ms):
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    # A coarse tilted-time slot still open ends in the future (midnight for "1d"): draw it at the
    # newest end the finer series reached, not hours to the right of the data.
    ends = [t for points in series.values() if len(points) > 1 for t, _ in points]
    horizon = max(ends) if ends else max(t for points in series.values() for t, _ in points)
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, points in series.items():
        style = "o" if len(points) < 3 else "-"
        ax.plot([when(min(t, horizon)) for t, _ in points], [a for _, a in points], style, label=name,
                markersize=4)
    if mark_ms is not None:
        ax.axvline(when(mark_ms), color="black", linestyle="--", label="drift")
    ax.set_xlabel("window end (UTC)")
    ax.set_ylabel("AUC")
    ax.set_title(title)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    with hdfs_io.open(out_uri, "wb") as handle:     # atomic: a reader never sees half a PNG
        handle.write(buffer.getvalue())
    return summarize(series, mark_ms)
