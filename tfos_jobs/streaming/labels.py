"""Late labels meet their predictions: the state of the labeling query (one bucket of ids).

A prediction is written once, when its label window is closed: when the watermark has passed
``event_time + max_delay``, with the first label that came for its id in ``[event_time, event_time +
max_delay]``, or, with none, as a negative (``unmatched="negative"``) or not at all (``"drop"``).
Writing matched and unmatched predictions at the same point keeps every window's sample unbiased:
a click is known minutes before the absence of one, and a join that wrote matches at once would
make recent windows look full of clicks.

A label may come before its prediction (scoring takes time): it waits in the state until the
watermark passes its time. State is both tables as Arrow IPC bytes (no pickle), bounded by what is
younger than the watermark plus ``max_delay``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

PENDING = ("id", "event_ms", "prediction", "model_version")
LABELS = ("id", "label_ms", "label")


def _to_bytes(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_bytes(data: bytes) -> pd.DataFrame:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pandas()


def _append(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    if not len(rows):
        return frame
    rows = rows.astype(frame.dtypes.to_dict())
    return rows.reset_index(drop=True) if not len(frame) else pd.concat([frame, rows], ignore_index=True)


class LabelBuffer:
    """Pending predictions and early labels of one bucket of ids."""

    def __init__(self, max_delay_ms: int, unmatched: str = "negative",
                 pending: pd.DataFrame | None = None, labels: pd.DataFrame | None = None):
        if unmatched not in ("negative", "drop"):
            raise ValueError(f"unmatched must be 'negative' or 'drop', got {unmatched!r}")
        self.max_delay_ms, self.unmatched = int(max_delay_ms), unmatched
        self.pending = pending if pending is not None else pd.DataFrame(
            {"id": pd.Series(dtype=object), "event_ms": pd.Series(dtype="int64"),
             "prediction": pd.Series(dtype="float32"), "model_version": pd.Series(dtype=object)})
        self.labels = labels if labels is not None else pd.DataFrame(
            {"id": pd.Series(dtype=object), "label_ms": pd.Series(dtype="int64"), "label": pd.Series(dtype="float32")})

    def add(self, predictions: pd.DataFrame, labels: pd.DataFrame) -> None:
        self.pending = _append(self.pending, predictions[list(PENDING)])
        self.labels = _append(self.labels, labels[list(LABELS)])

    def release(self, watermark_ms: int) -> pd.DataFrame:
        """The predictions whose label window closed before ``watermark_ms``, labeled
        (``label``, ``label_ms``: null when none came); they leave the state, and so do labels
        older than the watermark that no pending prediction can use (a prediction still to come
        that they could match would be late data itself)."""
        closed = (self.pending["event_ms"] + self.max_delay_ms) < watermark_ms
        done, self.pending = self.pending[closed], self.pending[~closed].reset_index(drop=True)
        if len(done):
            merged = done.merge(self.labels, on="id", how="left")
            fits = merged["label_ms"].between(merged["event_ms"], merged["event_ms"] + self.max_delay_ms)
            merged.loc[~fits, ["label_ms", "label"]] = np.nan
            # the first fitting label per prediction (a second click on the same impression is no new label)
            merged = merged.sort_values(["label_ms"], na_position="last", kind="stable")
            done = merged.drop_duplicates(subset=["id", "event_ms"], keep="first")
            if self.unmatched == "drop":
                done = done[done["label"].notna()]
            done = done.assign(label=done["label"].fillna(0.0).astype("float32"))
        keep = (self.labels["label_ms"] >= watermark_ms) | self.labels["id"].isin(self.pending["id"])
        self.labels = self.labels[keep].reset_index(drop=True)
        return done.reset_index(drop=True)

    def next_timeout_ms(self, watermark_ms: int) -> int | None:
        """When this bucket next has something to release or drop (None: empty state)."""
        times = []
        if len(self.pending):
            times.append(int(self.pending["event_ms"].min()) + self.max_delay_ms)
        if len(self.labels):
            times.append(int(self.labels["label_ms"].min()))
        return max(min(times), watermark_ms) + 1 if times else None

    def dumps(self) -> tuple[bytes, bytes]:
        return _to_bytes(self.pending), _to_bytes(self.labels)

    @classmethod
    def loads(cls, max_delay_ms: int, unmatched: str, pending: bytes, labels: bytes) -> "LabelBuffer":
        return cls(max_delay_ms, unmatched, _from_bytes(pending), _from_bytes(labels))
