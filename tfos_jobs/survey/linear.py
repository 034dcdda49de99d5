"""The survey model's fixed part: one multinomial logistic regression per target, fitted on the driver
with scikit-learn on the encoded training rows and laid out for the model's ``LinearLogits`` layers.

The design matrix is the model's own layout (one column per categorical id, the column's offset plus
the id, then the dense values), so the coefficients need no mapping. Its L2 strength is chosen per
target from :data:`REG_GRID` by 5-fold cross-validated log loss (scikit-learn's
``LogisticRegressionCV``) and the one-standard-error rule, then it is refitted on every training row. A fixed strength was the old
baseline's weakness: on a 200-respondent survey it over-fitted to a log loss worse than the majority
answer's; the grid reaches the strength at which only the intercepts are left, the answer frequencies.

On the driver, not in MLlib: a survey has hundreds to tens of thousands of respondents, and L-BFGS over
a sparse matrix of that size takes well under a second per fit, where MLlib's Spark job per iteration
took about 3.6 s per fit on 190 rows here (25 fits took 90 s; the whole training 43 s). Above :data:`MAX_ROWS`
training rows the regression is fitted on a sample of that many.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tfos_jobs import sparkprep

# L2 strength per training row (as MLlib's regParam), up to where only the intercepts are left: the
# training answer frequencies, the majority baseline's probabilities
REG_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e6)
CV_FOLDS = 5
HOLDOUT_FRACTION = 0.2                     # of the training split: the network's early-stopping rows
HOLDOUT = "__holdout"
MAX_ROWS = 200_000
ABSENT_CLASS_BIAS = -10.0                  # a class never answered in training: p ~ e^-10 of the others'


def split_holdout(train_df: Any, plan: dict) -> Any:
    """``train_df`` with a boolean :data:`HOLDOUT` column: a hash of the id (else of every column),
    with another seed than the validation split's, so the same respondents are held out every run."""
    from pyspark.sql import functions as F
    names = [plan["id"]] if plan.get("id") and plan["id"] in train_df.columns else \
        [c for c in train_df.columns if c != HOLDOUT]
    seed = int(plan.get("split", {}).get("seed", 0)) + 1
    return train_df.withColumn(HOLDOUT, sparkprep.hash_split([F.col(f"`{n}`") for n in names], HOLDOUT_FRACTION, seed))


def design(plan: dict, features: dict[str, np.ndarray]) -> Any:
    """The sparse ``[rows, sum(vocab) + dense]`` matrix: a one for each categorical answer id (clipped
    to its column's vocabulary, as the model's layers clip), then the dense values."""
    from scipy import sparse
    categorical = [f for f in plan["features"] if f["type"] == "categorical"]
    dense = [name for name, dtype in plan["inputs"].items() if dtype == "float32"]
    rows = len(next(iter(features.values())))
    blocks = []
    if categorical:
        sizes = np.array([int(f["vocab_size"]) for f in categorical])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        ids = np.stack([np.clip(np.asarray(features[f["input"]], dtype=np.int64), 0, size - 1) + offset
                        for f, size, offset in zip(categorical, sizes, offsets)], axis=1)
        blocks.append(sparse.csr_matrix((np.ones(ids.size), ids.ravel(), np.arange(0, ids.size + 1, len(categorical))),
                                        shape=(rows, int(sizes.sum()))))
    if dense:
        blocks.append(sparse.csr_matrix(np.stack([np.asarray(features[n], dtype=np.float64) for n in dense], axis=1)))
    return sparse.hstack(blocks).tocsr()


def _fit(x: Any, y: np.ndarray, grid: tuple = REG_GRID, folds: int = CV_FOLDS) -> tuple[Any, float]:
    """The regression refitted on every row with the strength the one-standard-error rule picks from
    ``folds``-fold cross-validated log loss (one strength when ``grid`` has one), and that strength.

    The rule (glmnet's ``lambda.1se``, Breiman's for trees): the strongest regularization whose loss is
    within one standard error of the lowest. On a few hundred respondents the fold-to-fold noise is as
    large as the differences, and the lowest point alone picked weak strengths that did worse than the
    answer frequencies on new respondents."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    rows = len(y)
    reg = grid[0]
    if len(grid) > 1:
        cv = LogisticRegressionCV(Cs=[1.0 / (r * rows) for r in grid], l1_ratios=(0.0,), cv=min(folds, rows),
                                  scoring="neg_log_loss", max_iter=500, use_legacy_attributes=False,
                                  refit=False).fit(x, y)
        strengths = [1.0 / (c * rows) for c in cv.Cs_]
        losses = -np.asarray(cv.scores_).reshape(-1, len(strengths))   # [folds, strengths]
        mean, se = losses.mean(axis=0), losses.std(axis=0, ddof=1) / np.sqrt(len(losses))
        best = int(np.argmin(mean))
        reg = max(r for r, m in zip(strengths, mean) if m <= mean[best] + se[best])
    # sklearn's C multiplies the summed loss: C = 1 / (reg * rows) is reg on the mean loss, as MLlib's regParam
    return LogisticRegression(C=1.0 / (reg * rows), max_iter=500).fit(x, y), float(reg)


def fit_linear(plan: dict, features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
               grid: tuple = REG_GRID, seed: int = 0) -> tuple[dict, dict]:
    """``({label: {"table", "kernel", "bias"}}, {label: chosen L2 strength})`` from the encoded
    training rows."""
    rows = len(next(iter(labels.values())))
    if rows > MAX_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False))
        features = {k: np.asarray(v)[keep] for k, v in features.items()}
        labels = {k: np.asarray(v)[keep] for k, v in labels.items()}
    x = design(plan, features)
    weights, chosen = {}, {}
    for t in plan["targets"]:
        y = np.asarray(labels[t["label"]], dtype=np.int64)
        answered = y >= 0
        model, chosen[t["label"]] = _fit(x[answered], y[answered], grid)
        weights[t["label"]] = layout(model, plan, len(t["classes"]))
    return weights, chosen


def layout(model: Any, plan: dict, width: int) -> dict:
    """A fitted sklearn regression as ``LinearLogits`` weights: the ``[sum(vocab), width]`` table, the
    ``[dense, width]`` kernel and the bias (a binary fit's one vector is the second class's logit
    against a zero; classes never answered in training get :data:`ABSENT_CLASS_BIAS`)."""
    coefficients, intercepts = model.coef_, model.intercept_
    if len(model.classes_) == 2:
        coefficients = np.vstack([np.zeros_like(coefficients), coefficients])
        intercepts = np.concatenate([[0.0], intercepts])
    full = np.zeros((width, coefficients.shape[1]))
    bias = np.full(width, ABSENT_CLASS_BIAS)
    full[model.classes_], bias[model.classes_] = coefficients, intercepts
    vocab = sum(int(f["vocab_size"]) for f in plan["features"] if f["type"] == "categorical")
    table = full[:, :vocab].T if vocab else np.zeros((1, width))
    kernel = full[:, vocab:].T if full.shape[1] > vocab else np.zeros((1, width))
    return {"table": table.astype("float32"), "kernel": kernel.astype("float32"), "bias": bias.astype("float32")}
