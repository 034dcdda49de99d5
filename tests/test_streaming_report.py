"""The AUC-over-time report from a metrics sink (no Spark): series per window kind, the last value of
a window updated by later micro-batches, and a PNG written atomically."""
import pytest

from tfos_jobs.streaming import report
from tfos_jobs.streaming.pipeline import MetricsSink


def record(kind, window, end, auc, start=0, version="1"):
    return dict(window_kind=kind, window=window, model_version=version, window_start_ms=start, window_end_ms=end,
                auc=auc)


def test_series_keep_the_latest_value_of_each_window_and_split_at_the_mark(tmp_path):
    sink = MetricsSink(str(tmp_path / "metrics"), console=False)
    sink.write("stateful", 0, [record("fading", "hl", 1000, 0.80), record("tilted", "15m", 900_000, 0.9)])
    sink.write("stateful", 1, [record("fading", "hl", 2000, 0.70), record("tilted", "15m", 900_000, 0.6),
                               record("landmark", "since", 2000, None)])
    sink.write("sliding", 0, [record("sliding", "20m/10m", 1500, 0.75, start=100)])
    summary = report.plot_auc(str(tmp_path / "metrics"), str(tmp_path / "auc.png"), mark_ms=1200)
    series = report.auc_series(report.read_metrics(str(tmp_path / "metrics"), history=True))
    assert series["fading hl"] == [(1000, 0.80), (2000, 0.70)]
    assert series["tilted 15m"] == [(900_000, 0.6)]          # the slot as its last batch left it
    assert "landmark since" not in series                    # AUC undefined (one class): no point
    assert summary["fading hl"] == {"points": 2, "last_auc": 0.7, "mean_auc_before": 0.8, "mean_auc_after": 0.7}
    assert (tmp_path / "auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_sink_is_refused_with_its_uri(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        report.plot_auc(str(tmp_path / "none"), str(tmp_path / "auc.png"))
    assert not (tmp_path / "auc.png").exists()
