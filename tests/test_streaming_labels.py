"""The labeling state: every prediction written once, when its label window closed, with its label."""
import numpy as np
import pandas as pd
import pytest

from tfos_jobs.streaming.labels import LabelBuffer

DELAY = 1000


def preds(ids, times):
    return pd.DataFrame({"id": ids, "event_ms": np.asarray(times, dtype=np.int64),
                         "prediction": np.full(len(ids), 0.5, dtype=np.float32), "model_version": "3"})


def labels(ids, times):
    return pd.DataFrame({"id": ids, "label_ms": np.asarray(times, dtype=np.int64),
                         "label": np.ones(len(ids), dtype=np.float32)})


NONE = labels([], [])


def through_state(buffer, unmatched="negative"):
    return LabelBuffer.loads(DELAY, unmatched, *buffer.dumps())


def test_a_prediction_waits_for_its_window_then_gets_its_label():
    b = LabelBuffer(DELAY)
    b.add(preds(["a", "b", "c"], [0, 100, 5000]), labels(["a"], [500]))
    assert b.release(watermark_ms=900).empty           # a's window is still open: not even a click is written
    b = through_state(b)
    b.add(preds([], []), labels(["b", "b"], [1050, 300]))   # b's second click counts once
    out = b.release(watermark_ms=1200)
    assert out.set_index("id")["label"].to_dict() == {"a": 1.0, "b": 1.0}
    assert out.set_index("id")["label_ms"].to_dict() == {"a": 500, "b": 300}
    out = b.release(watermark_ms=6001)
    assert out["id"].tolist() == ["c"] and out["label"].tolist() == [0.0] and np.isnan(out["label_ms"][0])
    assert b.next_timeout_ms(6001) is None              # nothing left: the state is removed


def test_labels_outside_the_window_do_not_count_and_early_labels_wait():
    b = LabelBuffer(DELAY)
    b.add(preds([], []), labels(["x", "y"], [2500, 9000]))  # clicks logged before the predictions came
    b.add(preds(["x", "y"], [2000, 1000]), NONE)           # y's click is 8 s after it: too late to count
    out = b.release(watermark_ms=3100).set_index("id")
    assert out["label"].to_dict() == {"x": 1.0, "y": 0.0}
    assert len(b.labels) == 1 and b.next_timeout_ms(3100) == 9001   # y's click waits for the watermark


def test_unmatched_predictions_can_be_dropped():
    b = LabelBuffer(DELAY, unmatched="drop")
    b.add(preds(["a", "b"], [0, 0]), labels(["a"], [10]))
    assert b.release(watermark_ms=2000)["id"].tolist() == ["a"]
    with pytest.raises(ValueError, match="unmatched"):
        LabelBuffer(DELAY, unmatched="maybe")


def test_any_arrival_order_gives_the_batch_join():
    rng = np.random.default_rng(0)
    n = 2000
    ids = [f"i{k}" for k in range(n)]
    t = np.sort(rng.integers(0, 100_000, n))
    clicked = rng.random(n) < 0.3
    click_t = t + rng.integers(0, 2 * DELAY, n)             # half of the clicks come too late
    expected = {i: float(c and ct - tt <= DELAY) for i, c, ct, tt in zip(ids, clicked, click_t, t)}
    events = [("p", k) for k in range(n)] + [("l", k) for k in np.flatnonzero(clicked)]
    order = rng.permutation(len(events))
    b, got = LabelBuffer(DELAY), {}
    for chunk in np.array_split(order, 40):
        p = [events[i][1] for i in chunk if events[i][0] == "p"]
        lab = [events[i][1] for i in chunk if events[i][0] == "l"]
        b.add(preds([ids[k] for k in p], t[p]), labels([ids[k] for k in lab], click_t[lab]))
        b = through_state(b)
    out = b.release(watermark_ms=10**9)
    got = dict(zip(out["id"], out["label"]))
    assert len(out) == n and got == expected
