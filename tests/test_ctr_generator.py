"""The Criteo-format generator: format, determinism, malformed lines, honest Bayes figures (no Spark)."""
import gzip
import os

import numpy as np
import pytest

import hdfs_io
from tfos_jobs import metrics
from tfos_jobs.ctr import generator, schema


def read_lines(uri):
    lines = []
    for info in sorted(hdfs_io.ls(uri), key=lambda i: i.uri):
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
    assert hdfs_io.exists(str(tmp_path / "a" / "_SUCCESS"))
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
    names = sorted(i.name for i in hdfs_io.ls(str(tmp_path / "g")))
    assert names == ["_SUCCESS", "_generator.json", "part-00000.tsv.gz", "part-00001.tsv.gz"]
    assert len(read_lines(str(tmp_path / "g"))) == 1000


def test_bayes_auc_is_the_auc_of_the_true_probabilities():
    model = generator.GeneratingModel()
    labels, ints, missing, cats, p = model.sample(50_000, seed=3)
    assert abs(labels.mean() - model.params.base_ctr) < 0.02
    bayes = metrics.auc(labels, p)
    assert 0.7 < bayes < 0.95
    assert generator.bayes_auc_expected(p) == pytest.approx(bayes, abs=0.01)
    # the probability is a function of the observed fields only: recomputing it from them agrees
    assert np.allclose(1 / (1 + np.exp(-model.logit(ints, missing, cats))), p)
    # a predictor that ignores the interactions is worse than Bayes
    assert metrics.auc(labels, p + np.random.default_rng(0).normal(0, 0.2, len(p))) < bayes


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="malformed_fraction"):
        generator.generate(str(tmp_path / "x"), 10, malformed_fraction=1.5)
    with pytest.raises(ValueError, match="compression"):
        generator.generate(str(tmp_path / "x"), 10, compression="zip")
    generator.generate(str(tmp_path / "y"), 10)
    with pytest.raises(FileExistsError):
        generator.generate(str(tmp_path / "y"), 10)
    assert not os.path.exists(tmp_path / "x")
