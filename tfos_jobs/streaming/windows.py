"""Window kinds whose state Spark cannot keep natively: landmark, fading and tilted-time.

Each keeps :mod:`quality` sketches, so its state is a fixed number of floats whatever the number of
rows (sliding windows are Spark's own ``window()`` aggregation, see :mod:`tfos_jobs.streaming.monitor`).
All updates are order-independent, so rows of a micro-batch, and rows that arrive late, count the same
as in a batch computation over the same rows:

* **landmark**: everything since the first row of the key (a model version and a series, such as a
  survey question: a new version starts a new landmark);
* **fading**: every row weighted ``0.5 ** (age / half_life)``, its age measured from the latest event
  time seen; one sketch and one timestamp;
* **tilted-time**: recent history at fine granularity, older history at coarser: per level
  ``(name, seconds, keep)`` the last ``keep`` aligned slots of ``seconds`` (calendar tilting, e.g. 4
  quarter-hours, 24 hours, 31 days; logarithmic tilting is levels of doubling length keeping 2 each).
  A row older than a level's retention is left out of that level only.

State is serialized as a JSON header and the raw float64 sketches (no pickle): :meth:`WindowSet.dumps`.
Times are epoch milliseconds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from tfos_jobs.streaming import quality

CALENDAR = (("15m", 15 * 60, 4), ("1h", 3600, 24), ("1d", 86400, 31))


def logarithmic(unit_s: int, levels: int, keep: int = 2) -> tuple:
    """Tilted-time levels of doubling length: ``unit``, ``2 unit``, ``4 unit``, ... each keeping ``keep``."""
    return tuple((f"{unit_s << k}s", unit_s << k, keep) for k in range(levels))


@dataclass
class WindowSpec:
    """Which stateful windows to keep (sliding windows are configured on the query)."""
    half_life_s: float = 3600.0
    tilted: tuple = CALENDAR
    bins: int = quality.DEFAULT_BINS

    def __post_init__(self):
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s must be positive, got {self.half_life_s}")
        for name, seconds, keep in self.tilted:
            if seconds <= 0 or keep < 1:
                raise ValueError(f"tilted level {name!r}: seconds and keep must be positive")


@dataclass
class WindowSet:
    """The landmark, fading and tilted-time state of one key."""
    spec: WindowSpec
    first_ms: int | None = None
    latest_ms: int | None = None
    landmark: np.ndarray | None = None
    fading: np.ndarray | None = None
    slots: dict = field(default_factory=dict)    # (level name, slot start ms) -> sketch
    late_rows: int = 0                           # rows left out of a tilted level (too old)

    def __post_init__(self):
        bins = self.spec.bins
        self.landmark = quality.empty(bins) if self.landmark is None else self.landmark
        self.fading = quality.empty(bins) if self.fading is None else self.fading

    def update(self, times_ms, labels, predictions, losses=None) -> None:
        t = np.asarray(times_ms, dtype=np.int64)
        if not len(t):
            return
        y, p, bins = np.asarray(labels), np.asarray(predictions), self.spec.bins
        loss = quality.row_loss(y, p) if losses is None else np.asarray(losses, dtype=np.float64)
        newest = int(t.max())
        latest = newest if self.latest_ms is None else max(self.latest_ms, newest)
        self.first_ms = int(t.min()) if self.first_ms is None else min(self.first_ms, int(t.min()))
        self.landmark += quality.sketch(y, p, bins=bins, losses=loss)
        half_life_ms = self.spec.half_life_s * 1000.0
        if self.latest_ms is not None:
            self.fading *= 0.5 ** ((latest - self.latest_ms) / half_life_ms)
        self.fading += quality.sketch(y, p, weights=0.5 ** ((latest - t) / half_life_ms), bins=bins,
                                       losses=loss)
        self.latest_ms = latest
        for name, seconds, keep in self.spec.tilted:
            size = seconds * 1000
            oldest = (latest // size - keep + 1) * size
            starts = (t // size) * size
            inside = starts >= oldest
            self.late_rows += int((~inside).sum())
            for start in np.unique(starts[inside]):
                rows = starts == start
                key = (name, int(start))
                rows_sketch = quality.sketch(y[rows], p[rows], bins=bins, losses=loss[rows])
                self.slots[key] = self.slots.get(key, quality.empty(bins)) + rows_sketch
            for key in [k for k in self.slots if k[0] == name and k[1] < oldest]:
                del self.slots[key]

    def records(self) -> list[dict]:
        """One metrics record per window: landmark, fading and every retained tilted slot."""
        if self.latest_ms is None:
            return []
        out = [dict(window_kind="landmark", window="since first row", window_start_ms=self.first_ms,
                    window_end_ms=self.latest_ms, **quality.summary(self.landmark)),
               dict(window_kind="fading", window=f"half-life {self.spec.half_life_s:g}s",
                    window_start_ms=self.first_ms, window_end_ms=self.latest_ms, **quality.summary(self.fading))]
        sizes = {name: seconds * 1000 for name, seconds, _ in self.spec.tilted}
        for (name, start), s in sorted(self.slots.items(), key=lambda kv: (sizes[kv[0][0]], kv[0][1])):
            out.append(dict(window_kind="tilted", window=name, window_start_ms=start,
                            window_end_ms=start + sizes[name], **quality.summary(s)))
        return out

    # ------------------------------------------------------------------ state as (str, bytes)
    def dumps(self) -> tuple[str, bytes]:
        keys = sorted(self.slots)
        header = {"first_ms": self.first_ms, "latest_ms": self.latest_ms, "late_rows": self.late_rows,
                  "slots": [list(k) for k in keys], "bins": self.spec.bins}
        arrays = [self.landmark, self.fading] + [self.slots[k] for k in keys]
        return json.dumps(header), np.concatenate([a.ravel() for a in arrays]).astype("<f8").tobytes()

    @classmethod
    def loads(cls, spec: WindowSpec, header: str, data: bytes) -> "WindowSet":
        meta = json.loads(header)
        if meta["bins"] != spec.bins:
            raise ValueError(f"window state has {meta['bins']} bins, the query {spec.bins}: use a new checkpoint")
        sketches = np.frombuffer(data, dtype="<f8").reshape(-1, spec.bins, 4).copy()
        slots = {(name, int(start)): sketches[2 + i] for i, (name, start) in enumerate(meta["slots"])}
        return cls(spec, meta["first_ms"], meta["latest_ms"], sketches[0], sketches[1], slots, meta["late_rows"])
