"""Spark prep of Criteo lines: quarantine with reasons and counts, bad-fraction limit, split, output."""
import pytest

import hdfs_io
from tfos_jobs import sparkprep as gprep
from tfos_jobs.ctr import schema
from tfos_jobs.ctr import synthetic as generator
from tfos_jobs.ctr.prep import prep, read_report, rejected_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("ctr-raw") / "raw")
    report = generator.generate(uri, 3000, files=2, seed=11, malformed_fraction=0.04, compression="gzip")
    return uri, report


def test_malformed_lines_quarantined_and_counted(local_spark, raw, tmp_path):
    uri, gen = raw
    out = str(tmp_path / "prep")
    report = prep(local_spark, uri, out, validation_fraction=0.2, max_bad_fraction=0.1, hash_buckets=500)
    kinds = gen["malformed_by_kind"]
    assert report["rows"] == 3000 and report["bad"] == gen["malformed"] > 0
    by = report["bad_by_reason"]
    assert by.get("field_count", 0) == kinds["field_count"] + kinds["empty"]
    assert by.get("label", 0) == kinds["label"]
    assert sum(v for k, v in by.items() if k in schema.INTEGER) == kinds["integer"]
    assert sum(v for k, v in by.items() if k in schema.CATEGORICAL) == kinds["categorical"]
    quarantine = hdfs_io.read_parquet(report["quarantine"])
    assert quarantine.num_rows == gen["malformed"]
    assert set(quarantine.column_names) == {"source", "reason_code", "reason", "line"}
    reasons = quarantine.column("reason").to_pylist()
    assert all(r for r in reasons) and any("is not an integer" in r for r in reasons)
    assert all(s.endswith(".tsv.gz") for s in quarantine.column("source").to_pylist())
    train, valid = hdfs_io.read_parquet(report["train"]), hdfs_io.read_parquet(report["valid"])
    assert train.num_rows + valid.num_rows == gen["well_formed"]
    assert 0.12 < valid.num_rows / gen["well_formed"] < 0.28
    assert train.column_names == schema.FEATURES + [schema.LABEL]
    for name in schema.FEATURES + [schema.LABEL]:
        assert train.column(name).null_count == 0, name
    cats = train.column("C1").to_numpy()
    assert cats.min() >= 0 and cats.max() < 500
    assert abs(train.column(schema.LABEL).to_numpy().mean() - gen["ctr"]) < 0.05
    assert hdfs_io.is_published(report["train"]) and hdfs_io.published_kind(out) == "ctr-prep"
    version = hdfs_io.resolve(out)   # one unit: every part and the report inside the published version
    assert all(report[part] == hdfs_io.join(version, part) for part in ("train", "valid", "quarantine"))
    assert hdfs_io.exists(hdfs_io.join(version, "prep.json")) and read_report(out) == report


def test_split_is_deterministic(local_spark, raw, tmp_path):
    uri, _ = raw
    a = prep(local_spark, uri, str(tmp_path / "a"), validation_fraction=0.3, max_bad_fraction=0.1)
    b = prep(local_spark, uri, str(tmp_path / "b"), validation_fraction=0.3, max_bad_fraction=0.1, partitions=3)
    c = prep(local_spark, uri, str(tmp_path / "c"), validation_fraction=0.3, max_bad_fraction=0.1, seed=1)

    def rows(report):
        table = hdfs_io.read_parquet(report["valid"])
        return sorted(map(tuple, zip(*(table.column(n).to_pylist() for n in ["I1", "C3", "C9", "label"]))))
    assert rows(a) == rows(b)
    assert rows(a) != rows(c), "another seed gives another split"


def test_over_limit_fails_clearly_and_keeps_quarantine(local_spark, raw, tmp_path):
    uri, gen = raw
    out = str(tmp_path / "p")
    with pytest.raises(gprep.BadInputError) as err:
        prep(local_spark, uri, out, max_bad_fraction=0.01)
    message = str(err.value)
    assert f"{gen['malformed']} of 3000 rows" in message and "above the limit of 1.00%" in message
    rejected = rejected_uri(out)   # beside the output: a failed prep never touches the output itself
    assert rejected in message and "field_count" in message
    assert hdfs_io.read_parquet(rejected).num_rows == gen["malformed"]
    assert not hdfs_io.exists(out), "no output from over-limit input"


def test_existing_output_and_missing_input(local_spark, raw, tmp_path):
    uri, _ = raw
    with pytest.raises(FileNotFoundError, match="no-such"):
        prep(local_spark, str(tmp_path / "no-such"), str(tmp_path / "x"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        prep(local_spark, uri, str(tmp_path / "exists"))


def test_check_bad_fraction_unit():
    assert gprep.check_bad_fraction(100, 1, 0.01) == 0.01
    with pytest.raises(gprep.BadInputError, match=r"2 of 100 rows \(2.00%\).*label: 2"):
        gprep.check_bad_fraction(100, 2, 0.01, {"label": 2}, what="in.tsv")
    with pytest.raises(gprep.BadInputError, match="no rows"):
        gprep.check_bad_fraction(0, 0, 0.5)
