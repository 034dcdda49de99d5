"""Criteo-format click logs from a known generating model, so model quality can be judged honestly.

The model (all parameters drawn from ``model_seed``):

* 13 integer fields: log-normal counts (one field shifted to take small negative values, like
  Criteo's I2), each missing with its own rate; effect on the logit ``w_i * tanh(z_i)`` where ``z_i``
  is the standardised log of the observed value, or a bias of its own when the value is missing.
* 26 categorical fields: vocabularies of 3 to ``max_vocab`` values drawn with power-law (Zipf)
  frequencies, values written as 8-digit hex hashes, each field missing with its own rate; every value
  has its own effect, larger for frequent values (std ~ 1/sqrt(1 + rank/50)); some fields carry
  no signal at all.
* interactions: factorised (rank ``interaction_rank``) effects for pairs of categorical fields and
  integer x categorical products, i.e. what FM / DeepFM / DCN models are built to find.
* a bias that sets the mean click rate (default 0.25, close to Criteo's).

The click probability depends on the *observed* fields only (a missing value has effects of its own),
so ``p(x)`` is the Bayes-optimal predictor and the AUC of ``p`` against the sampled labels is the best
AUC any model can reach on those rows: :func:`generate` reports it (``bayes_auc``, over the well-formed
rows it wrote) together with its expectation (``bayes_auc_expected``, computed from ``p`` alone).

A configurable fraction of lines is malformed on purpose (wrong field count, bad label, non-integer
value, bad categorical value, empty line); they carry no label and are excluded from the Bayes figures.
"""
from __future__ import annotations

import gzip
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

import hdfs_io
from tfos_jobs import metrics
from tfos_jobs.ctr import schema

REPORT_FILE = "_generator.json"   # Hadoop/Spark input formats skip names starting with "_"
KIND = "ctr-raw"                  # publish kind: generating over another kind of output is refused
MALFORMED_KINDS = ("field_count", "label", "integer", "categorical", "empty")


@dataclass(frozen=True)
class ModelParams:
    model_seed: int = 7
    max_vocab: int = 20_000
    base_ctr: float = 0.25
    interaction_rank: int = 4
    interaction_max_vocab: int = 1000
    signal: float = 1.0          # scales every effect: higher = easier problem, higher Bayes AUC


class GeneratingModel:
    """The known model behind the generated clicks; :meth:`sample` draws rows and their true p."""

    def __init__(self, params: ModelParams = ModelParams()):
        self.params = params
        rng = np.random.default_rng(params.model_seed)
        s = params.signal
        ni, nc = schema.NUM_INTEGER, schema.NUM_CATEGORICAL
        # integer fields
        self.int_mu = rng.uniform(0.5, 4.0, ni)
        self.int_sigma = rng.uniform(0.6, 1.6, ni)
        self.int_shift = np.zeros(ni, dtype=np.int64)
        self.int_shift[1] = -3
        self.int_missing = np.where(rng.random(ni) < 0.4, 0.0, rng.uniform(0.02, 0.45, ni))
        self.int_weight = rng.normal(0, 0.35 * s, ni)
        self.int_missing_bias = rng.normal(0, 0.25 * s, ni)
        # categorical fields
        self.vocab = np.round(np.geomspace(3, params.max_vocab, nc)).astype(int)
        rng.shuffle(self.vocab)
        self.zipf = rng.uniform(1.05, 1.5, nc)
        self.cat_missing = np.where(rng.random(nc) < 0.5, 0.0, rng.uniform(0.02, 0.5, nc))
        scale = np.where(rng.random(nc) < 0.2, 0.0, rng.uniform(0.15, 0.55, nc)) * s
        self.cat_cdf, self.cat_weight, self.cat_hex = [], [], []
        for j in range(nc):
            v = self.vocab[j]
            freq = np.arange(1, v + 1, dtype=np.float64) ** -self.zipf[j]
            self.cat_cdf.append(np.cumsum(freq) / freq.sum())
            # frequent values carry larger effects than the long tail (std ~ 1/sqrt(1 + rank/50))
            decay = 1 / np.sqrt(1 + np.arange(v) / 50)
            self.cat_weight.append(np.append(rng.normal(0, scale[j] * decay), rng.normal(0, 0.2 * s)))  # [-1]: missing
            hexes = rng.choice(2 ** 32, size=v, replace=False)
            self.cat_hex.append(np.array([f"{h:08x}" for h in hexes], dtype=object))
        # interactions: pairs of categorical fields (factorised) and integer x categorical
        k = params.interaction_rank
        # interacting fields: those of moderate cardinality (a value's factors need data to be learnt)
        fields = rng.permutation(np.flatnonzero(self.vocab <= params.interaction_max_vocab))
        self.cat_pairs = [(int(fields[2 * i]), int(fields[2 * i + 1])) for i in range(min(6, len(fields) // 2))]
        self.factors = {}
        for a, b in self.cat_pairs:
            for f in (a, b):
                if f not in self.factors:
                    self.factors[f] = rng.normal(0, np.sqrt(0.5 * s / np.sqrt(k)), (self.vocab[f] + 1, k))
        self.int_cat = [(int(rng.integers(ni)), int(rng.choice(fields))) for _ in range(3)]
        self.int_cat_weight = [rng.normal(0, 0.4 * s, self.vocab[j] + 1) for _, j in self.int_cat]
        self.bias = 0.0
        self.bias = self._calibrate(params.base_ctr, rng)

    # ------------------------------------------------------------------ sampling
    def _draw(self, rows, rng):
        ni, nc = schema.NUM_INTEGER, schema.NUM_CATEGORICAL
        ints = np.empty((rows, ni), dtype=np.int64)
        int_missing = rng.random((rows, ni)) < self.int_missing
        for i in range(ni):
            raw = np.floor(np.expm1(rng.normal(self.int_mu[i], self.int_sigma[i], rows).clip(0, 30)))
            ints[:, i] = raw.astype(np.int64) + self.int_shift[i]
        cats = np.empty((rows, nc), dtype=np.int64)   # value index; vocab[j] means missing
        for j in range(nc):
            idx = np.searchsorted(self.cat_cdf[j], rng.random(rows), side="right")
            cats[:, j] = np.where(rng.random(rows) < self.cat_missing[j], self.vocab[j],
                                  np.minimum(idx, self.vocab[j] - 1))
        return ints, int_missing, cats

    def logit(self, ints: np.ndarray, int_missing: np.ndarray, cats: np.ndarray) -> np.ndarray:
        z = (np.log1p(np.maximum(ints - self.int_shift, 0)) - self.int_mu) / self.int_sigma
        tz = np.tanh(z)
        logit = np.full(len(ints), self.bias)
        logit += np.where(int_missing, self.int_missing_bias, tz * self.int_weight).sum(axis=1)
        for j in range(schema.NUM_CATEGORICAL):
            logit += self.cat_weight[j][cats[:, j]]
        for a, b in self.cat_pairs:
            logit += np.einsum("nk,nk->n", self.factors[a][cats[:, a]], self.factors[b][cats[:, b]])
        for (i, j), weight in zip(self.int_cat, self.int_cat_weight):
            logit += np.where(int_missing[:, i], 0.0, tz[:, i]) * weight[cats[:, j]]
        return logit

    def _calibrate(self, base_ctr, rng, rows=100_000):
        logit = self.logit(*self._draw(rows, rng))
        lo, hi = -10.0, 10.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if np.mean(1 / (1 + np.exp(-(logit + mid)))) < base_ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def drifted(self, seed: int, share: float = 0.7) -> "GeneratingModel":
        """The same fields and values with changed click behaviour: a fraction ``share`` of every
        effect is drawn anew (then the base rate is re-calibrated). Models trained before the drift
        lose quality after it; the features look the same."""
        import copy
        other = copy.deepcopy(self)
        rng = np.random.default_rng([self.params.model_seed, seed, 3])

        def mix(weights):
            return np.sqrt(1 - share) * weights + np.sqrt(share) * rng.permutation(weights)
        other.int_weight = mix(self.int_weight)
        other.cat_weight = [mix(w) for w in self.cat_weight]
        other.factors = {f: mix(v) for f, v in self.factors.items()}
        other.bias = 0.0
        other.bias = other._calibrate(self.params.base_ctr, rng)
        return other

    def sample(self, rows: int, seed: int) -> tuple[np.ndarray, ...]:
        """Draw ``rows`` rows: (labels, ints, int_missing, cats, p)."""
        rng = np.random.default_rng([self.params.model_seed, seed])
        ints, int_missing, cats = self._draw(rows, rng)
        p = 1 / (1 + np.exp(-self.logit(ints, int_missing, cats)))
        labels = (rng.random(rows) < p).astype(np.int8)
        return labels, ints, int_missing, cats, p

    # ------------------------------------------------------------------ formatting
    def lines(self, labels: np.ndarray, ints: np.ndarray, int_missing: np.ndarray, cats: np.ndarray) -> list[str]:
        """Criteo text lines (a list of str) for sampled rows."""
        import pyarrow as pa
        import pyarrow.compute as pc
        columns = [pa.array(labels.astype(np.int64)).cast(pa.string())]
        for i in range(schema.NUM_INTEGER):
            columns.append(pa.array(ints[:, i], mask=int_missing[:, i]).cast(pa.string()))
        for j in range(schema.NUM_CATEGORICAL):
            hexes = np.append(self.cat_hex[j], None)[cats[:, j]]
            columns.append(pa.array(hexes, type=pa.string()))
        joined = pc.binary_join_element_wise(*columns, "\t", null_handling="replace", null_replacement="")
        return joined.to_pylist()


def corrupt(line: str, kind: str, rng: np.random.Generator) -> str:
    """A malformed version of a well-formed line."""
    fields = line.split("\t")
    if kind == "field_count":
        return "\t".join(fields[: int(rng.integers(1, schema.NUM_FIELDS))])
    if kind == "label":
        fields[0] = str(rng.choice(["2", "-1", "yes", ""]))
    elif kind == "integer":
        fields[1 + int(rng.integers(schema.NUM_INTEGER))] = str(rng.choice(["abc", "1.5", "12x", "--3"]))
    elif kind == "categorical":
        fields[1 + schema.NUM_INTEGER + int(rng.integers(schema.NUM_CATEGORICAL))] = str(
            rng.choice(["zz!", "ab cd", "not-hex", "0x1g"]))
    elif kind == "empty":
        return ""
    return "\t".join(fields)


def bayes_auc_expected(p: np.ndarray) -> float:
    """E[AUC] of the true probabilities over label draws (ratio of expectations; ties counted half)."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    q = 1 - p
    below_neg = np.cumsum(q) - q      # sum of (1-p_j) for j ranked below i
    correct = np.sum(p * below_neg)
    pos, neg = p.sum(), q.sum()
    return float(correct / (pos * neg - np.sum(p * q)))


def generate(uri: str, rows: int, *, files: int = 1, seed: int = 0, malformed_fraction: float = 0.0,
             compression: str | None = None, params: ModelParams = ModelParams(), overwrite: bool = False,
             chunk_rows: int = 200_000) -> dict:
    """Write ``rows`` Criteo lines (``files`` part files) to the directory ``uri``, published atomically
    with a ``_generator.json`` report. Returns the report (a dict, ``bayes_auc`` included)."""
    if rows < 1 or files < 1:
        raise ValueError(f"rows ({rows}) and files ({files}) must be positive")
    if not 0.0 <= malformed_fraction < 1.0:
        raise ValueError(f"malformed_fraction must be in [0, 1), got {malformed_fraction}")
    if compression not in (None, "none", "gzip"):
        raise ValueError(f"compression must be 'gzip' or 'none', got {compression!r}")
    gz = compression == "gzip"
    started = time.monotonic()
    model = GeneratingModel(params)
    rng = np.random.default_rng([params.model_seed, seed, 1])
    all_p, all_labels = [], []
    malformed = dict.fromkeys(MALFORMED_KINDS, 0)
    per_file = [rows // files + (1 if i < rows % files else 0) for i in range(files)]
    chunk_seed = 0
    with hdfs_io.staged_output(uri, overwrite=overwrite, kind=KIND) as tmp:
        for index, count in enumerate(per_file):
            name = f"part-{index:05d}.tsv" + (".gz" if gz else "")
            with hdfs_io.open(hdfs_io.join(tmp, name), "wb") as raw:
                out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) if gz else raw
                for start in range(0, count, chunk_rows):
                    n = min(chunk_rows, count - start)
                    labels, ints, int_missing, cats, p = model.sample(n, seed=seed * 1_000_003 + chunk_seed)
                    chunk_seed += 1
                    text = model.lines(labels, ints, int_missing, cats)
                    bad = np.flatnonzero(rng.random(n) < malformed_fraction)
                    keep = np.ones(n, dtype=bool)
                    for row in bad:
                        kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
                        text[row] = corrupt(text[row], kind, rng)
                        malformed[kind] += 1
                        keep[row] = False
                    all_p.append(p[keep])
                    all_labels.append(labels[keep])
                    out.write(("\n".join(text) + "\n").encode())
                if gz:
                    out.close()
        p, labels = np.concatenate(all_p), np.concatenate(all_labels)
        report = {
            "rows": rows, "files": files, "seed": seed, "compression": "gzip" if gz else "none",
            "malformed": sum(malformed.values()), "malformed_by_kind": malformed,
            "well_formed": int(len(p)), "ctr": float(labels.mean()) if len(p) else 0.0,
            "bayes_auc": metrics.auc(labels, p) if 0 < labels.sum() < len(labels) else None,
            "bayes_auc_expected": bayes_auc_expected(p) if len(p) > 1 else None,
            "bayes_log_loss": metrics.log_loss(labels, p) if len(p) else None,
            "model": asdict(params), "seconds": round(time.monotonic() - started, 2),
        }
        with hdfs_io.open(hdfs_io.join(tmp, REPORT_FILE), "w") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
    return report


def read_report(uri: str) -> dict:
    """The ``_generator.json`` report of a generated data set."""
    with hdfs_io.open(hdfs_io.join(uri, REPORT_FILE), "r") as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------------- stream mode

STREAM_KIND = "ctr-stream"
IMPRESSIONS, CLICKS = "impressions", "clicks"
STREAM_MALFORMED_KINDS = ("field_count", "integer", "categorical", "empty")


def impression_lines(ids: list[str], times_ms: np.ndarray, criteo_lines: list[str]) -> list[str]:
    """Impression records: ``id <TAB> event time (epoch ms) <TAB>`` the 39 Criteo fields (no label)."""
    return [f"{i}\t{t}\t{line.split(chr(9), 1)[1] if chr(9) in line else ''}"
            for i, t, line in zip(ids, times_ms.tolist(), criteo_lines)]


def _corrupt_some(lines: list[str], fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Corrupt a ``fraction`` of ``lines`` in place; return which stayed good and the count per kind."""
    good = np.ones(len(lines), dtype=bool)
    malformed = dict.fromkeys(STREAM_MALFORMED_KINDS, 0)
    for row in np.flatnonzero(rng.random(len(lines)) < fraction):
        kind = STREAM_MALFORMED_KINDS[int(rng.integers(len(STREAM_MALFORMED_KINDS)))]
        lines[row] = corrupt(lines[row], kind, rng) if kind != "empty" else "0\t"
        malformed[kind] += 1
        good[row] = False
    return good, malformed


def _write_stream_parts(tmp: str, files: int, records: list[str], ids: list[str], times: np.ndarray,
                        clicked: np.ndarray, click_times: np.ndarray) -> None:
    """``files`` impression parts of consecutive rows, and beside each the clicks whose time falls in
    its time range (in click-time order)."""
    rows = len(records)
    bounds = [rows * i // files for i in range(files + 1)]
    for i in range(files):
        lo, hi = bounds[i], bounds[i + 1]
        with hdfs_io.open(hdfs_io.join(tmp, IMPRESSIONS, f"part-{i:05d}.tsv"), "w") as out:
            out.write("\n".join(records[lo:hi]) + "\n")
        end = times[hi] if hi < rows else np.iinfo(np.int64).max
        begin = times[lo] if i else np.iinfo(np.int64).min
        inside = (click_times >= begin) & (click_times < end)
        mine, when = clicked[inside], click_times[inside]
        with hdfs_io.open(hdfs_io.join(tmp, CLICKS, f"part-{i:05d}.tsv"), "w") as out:
            out.write("".join(f"{ids[r]}\t{t}\n" for r, t in sorted(zip(mine, when), key=lambda rt: rt[1])))


def generate_stream(uri: str, rows: int, *, files: int = 10, seed: int = 0, start_ms: int = 1_767_225_600_000,
                    rows_per_s: float = 100.0, mean_click_delay_s: float = 120.0, max_click_delay_s: float = 900.0,
                    malformed_fraction: float = 0.0, drift_at_row: int | None = None, drift_share: float = 0.7,
                    params: ModelParams = ModelParams(), overwrite: bool = False) -> dict:
    """An impression stream and its click log, for streaming scoring and monitoring.

    ``uri/impressions/part-NNNNN.tsv``: impressions in event-time order (``files`` parts of
    consecutive rows, to be dropped one by one into a watched directory); ``uri/clicks/part-NNNNN.tsv``:
    ``id <TAB> click time`` for every clicked impression, the click ``Exp(mean_click_delay_s)`` later
    (at most ``max_click_delay_s``), each in the part whose time range holds the click. From row
    ``drift_at_row`` on, clicks follow a drifted model (:meth:`GeneratingModel.drifted`, a share
    ``drift_share`` of every effect drawn anew, same features): the report gives the Bayes-optimal
    AUC before and after, and the AUC the pre-drift model's true probabilities reach after it (what a
    perfect model of the old behaviour would see). Published as one unit with ``_generator.json``.
    """
    if rows < 1 or files < 1 or rows_per_s <= 0:
        raise ValueError(f"rows ({rows}), files ({files}) and rows_per_s ({rows_per_s}) must be positive")
    if not 0.0 <= malformed_fraction < 1.0:
        raise ValueError(f"malformed_fraction must be in [0, 1), got {malformed_fraction}")
    if drift_at_row is not None and not 0 < drift_at_row < rows:
        raise ValueError(f"drift_at_row must be inside (0, {rows}), got {drift_at_row}")
    started = time.monotonic()
    model = GeneratingModel(params)
    rng = np.random.default_rng([params.model_seed, seed, 2])
    cut = drift_at_row if drift_at_row is not None else rows
    labels, ints, int_missing, cats, p = model.sample(rows, seed=seed * 1_000_003)
    p_before = p.copy()
    if drift_at_row is not None:
        later = model.drifted(seed, drift_share)
        p[cut:] = 1 / (1 + np.exp(-later.logit(ints[cut:], int_missing[cut:], cats[cut:])))
        labels[cut:] = (rng.random(rows - cut) < p[cut:]).astype(np.int8)
    lines = model.lines(labels, ints, int_missing, cats)
    times = start_ms + (np.arange(rows) * 1000.0 / rows_per_s).astype(np.int64)
    ids = [f"{seed:x}-{i:09x}" for i in range(rows)]
    good, malformed = _corrupt_some(lines, malformed_fraction, rng)
    records = impression_lines(ids, times, lines)
    delays = np.minimum(rng.exponential(mean_click_delay_s * 1000.0, rows), max_click_delay_s * 1000.0).astype(np.int64)
    clicked = np.flatnonzero((labels == 1) & good)
    click_times = times[clicked] + delays[clicked]
    with hdfs_io.staged_output(uri, overwrite=overwrite, kind=STREAM_KIND) as tmp:
        _write_stream_parts(tmp, files, records, ids, times, clicked, click_times)

        def bayes(sel, probabilities=p):
            ys, ps = labels[sel & good], probabilities[sel & good]
            return metrics.auc(ys, ps) if 0 < ys.sum() < len(ys) else None
        index = np.arange(rows)
        report = {
            "rows": rows, "files": files, "seed": seed, "start_ms": int(start_ms), "end_ms": int(times[-1]),
            "rows_per_s": rows_per_s, "mean_click_delay_s": mean_click_delay_s, "max_click_delay_s": max_click_delay_s,
            "malformed": sum(malformed.values()), "malformed_by_kind": malformed, "well_formed": int(good.sum()),
            "clicks": int(len(clicked)), "ctr": float(labels[good].mean()),
            "bayes_auc": bayes(index >= 0), "drift_at_row": drift_at_row,
            "drift_at_ms": int(times[drift_at_row]) if drift_at_row is not None else None,
            "bayes_auc_before_drift": bayes(index < cut) if drift_at_row is not None else None,
            "bayes_auc_after_drift": bayes(index >= cut) if drift_at_row is not None else None,
            "old_model_auc_after_drift": bayes(index >= cut, p_before) if drift_at_row is not None else None,
            "drift_share": drift_share if drift_at_row is not None else None, "model": asdict(params),
            "seconds": round(time.monotonic() - started, 2),
        }
        with hdfs_io.open(hdfs_io.join(tmp, REPORT_FILE), "w") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
    return report
