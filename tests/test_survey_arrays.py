"""The survey encoding's two interpreters: Spark (prep, batch and stream prediction) and NumPy (the online
server) give identical features for the same answers, odd answers included."""
from __future__ import annotations

import csv
import json

import pytest

from tfos_jobs.survey import arrays
from tfos_jobs.survey import schema as spec
from tfos_jobs.survey import synthetic as data

# Answers where Spark's text handling and Python's differ: spaces, Java number syntax, special literals.
ODD = [" 2 ", "2.0", "2d", "0x1p1", "1e0", "NaN", "Infinity", "inf", "-inf", "\t3", "2.50", "-0", "1e19",
       "abc", "+3", ".5", "3.", " refused", "98", "98.0", "5f"]


def test_numbers_are_read_as_java_and_spark_read_them():
    assert arrays.spark_double("2d") == 2.0 and arrays.spark_double("0x1p1") == 2.0
    assert arrays.spark_double(" inf") == float("inf") and arrays.spark_double("1_0") is None
    assert arrays.canonical("2.50") == "2.50" and arrays.canonical(" 2.0 ") == "2" and arrays.canonical("\t3") == "3"
    assert arrays.canonical("\u00a03") == "\u00a03"        # no Unicode trimming


@pytest.mark.slow
def test_spark_and_numpy_encode_the_same_answers_identically(local_spark, tmp_path):
    from tfos_jobs.survey import prep
    table, generated = data.synthetic_survey(rows=400, questions=24, targets=2, seed=3)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    questions = [q for q in columns if q.startswith("q")]
    for i, odd in enumerate(ODD * 3):          # odd answers in three questions of every treatment kind
        columns[questions[i % 6]][i] = odd
    path = tmp_path / "survey.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))
    parsed = spec.parse_spec(json.dumps(generated))
    plan = prep.run_prep(local_spark, parsed, str(path), str(tmp_path / "prep"), files=1)
    header = list(columns)
    df = prep.canonicalize(prep.read_table(local_spark, str(path), "csv"), header)
    spark_rows = prep.transform(df, plan, with_labels=False, keep=["rid"]).toPandas()
    # Spark's CSV reader reads an empty field as null
    respondents = [{k: (v if v != "" else None) for k, v in zip(header, row)} for row in zip(*columns.values())]
    spark_rows = spark_rows.set_index("rid").loc[[r["rid"] for r in respondents]]
    numpy = arrays.encode(respondents, plan)
    assert set(numpy) == set(prep.feature_inputs(plan)), sorted(set(numpy) ^ set(prep.feature_inputs(plan)))
    for name, values in numpy.items():
        expected = spark_rows[name].to_numpy()
        differ = [(i, respondents[i][_column(plan, name)], a, b) for i, (a, b) in enumerate(zip(values, expected))
                  if a != b]
        assert values.dtype == expected.dtype and not differ, (name, differ[:5])


def _column(plan, name):
    return next(f["column"] for f in plan["features"] if f["input"] == name or name in f.get("indicators", {}).values())
