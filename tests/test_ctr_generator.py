"""The Criteo-format generator: format, determinism, malformed lines, honest Bayes figures (no Spark)."""
import gzip
import os

import numpy as np
import pytest

import hdfs_io
from tfos_jobs import metrics
from tfos_jobs.ctr import schema
from tfos_jobs.ctr import synthetic as generator


def read_lines(uri):
    lines = []
    for info in sorted(hdfs_io.ls(hdfs_io.resolve(uri)), key=lambda i: i.uri):   # the published version
        if info.name.startswith("part-"):
            with hdfs_io.open(info.uri, "rb") as handle:
                data = handle.read()
            if info.name.endswith(".gz"):
                data = gzip.decompress(data)
            lines += data.decode().split("\n")[:-1]
    return lines


def test_rows_are_criteo_format_and_reproducible(tmp_path):
    a = generator.generate(str(tmp_path / "a"), 3000, files=3, seed=5)
    b = generator.generate(str(tmp_path / "b"), 3000, files=3, seed=5)
    lines = read_lines(str(tmp_path / "a"))
    assert len(lines) == 3000 and lines == read_lines(str(tmp_path / "b"))
    assert a["bayes_auc"] == b["bayes_auc"]
    fields = [line.split("\t") for line in lines]
    assert {len(f) for f in fields} == {schema.NUM_FIELDS}
    assert {f[0] for f in fields} == {"0", "1"}
    ints = [v for f in fields for v in f[1:14] if v]
    cats = [v for f in fields for v in f[14:] if v]
    assert all(v.lstrip("-").isdigit() for v in ints) and any(v.startswith("-") for v in ints)
    assert all(len(v) == 8 and int(v, 16) >= 0 for v in cats)
    empty = sum(v == "" for f in fields for v in f[1:])
    assert 0.02 < empty / (len(fields) * 39) < 0.4, "some values are missing, most are not"
    assert hdfs_io.exists(hdfs_io.join(hdfs_io.resolve(str(tmp_path / "a")), "_SUCCESS"))
    assert hdfs_io.published_kind(str(tmp_path / "a")) == generator.KIND
    assert generator.read_report(str(tmp_path / "a"))["rows"] == 3000


def test_category_frequencies_are_skewed(tmp_path):
    generator.generate(str(tmp_path / "d"), 5000, seed=1)
    values = [line.split("\t")[14 + 9] for line in read_lines(str(tmp_path / "d"))]
    values = [v for v in values if v]
    _, counts = np.unique(values, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[0] > 20 * np.median(counts), "head values are far more frequent than the typical one"


def test_malformed_lines_counted_by_kind(tmp_path):
    report = generator.generate(str(tmp_path / "m"), 4000, seed=2, malformed_fraction=0.05)
    lines = read_lines(str(tmp_path / "m"))
    assert len(lines) == 4000
    assert 100 < report["malformed"] < 300
    assert report["well_formed"] + report["malformed"] == 4000
    assert sum(report["malformed_by_kind"].values()) == report["malformed"]
    wrong_count = sum(len(line.split("\t")) != schema.NUM_FIELDS for line in lines)
    assert wrong_count == report["malformed_by_kind"]["field_count"] + report["malformed_by_kind"]["empty"]


def test_gzip_output(tmp_path):
    generator.generate(str(tmp_path / "g"), 1000, files=2, compression="gzip")
    names = sorted(i.name for i in hdfs_io.ls(hdfs_io.resolve(str(tmp_path / "g"))))
    assert names == ["_SUCCESS", "_generator.json", "part-00000.tsv.gz", "part-00001.tsv.gz"]
    assert len(read_lines(str(tmp_path / "g"))) == 1000


def pairwise_auc(labels, scores):
    """AUC by its definition, independent of ``metrics.auc``'s rank formula: the share of
    (positive, negative) pairs the scores order correctly, ties counted half."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels], scores[~labels]
    correct = 0.0
    for start in range(0, len(positives), 500):
        chunk = positives[start:start + 500, None]
        correct += np.sum(chunk > negatives[None, :]) + 0.5 * np.sum(chunk == negatives[None, :])
    return correct / (len(positives) * len(negatives))


def well_formed_rows(model, lines):
    """Labels and p(x) recomputed from the text the generator wrote (not from its sampled arrays);
    lines that do not parse as Criteo rows of this model are left out."""
    index = [{h: i for i, h in enumerate(model.cat_hex[j])} for j in range(schema.NUM_CATEGORICAL)]
    labels, ints, missing, cats = [], [], [], []
    for line in lines:
        f = line.split("\t")
        if len(f) != schema.NUM_FIELDS or f[0] not in ("0", "1"):
            continue
        raw_ints, raw_cats = f[1:1 + schema.NUM_INTEGER], f[1 + schema.NUM_INTEGER:]
        if not all(v == "" or v.lstrip("-").isdigit() and v.count("-") <= 1 for v in raw_ints):
            continue
        if not all(v == "" or v in index[j] for j, v in enumerate(raw_cats)):
            continue
        labels.append(int(f[0]))
        missing.append([v == "" for v in raw_ints])
        ints.append([int(v) if v else 0 for v in raw_ints])
        cats.append([index[j][v] if v else model.vocab[j] for j, v in enumerate(raw_cats)])
    logit = model.logit(np.array(ints, dtype=np.int64), np.array(missing), np.array(cats, dtype=np.int64))
    return np.array(labels), 1 / (1 + np.exp(-logit))


def test_reported_bayes_auc_is_the_auc_of_the_written_rows(tmp_path):
    report = generator.generate(str(tmp_path / "b"), 4000, files=2, seed=8, malformed_fraction=0.02)
    labels, p = well_formed_rows(generator.GeneratingModel(), read_lines(str(tmp_path / "b")))
    assert len(labels) == report["well_formed"] and report["malformed"] > 0, report
    independent = pairwise_auc(labels, p)
    assert report["bayes_auc"] == pytest.approx(independent, abs=1e-9), (report["bayes_auc"], independent)
    assert report["ctr"] == pytest.approx(labels.mean()), report
    assert 0.7 < independent < 0.95, independent


def test_bayes_auc_is_the_auc_of_the_true_probabilities():
    model = generator.GeneratingModel()
    labels, ints, missing, cats, p = model.sample(50_000, seed=3)
    assert abs(labels.mean() - model.params.base_ctr) < 0.02
    # the rank formula agrees with the pair-counting definition (on a subsample: pairs grow as n^2)
    assert metrics.auc(labels[:5000], p[:5000]) == pytest.approx(pairwise_auc(labels[:5000], p[:5000]), abs=1e-9)
    bayes = metrics.auc(labels, p)
    assert 0.7 < bayes < 0.95, bayes
    # the closed-form expectation agrees with a Monte Carlo estimate: the mean AUC of p over fresh label
    # draws from p itself (150 draws: standard error ~0.0002)
    rng = np.random.default_rng(0)
    sub = p[:8000]
    draws = [metrics.auc(rng.random(len(sub)) < sub, sub) for _ in range(150)]
    expected = generator.bayes_auc_expected(sub)
    assert expected == pytest.approx(np.mean(draws), abs=0.002), (expected, np.mean(draws), np.std(draws))
    # the probability is a function of the observed fields only: recomputing it from them agrees
    assert np.allclose(1 / (1 + np.exp(-model.logit(ints, missing, cats))), p)
    # the labels were drawn with probability p: in every decile of p the click rate matches p's mean
    deciles = np.array_split(np.argsort(p), 10)
    observed = np.array([labels[d].mean() for d in deciles])
    predicted = np.array([p[d].mean() for d in deciles])
    assert np.allclose(observed, predicted, atol=0.02), (observed, predicted)
    # p is the best predictor: noise on it scores lower
    noisy = p + np.random.default_rng(0).normal(0, 0.2, len(p))
    assert metrics.auc(labels, noisy) < bayes - 0.02, (metrics.auc(labels, noisy), bayes)
    # the labels follow p: a constant and a shuffled p score chance on the same labels
    assert metrics.auc(labels, np.full(len(p), p.mean())) == 0.5
    assert abs(metrics.auc(rng.permutation(labels), p) - 0.5) < 0.02


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="malformed_fraction"):
        generator.generate(str(tmp_path / "x"), 10, malformed_fraction=1.5)
    with pytest.raises(ValueError, match="compression"):
        generator.generate(str(tmp_path / "x"), 10, compression="zip")
    generator.generate(str(tmp_path / "y"), 10)
    with pytest.raises(FileExistsError):
        generator.generate(str(tmp_path / "y"), 10)
    assert not os.path.exists(tmp_path / "x")
