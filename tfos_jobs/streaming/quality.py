"""A window's quality summary: a fixed-size, mergeable sketch of (prediction, label) pairs.

A row is a binary outcome and a probability: a click and its predicted CTR, or, for a survey
question, whether the answer given was the predicted one and the predicted answer's probability (then
the "ctr" figures read as accuracy and mean confidence, the AUC as how well the confidence tells right
from wrong, the calibration as top-answer calibration, and the log loss is the multi-class one).

One sketch layout serves every window kind (sliding, landmark, fading, tilted-time), the batch
reference the tests compare against, and whoever reads the metrics later:

``sketch[b] = (positive weight, negative weight, sum of weight * prediction, sum of weight * log loss)``
for the ``bins`` equal-width prediction bins ``b`` of [0, 1]. Merging two windows adds their sketches,
fading multiplies one by a decay factor: state stays ``4 * bins`` floats whatever the number of rows.

From a sketch: count, positives, CTR, mean prediction and log loss are exact (sums); AUC is exact on
the binned predictions, and differs from the AUC of the raw predictions only by the order of pairs
that share a bin, so ``auc_error_bound`` = half the share of positive-negative pairs in the same bin
(computed per window, typically < 0.005 with 256 bins); calibration compares the mean prediction with
the observed rate in ``CALIBRATION_BINS`` coarse bins. ``prediction_histogram`` is the weight of rows in
``HISTOGRAM_BINS`` equal-width prediction bins: the distribution a drift trigger compares between windows
(:func:`tfos_jobs.autopilot.decide.psi`).
"""
from __future__ import annotations

import numpy as np

DEFAULT_BINS = 256
CALIBRATION_BINS = 10
HISTOGRAM_BINS = 64
EPS = 1e-7
POS, NEG, PRED, LOSS = range(4)


def empty(bins: int = DEFAULT_BINS) -> np.ndarray:
    return np.zeros((bins, 4), dtype=np.float64)


def bin_of(predictions, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The bin index of each prediction (0 .. bins-1)."""
    p = np.asarray(predictions, dtype=np.float64)
    return np.clip((p * bins).astype(np.int64), 0, bins - 1)


def row_loss(labels, predictions) -> np.ndarray:
    p = np.clip(np.asarray(predictions, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def sketch(labels, predictions, weights=None, bins: int = DEFAULT_BINS, losses=None) -> np.ndarray:
    """The sketch of some (label, prediction[, weight]) rows; labels are 0/1. ``losses``: each row's
    own loss, when it is not the binary log loss of (label, prediction): a survey question's row is
    (answered as predicted, the predicted answer's probability) and its loss is the multi-class log
    loss of the answer given (:mod:`tfos_jobs.survey.stream`)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    loss = row_loss(y, p) if losses is None else np.asarray(losses, dtype=np.float64)
    b = bin_of(p, bins)
    out = empty(bins)
    np.add.at(out[:, POS], b, w * y)
    np.add.at(out[:, NEG], b, w * (1 - y))
    np.add.at(out[:, PRED], b, w * p)
    np.add.at(out[:, LOSS], b, w * loss)
    return out


def summary(s: np.ndarray) -> dict:
    """The figures of a sketch (AUC and calibration are None while a class is missing)."""
    s = np.asarray(s, dtype=np.float64)
    pos, neg = s[:, POS], s[:, NEG]
    n, positives = float(pos.sum() + neg.sum()), float(pos.sum())
    out = {"count": n, "positives": positives, "ctr": None, "mean_prediction": None, "log_loss": None,
           "auc": None, "auc_error_bound": None, "calibration_error": None, "calibration_ratio": None,
           "prediction_histogram": histogram(s)}
    if n <= 0:
        return out
    out.update(ctr=positives / n, mean_prediction=float(s[:, PRED].sum()) / n, log_loss=float(s[:, LOSS].sum()) / n)
    negatives = n - positives
    if positives > 0 and negatives > 0:
        below = np.cumsum(neg) - neg                   # negative weight in lower bins
        pairs = positives * negatives
        out["auc"] = float(np.sum(pos * (below + 0.5 * neg)) / pairs)
        out["auc_error_bound"] = float(0.5 * np.sum(pos * neg) / pairs)
    if positives > 0:
        out["calibration_ratio"] = out["mean_prediction"] / out["ctr"]
    coarse = calibration(s)
    out["calibration_error"] = float(sum(abs(c["mean_prediction"] - c["observed_rate"]) * c["count"]
                                         for c in coarse) / n)
    return out


def coarse(s: np.ndarray, coarse_bins: int) -> np.ndarray:
    """The sketch summed into ``coarse_bins`` equal-width bins (a fine bin's lower edge decides)."""
    s = np.asarray(s, dtype=np.float64)
    groups = np.zeros((coarse_bins, 4))
    np.add.at(groups, np.arange(len(s)) * coarse_bins // len(s), s)
    return groups


def histogram(s: np.ndarray, coarse_bins: int = HISTOGRAM_BINS) -> list[float]:
    """The rows' weight in ``coarse_bins`` equal-width prediction bins."""
    groups = coarse(s, coarse_bins)
    return (groups[:, POS] + groups[:, NEG]).tolist()


def calibration(s: np.ndarray, coarse_bins: int = CALIBRATION_BINS) -> list[dict]:
    """Mean prediction vs observed rate in ``coarse_bins`` equal-width bins (empty bins left out)."""
    out = []
    for c, (pos, neg, pred, _) in enumerate(coarse(s, coarse_bins)):
        n = pos + neg
        if n > 0:
            out.append({"bin": c, "count": float(n), "mean_prediction": float(pred / n),
                        "observed_rate": float(pos / n)})
    return out
