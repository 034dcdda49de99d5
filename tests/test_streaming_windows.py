"""The window state of the streaming monitor, against batch computations over the same rows."""
import numpy as np
import pytest

from tfos_jobs import metrics
from tfos_jobs.streaming import quality
from tfos_jobs.streaming.windows import CALENDAR, WindowSet, WindowSpec, logarithmic


def rows(n, seed=0, start_ms=1_700_000_000_000, span_s=3 * 86400):
    rng = np.random.default_rng(seed)
    t = start_ms + rng.integers(0, span_s * 1000, n)
    p = rng.beta(2, 5, n)
    y = (rng.random(n) < p).astype(np.int8)
    return t, y, p


def test_sketch_figures_match_exact_metrics_within_the_stated_bound():
    t, y, p = rows(20_000)
    s = quality.summary(quality.sketch(y, p))
    exact = metrics.auc(y, p)
    assert s["count"] == 20_000 and s["positives"] == y.sum()
    assert s["log_loss"] == pytest.approx(metrics.log_loss(y, p), rel=1e-9)
    assert s["mean_prediction"] == pytest.approx(p.mean(), rel=1e-12)
    assert 0 < s["auc_error_bound"] < 0.01
    assert abs(s["auc"] - exact) <= s["auc_error_bound"], (s["auc"], exact, s["auc_error_bound"])
    # a model that predicts the click rate well is calibrated
    assert s["calibration_error"] < 0.02 and s["calibration_ratio"] == pytest.approx(1.0, abs=0.05)


def test_auc_of_one_class_is_none():
    s = quality.summary(quality.sketch(np.ones(5), np.full(5, 0.3)))
    assert s["auc"] is None and s["ctr"] == 1.0


def batch_reference(t, y, p, spec):
    """Every stateful window computed from all rows at once, by hand."""
    latest = t.max()
    out = {("landmark", "since first row"): quality.summary(quality.sketch(y, p, bins=spec.bins))}
    w = 0.5 ** ((latest - t) / (spec.half_life_s * 1000))
    out[("fading", f"half-life {spec.half_life_s:g}s")] = quality.summary(quality.sketch(y, p, w, bins=spec.bins))
    for name, seconds, keep in spec.tilted:
        size = seconds * 1000
        starts = t // size * size
        for start in range(int((latest // size - keep + 1) * size), int(latest) + 1, size):
            sel = starts == start
            if sel.any():
                out[(name, start)] = quality.summary(quality.sketch(y[sel], p[sel], bins=spec.bins))
    return out


def as_map(records):
    out = {}
    for r in records:
        key = (r["window_kind"], r["window"]) if r["window_kind"] != "tilted" else (r["window"], r["window_start_ms"])
        out[key] = {k: v for k, v in r.items() if k not in ("window_kind", "window", "window_start_ms", "window_end_ms")}
    return out


@pytest.mark.parametrize("tilted", [CALENDAR, logarithmic(600, 5)])
def test_micro_batches_in_any_order_give_the_batch_figures(tilted):
    spec = WindowSpec(half_life_s=7200, tilted=tilted)
    t, y, p = rows(30_000, seed=1)
    windows = WindowSet(spec)
    order = np.random.default_rng(2).permutation(len(t))    # late and early rows mixed
    for chunk in np.array_split(order, 17):
        header, data = windows.dumps()                      # state goes through its serialized form
        windows = WindowSet.loads(spec, header, data)
        windows.update(t[chunk], y[chunk], p[chunk])
    got, want = as_map(windows.records()), batch_reference(t, y, p, spec)
    assert set(got) == set(want)
    for key, figures in want.items():
        for name, value in figures.items():
            assert got[key][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, name)


def test_state_size_does_not_grow_with_rows():
    spec = WindowSpec()
    windows, sizes = WindowSet(spec), []
    start = 1_700_000_000_000
    for day in range(40):     # 40 days of rows, 10k a day
        t, y, p = rows(10_000, seed=day, start_ms=start + day * 86_400_000, span_s=86400)
        windows.update(t, y, p)
        sizes.append(len(windows.dumps()[1]))
    assert sizes[-1] == sizes[-5] and max(sizes) == sizes[-1], sizes
    # landmark + fading + 4 + 24 + 31 slots, each 4 x 256 float64
    assert sizes[-1] == (2 + 4 + 24 + 31) * spec.bins * 4 * 8


def test_bad_specs_and_state_are_refused():
    with pytest.raises(ValueError, match="half_life_s"):
        WindowSpec(half_life_s=0)
    with pytest.raises(ValueError, match="tilted level"):
        WindowSpec(tilted=(("x", 0, 3),))
    header, data = WindowSet(WindowSpec(bins=128)).dumps()
    with pytest.raises(ValueError, match="bins"):
        WindowSet.loads(WindowSpec(bins=256), header, data)
