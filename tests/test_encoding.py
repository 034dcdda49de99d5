"""One encoding, two interpreters: Spark columns (prep, scoring) and NumPy (the online server) give
identical reasons and features on the same records."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tfos_jobs.ctr import schema
from tfos_jobs.encoding import arrays, spark_columns
from tfos_jobs.encoding.spec import RecordEncoding, Rule

GOOD = ["1"] + ["-12"] * 13 + ["a1B2"] * 26


def _line(**changes):
    fields = list(GOOD)
    for index, value in changes.items():
        fields[int(index[1:])] = value
    return "\t".join(fields)


# Records at every rule's edge, and where Java's and Python's text handling differ (line terminators
# before the end of a field, Unicode spaces, casts).
EDGE = [_line(), _line(f1="", f39=""), _line(f2="9" * 18), _line(f2="9" * 19), _line(f2="-" + "9" * 18),
        _line(f3="-"), _line(f3="+5"), _line(f4="1.5"), _line(f4="007"), _line(f4="-0"), _line(f14="f" * 16),
        _line(f14="f" * 17), _line(f15="xyz"), _line(f15="ABCDEF"), _line(f0="2"), _line(f0=""), _line(f0="1\n"),
        _line() + "\r", _line() + "\r\r", _line() + "\r\n", _line() + "\t", "\t".join(GOOD[:-1]), _line(f20="ab\n"),
        _line(f39="ab\n"), _line(f39="ab\r\n"), _line(f5="12\n"), _line(f5="12\r"), _line(f5="12\u0085"),
        _line(f6="34\u2028"), _line(f21="cd\u2029"), _line(f7=" 1"), _line(f8="\u00a0"), _line(f22="é"), "", "\t"]


def _generated(tmp_path, rows=3000):
    from tfos_jobs.ctr import synthetic
    synthetic.generate(str(tmp_path / "gen"), rows, files=2, seed=5, malformed_fraction=0.05)
    lines = []
    for name in sorted(os.listdir(tmp_path / "gen")):
        if name.startswith("part-"):
            lines += (tmp_path / "gen" / name).read_text().split("\n")[:-1]
    return lines


def _spark_encode(spark, records, encoding, fast_path=True):
    df = spark.createDataFrame(list(enumerate(records)), "i int, value string")
    rows = spark_columns.encode(df, encoding, carry=("i",), fast_path=fast_path).orderBy("i").toPandas()
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("labeled", [True, False])
def test_spark_and_numpy_give_identical_reasons_and_features(local_spark, tmp_path, labeled):
    records = EDGE + _generated(tmp_path)
    if not labeled:   # the records a scorer gets: the same fields without the label
        records = [r.split("\t", 1)[1] if "\t" in r else r for r in records]
    encoding = schema.encoding(1000, labeled)
    spark_rows = _spark_encode(local_spark, records, encoding)
    numpy = arrays.encode(records, encoding)
    spark_reasons = [None if code is None else (code, reason)
                     for code, reason in zip(spark_rows["reason_code"], spark_rows["reason"])]
    mismatched = [(records[i], s, n) for i, (s, n) in enumerate(zip(spark_reasons, numpy.reasons)) if s != n]
    assert not mismatched, mismatched[:5]
    good = spark_rows[spark_rows["reason_code"].isna()]
    assert 0.9 * len(records) > len(good) > 0.5 * len(records), len(good)
    assert set(numpy.features) == set(encoding.output_names())
    for name, values in numpy.features.items():
        expected = good[name].to_numpy()
        assert values.dtype == expected.dtype and np.array_equal(values, expected), (
            name, [(r, a, b) for r, a, b in zip(good.index, values, expected) if a != b][:5])


@pytest.mark.slow
def test_the_fast_path_changes_nothing(local_spark):
    encoding = schema.encoding(100)
    fast = _spark_encode(local_spark, EDGE, encoding)
    checked = _spark_encode(local_spark, EDGE, encoding, fast_path=False)
    assert fast.equals(checked), fast.compare(checked)
    codes = list(fast["reason_code"])
    assert codes[:3] == [None, None, None] and codes[3] == "I2" and codes[11] == "C1" and codes[14] == "label", codes


def test_a_bad_record_names_its_field_and_value():
    encoding = schema.encoding(100, labeled=False)
    fields = GOOD[1:]
    fields[2] = "x" * 50
    encoded = arrays.encode(["\t".join(fields), "\t".join(GOOD[1:]), "1\t2"], encoding)
    assert encoded.reasons[0] == ("I3", "I3 is not an integer: '" + "x" * 40 + "'")
    assert encoded.reasons[1] is None and encoded.reasons[2] == ("field_count", "expected 39 tab-separated fields, found 2")
    assert list(encoded.good) == [False, True, False]
    assert encoded.features["I1"].tolist() == [np.float32(-np.log1p(12.0))] and encoded.features["C1"].shape == (1,)


def test_specs_are_checked():
    with pytest.raises(ValueError, match="field 5 outside the record's 3 fields"):
        RecordEncoding(",", 3, (Rule("x", 5, "[0-9]", "x: '"),), ())
    with pytest.raises(ValueError, match="hash_buckets must be at least 2"):
        schema.encoding(1)
    with pytest.raises(ValueError, match="anchored"):
        arrays.java_regex("^a")
