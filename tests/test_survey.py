"""The survey modelling job: spec checks (no Spark), prep on Spark, and the real ANES 1996 example
end to end (prep → train → evaluate → predict) on Spark local-cluster with file:// storage."""
import json
import os
import sys

import numpy as np
import pytest

import hdfs_io
from tfos_jobs.survey import cli
from tfos_jobs.survey import schema as spec
from tfos_jobs.survey import synthetic as data
from tfos_jobs.survey.schema import SpecError



def write_csv(path, header, rows):
    with open(path, "w") as handle:
        handle.write(",".join(header) + "\n")
        for row in rows:
            handle.write(",".join(str(v) for v in row) + "\n")
    return str(path)


def write_spec(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    return str(path)


# ------------------------------------------------------------------------------ spec (no Spark)


def test_canonical_answers():
    assert spec.canonical(2.0) == "2" and spec.canonical("2.0") == "2" and spec.canonical(" 7 ") == "7"
    assert spec.canonical("refused") == "refused" and spec.canonical(0.5) == "0.5"
    assert spec.canonical(None) is None and spec.canonical(float("nan")) is None
    assert spec.sort_answers(["10", "9", "b", "a"]) == ["9", "10", "a", "b"]


def test_spec_parses_yaml_and_json_with_defaults():
    parsed = spec.parse_spec("targets: [vote]\ncolumns: {age: numeric, q1: {order: [low, mid, high]}}\n"
                             "missing_codes: {refused: [98, refused], not_asked: 99}")
    assert parsed.targets == ["vote"]
    assert parsed.columns["q1"] == {"type": "ordinal", "order": ["low", "mid", "high"]}
    codes = parsed.codes_for("q1")
    assert codes["refused"] == ["98", "refused"] and codes["not_asked"] == ["99"] and "" in codes["missing"]
    assert parsed.split["validation_fraction"] == 0.2 and parsed.infer["max_categories"] == 20
    as_json = spec.parse_spec(json.dumps({"targets": "vote", "id": "rid", "split": {"seed": 3}}))
    assert as_json.targets == ["vote"] and as_json.id_column == "rid" and as_json.split["seed"] == 3


@pytest.mark.parametrize("text, message", [
    ("targets: [vote\ncolumns: {", "does not parse"),
    ("- just a list", "must be a mapping"),
    ("columns: {a: numeric}", "'targets' must be a non-empty list"),
    ("targets: [a]\ncolumns: {b: fancy}", "type must be one of"),
    ("targets: [a]\ncolumns: {b: {type: numeric, order: [1, 2]}}", "only for ordinal"),
    ("targets: [a]\ncolumns: {a: numeric}", "must be categorical"),
    ("targets: [a]\nmissing_codes: {refused: [9], not_asked: [9]}", "both refused and not_asked"),
    ("targets: [a]\nmissing_codes: {skipped: [9]}", "unknown kind"),
    ("targets: [a]\nsplit: {validation_fraction: 1.5}", "between 0 and 1"),
    ("targets: [a]\ntargetz: [b]", "unknown key"),
])
def test_bad_specs_are_rejected_with_a_reason(text, message):
    with pytest.raises(SpecError, match=message):
        spec.parse_spec(text)


@pytest.fixture
def small_csv(tmp_path):
    rows = [[i, ["yes", "no"][i % 2], i % 3, "x", 98 if i == 3 else i % 5] for i in range(40)]
    return write_csv(tmp_path / "r.csv", ["rid", "q_target", "q_other", "q_const", "q_num"], rows)


def test_preflight_checks_targets_and_columns(small_csv, tmp_path):
    ok = spec.parse_spec("targets: [q_target]\nid: rid\ncolumns: {q_num: numeric}")
    fmt, header = spec.preflight(ok, small_csv)
    assert fmt == "csv" and header[:2] == ["rid", "q_target"]
    with pytest.raises(SpecError, match=r"target question\(s\) \['vote'\] not in the data"):
        spec.preflight(spec.parse_spec("targets: [q_target, vote]"), small_csv)
    with pytest.raises(SpecError, match="'q_const' has only the answer 'x'"):
        spec.preflight(spec.parse_spec("targets: [q_const]"), small_csv)
    # codes declared as not-answers do not count as answers either
    with pytest.raises(SpecError, match="has only the answer 'yes'"):
        spec.preflight(spec.parse_spec("targets: [q_target]\nmissing_codes: {refused: ['no']}"), small_csv)
    with pytest.raises(SpecError, match=r"lists column\(s\) \['nope'\]"):
        spec.preflight(spec.parse_spec("targets: [q_target]\ncolumns: {nope: numeric}"), small_csv)
    # Parquet input: same checks from the schema and the target column only
    import pyarrow as pa
    parquet = str(tmp_path / "pq")
    hdfs_io.write_parquet(pa.table({"a": [1, 1, 1], "b": [1.0, 2.0, 1.0]}), parquet)
    assert spec.preflight(spec.parse_spec("targets: [b]"), parquet)[0] == "parquet"
    with pytest.raises(SpecError, match="'a' has only the answer '1'"):
        spec.preflight(spec.parse_spec("targets: [a]"), parquet)


@pytest.fixture
def no_spark(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("Spark was started before the input was checked")
    monkeypatch.setattr(cli, "job_session", fail)


@pytest.mark.parametrize("spec_text, message", [
    ("targets: [missing_question]", "not in the data"),
    ("targets: [q_const]", "has only the answer 'x'"),
    ("targets: [q_target\n", "does not parse"),
])
def test_cli_prep_rejects_bad_input_before_spark(no_spark, small_csv, tmp_path, capsys, spec_text, message):
    spec_uri = write_spec(tmp_path / "spec.yaml", spec_text)
    rc = cli.main(["prep", "--data", small_csv, "--spec", spec_uri, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("tfos-survey ") and ": error:" in err.splitlines()[0]
    assert not os.path.exists(tmp_path / "out")


def test_cli_other_commands_reject_missing_inputs_before_spark(no_spark, tmp_path, capsys):
    assert cli.main(["train", "--prep", str(tmp_path / "nope"), "--model-dir", "m", "--export", "e"]) == 2
    assert "run `tfos-survey prep` first" in capsys.readouterr().err
    assert cli.main(["prep", "--data", str(tmp_path / "nope.csv"), "--spec", str(tmp_path / "s.yaml"),
                     "--out", "o"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["example", "prep", "train", "evaluate", "predict", "stream-predict",
                                     "stream-monitor"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: tfos-survey {command}" in capsys.readouterr().out


# ------------------------------------------------------------------------------ data and model (no Spark)


def test_synthetic_survey_has_codes_and_is_reproducible():
    table, generated = data.synthetic_survey(rows=300, questions=40, targets=2, seed=5)
    again, _ = data.synthetic_survey(rows=300, questions=40, targets=2, seed=5)
    assert table.equals(again)
    assert table.num_columns == 1 + 40 + 2 and generated["targets"] == ["t1", "t2"]
    values = np.concatenate([np.array(table.column(f"q{q:04d}").to_pylist()) for q in range(1, 41)])
    for code in ("", "98", "99"):
        assert (values == code).mean() > 0.005, f"code {code!r} should occur"
    assert 0.05 < (np.array(table.column("t1").to_pylist()) == "not asked").mean() < 0.2
    parsed = spec.parse_spec(json.dumps(generated))
    assert parsed.codes_for("q0001")["not_asked"] == ["99", "not asked"]


def test_anes96_ships_offline():
    table = data.anes96_table()
    assert table.num_rows == 944 and {"vote", "PID", "selfLR", "respondent"} <= set(table.column_names)
    spec.parse_spec(json.dumps(data.ANES96_SPEC))


def tiny_plan():
    return {"inputs": {"c_a": "int64", "n_b": "float32", "m_b__missing": "float32"},
            "features": [{"type": "categorical", "input": "c_a", "vocab_size": 6, "column": "a"},
                         {"type": "numeric", "input": "n_b", "column": "b"}],
            "targets": [{"label": "y_t", "classes": ["x", "y", "z"]}, {"label": "y_u", "classes": ["p", "q"]}],
            "labels": ["y_t", "y_u"]}


def test_model_heads_masked_loss_and_keras_file(tmp_path):
    import keras
    from tfos_jobs.survey.model import SurveyTask, masked_cross_entropy, target_metrics
    task = SurveyTask(tiny_plan(), hidden=[8])
    model = task.build_model()
    features = {"c_a": np.array([0, 5, 9], dtype=np.int64), "n_b": np.array([0.1, -1, 2], dtype=np.float32),
                "m_b__missing": np.array([0, 1, 0], dtype=np.float32)}
    out = model(features)
    assert set(out) == {"y_t", "y_u"} and tuple(out["y_t"].shape) == (3, 3) and tuple(out["y_u"].shape) == (3, 2)
    np.testing.assert_allclose(np.asarray(out["y_t"]).sum(axis=1), 1.0, rtol=1e-5)
    loss = np.asarray(masked_cross_entropy(np.array([-1, 0, 2]), out["y_t"]))
    assert loss[0] == 0.0 and loss[1] > 0 and loss[2] > 0
    both = np.asarray(task.per_example_loss({"y_t": np.array([-1, 0, 2]), "y_u": np.array([1, -1, 0])}, out))
    assert both[0] > 0 and both[1] == pytest.approx(loss[1], rel=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded(features)["y_u"]), np.asarray(out["y_u"]), rtol=1e-5)
    metrics = target_metrics(np.array([-1, 0, 1]), np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]))
    assert metrics["rows"] == 2 and metrics["accuracy"] == 0.5
    assert metrics["log_loss"] == pytest.approx(-(np.log(0.8) + np.log(0.3)) / 2)


def test_majority_baseline_and_table():
    from tfos_jobs.survey.steps import format_table, majority_metrics
    m = majority_metrics({"classes": ["a", "b"], "train_counts": [30, 10], "valid_counts": [6, 4]})
    assert m["answer"] == "a" and m["accuracy"] == 0.6 and m["rows"] == 10
    assert m["log_loss"] == pytest.approx(-(6 * np.log(0.75) + 4 * np.log(0.25)) / 10)
    entry = {k: {"rows": 10, "accuracy": 0.5, "log_loss": 0.7} for k in ("model", "majority", "logistic_regression")}
    table = format_table({"targets": {"vote": dict(entry, answers=2)}})
    assert table.splitlines()[0].split()[:3] == ["target", "answers", "rows"] and "vote" in table


# ------------------------------------------------------------------------------ Spark


@pytest.fixture(scope="module")
def synthetic_prep(local_spark, tmp_path_factory):
    from tfos_jobs.survey import prep
    root = tmp_path_factory.mktemp("synthetic")
    table, generated = data.synthetic_survey(rows=600, questions=30, targets=2, seed=1)
    csv_uri = data.write_csv(table, str(root / "survey.csv"))
    parsed = spec.parse_spec(json.dumps(generated))
    plan = prep.run_prep(local_spark, parsed, csv_uri, str(root / "prep"), files=3)
    return table, generated, parsed, plan, root


@pytest.mark.slow
def test_prep_infers_encodes_and_splits_deterministically(local_spark, synthetic_prep):
    from tfos_jobs.survey import prep
    table, generated, parsed, plan, tmp_path = synthetic_prep
    features = {f["column"]: f for f in plan["features"]}
    assert len(features) + len(plan["ignored"]) == 30
    listed = [c for c, entry in generated["columns"].items()]
    assert listed and all(features[c]["type"] == "ordinal" and features[c]["source"] == "spec" for c in listed)
    nominal = [c for c in features if table.column(c).to_pylist()[0].startswith("opt_")
               or any(v.startswith("opt_") for v in table.column(c).to_pylist()[:50])]
    assert nominal and all(features[c]["type"] == "categorical" for c in nominal)
    # the refused code of text questions is "refused", never an answer in the vocabulary
    assert all("refused" not in features[c]["vocab"] and "not asked" not in features[c]["vocab"] for c in nominal)
    inferred_likert = [c for c, f in features.items() if f["source"] == "inferred" and f["type"] == "categorical"
                       and set(f["vocab"]) <= {"1", "2", "3", "4", "5"}]
    assert inferred_likert, "unlisted 1-5 scales are inferred as categorical codes"
    assert any(f["type"] == "numeric" for f in features.values())
    ordinal = features[listed[0]]
    assert set(ordinal["indicators"]) == {"missing", "refused", "not_asked"}

    version = prep.prep_dir(str(tmp_path / "prep"))   # the splits and the plan: one published version
    assert hdfs_io.published_kind(str(tmp_path / "prep")) == prep.KIND
    train = hdfs_io.read_parquet(hdfs_io.join(version, "train"))
    valid = hdfs_io.read_parquet(hdfs_io.join(version, "valid"))
    assert len(hdfs_io.list_data_files(hdfs_io.join(version, "train"))) == 3
    assert train.num_rows + valid.num_rows == 600 and 60 < valid.num_rows < 180
    assert set(train.column_names) == {"rid", *plan["inputs"], *plan["labels"]}
    assert train.schema.field(ordinal["input"]).type == "float" and train.schema.field("y_t1").type == "int64"
    raw = {r: i for i, r in enumerate(table.column("rid").to_pylist())}
    rows = [raw[r] for r in train.column("rid").to_pylist()]
    source = np.array(table.column(listed[0]).to_pylist(), dtype=object)[rows]
    encoded = train.column(ordinal["input"]).to_numpy()
    refused = train.column(ordinal["indicators"]["refused"]).to_numpy()
    not_asked = train.column(ordinal["indicators"]["not_asked"]).to_numpy()
    np.testing.assert_array_equal(refused == 1, source == "98")
    np.testing.assert_array_equal(not_asked == 1, source == "99")
    answered = np.isin(source, ["1", "2", "3", "4", "5"])
    np.testing.assert_allclose(encoded[answered], (source[answered].astype(int) - 1) / 4.0, rtol=1e-6)
    cat = features[nominal[0]]
    ids = train.column(cat["input"]).to_numpy()
    cat_source = np.array(table.column(nominal[0]).to_pylist(), dtype=object)[rows]
    assert np.all(ids[cat_source == "refused"] == 2) and np.all(ids[cat_source == "not asked"] == 3)
    assert np.all(ids[cat_source == ""] == 1) and np.all(ids[np.char.startswith(cat_source.astype(str), "opt_")] >= 4)
    labels = train.column("y_t1").to_numpy()
    t1 = np.array(table.column("t1").to_pylist(), dtype=object)[rows]
    assert np.all(labels[t1 == "not asked"] == -1) and np.all(labels[t1 != "not asked"] >= 0)
    target = plan["targets"][0]
    assert target["train_not_answered"]["not_asked"] == int((t1 == "not asked").sum())

    # the split depends on the id only: the same respondents land in validation from Parquet input
    # written with another file layout
    parquet = str(tmp_path / "survey_pq")
    hdfs_io.write_parquet(table, parquet, rows_per_file=250)
    prep.run_prep(local_spark, parsed, parquet, str(tmp_path / "prep2"), files=2)
    valid2 = hdfs_io.read_parquet(hdfs_io.join(prep.prep_dir(str(tmp_path / "prep2")), "valid"))
    assert sorted(valid2.column("rid").to_pylist()) == sorted(valid.column("rid").to_pylist())
    with hdfs_io.open(hdfs_io.join(version, "prep.json"), "r") as handle:
        assert json.load(handle)["rows"]["valid"] == valid.num_rows


@pytest.mark.slow
def test_parameter_server_training_on_synthetic_survey(local_spark, synthetic_prep):
    from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig
    from tfos_jobs.survey import steps
    _, _, _, plan, root = synthetic_prep
    result = steps.train(local_spark.sparkContext, plan, str(root / "prep"), {"hidden": [32]},
                         scaling=ScalingConfig(strategy="ps", num_workers=1, num_ps=1),
                         loop=LoopConfig(steps=40, batch_size=32, log_every=20),
                         run=RunConfig(model_dir=str(root / "model"), export_uri=str(root / "export")))
    assert sorted(result.nodes) == ["chief:0", "ps:0", "worker:0"] and result.steps == 40
    assert hdfs_io.is_published(str(root / "export"))
    assert_survey_model_learned(plan, str(root / "prep"), str(root / "export"), result.metrics)


def assert_survey_model_learned(plan, prep_uri, export_uri, reported, margin=0.05, cache=None):
    """The export's own predictions on the validation rows, scored here, against the majority answer of
    the training rows (the best accuracy of a model that learned nothing from the other answers) and the
    training answer frequencies (the best log loss of such a model); ``reported``: the chief's figures."""
    from tfos_jobs.export import load_serving
    from tfos_jobs.survey.model import predict_probabilities
    from tfos_jobs.survey import prep
    version = prep.prep_dir(prep_uri)
    train = hdfs_io.read_parquet(hdfs_io.join(version, "train"))
    valid = hdfs_io.read_parquet(hdfs_io.join(version, "valid"))
    probabilities = predict_probabilities(load_serving(export_uri, cache),
                                          {name: valid.column(name).to_numpy() for name in plan["inputs"]})
    out = {}
    for t in plan["targets"]:
        label = t["label"]
        labels = valid.column(label).to_numpy()
        answered, p = labels[labels >= 0], probabilities[label][labels >= 0]
        train_labels = train.column(label).to_numpy()
        train_labels = train_labels[train_labels >= 0]
        frequencies = np.bincount(train_labels, minlength=len(t["classes"])) / len(train_labels)
        figures = {"rows": len(answered), "accuracy": float(np.mean(p.argmax(axis=1) == answered)),
                   "majority_accuracy": float(np.mean(answered == frequencies.argmax())),
                   "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(answered)), answered], 1e-7, 1)))),
                   "frequencies_log_loss": float(-np.mean(np.log(np.clip(frequencies[answered], 1e-7, 1)))),
                   "reported": {k: v for k, v in reported.items() if k.startswith(f"valid/{label}/")}}
        print("learning check:", t.get("column", label), figures)
        assert figures["accuracy"] > figures["majority_accuracy"] + margin, figures
        assert figures["log_loss"] < figures["frequencies_log_loss"], figures
        if figures["reported"]:
            assert figures["reported"][f"valid/{label}/rows"] == figures["rows"] == sum(t["valid_counts"]), figures
            assert figures["reported"][f"valid/{label}/accuracy"] == pytest.approx(figures["accuracy"]), figures
        out[label] = figures
    return out


@pytest.fixture(scope="module")
def anes96_run(local_spark, tmp_path_factory):
    """The real example end to end: prep, train (mwms, 2 workers), evaluate and predict."""
    from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig
    from tfos_jobs.survey import prep, steps
    root = tmp_path_factory.mktemp("anes96")
    data_uri, spec_uri = data.write_example(str(root / "example"))
    parsed = spec.load_spec(spec_uri)
    fmt, header = spec.preflight(parsed, data_uri)
    plan = prep.run_prep(local_spark, parsed, data_uri, str(root / "prep"), fmt=fmt, header=header)
    result = steps.train(local_spark.sparkContext, plan, str(root / "prep"),
                         scaling=ScalingConfig(strategy="mwms", num_workers=2),
                         loop=LoopConfig(epochs=30, batch_size=64, log_every=100),
                         run=RunConfig(model_dir=str(root / "model"), export_uri=str(root / "export")))
    report = steps.evaluate(local_spark, plan, str(root / "prep"), str(root / "export"), str(root / "eval"))
    new = data.anes96_table().drop(["vote", "PID", "selfLR"]).slice(0, 40)
    new_uri = data.write_csv(new, str(root / "new.csv"))
    predicted = steps.predict(local_spark, plan, str(root / "export"), new_uri, str(root / "pred"))
    return {"root": root, "plan": plan, "result": result, "report": report, "predicted": predicted}


@pytest.mark.slow
def test_anes96_model_beats_majority_on_every_target(anes96_run):
    from tfos_jobs.survey.steps import format_table
    report = anes96_run["report"]
    print(format_table(report))
    assert set(report["targets"]) == {"vote", "PID", "selfLR"}
    for name, entry in report["targets"].items():
        model, majority, lr = entry["model"], entry["majority"], entry["logistic_regression"]
        assert model["rows"] == majority["rows"] == lr["rows"] > 150
        assert model["accuracy"] > majority["accuracy"], f"{name}: {model} vs majority {majority}"
        assert model["log_loss"] < majority["log_loss"], f"{name}: {model} vs majority {majority}"
        assert 0 < lr["accuracy"] <= 1 and lr["log_loss"] > 0
    # the same, measured here from the export's own predictions and the prepped rows
    assert_survey_model_learned(anes96_run["plan"], str(anes96_run["root"] / "prep"),
                                str(anes96_run["root"] / "export"), anes96_run["result"].metrics, margin=0.02)
    # the chief's in-training evaluation agrees with the Spark-side scoring of the export
    metrics = anes96_run["result"].metrics
    for t in anes96_run["plan"]["targets"]:
        expected = report["targets"][t["column"]]["model"]
        assert metrics[f"valid/{t['label']}/accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        assert metrics[f"valid/{t['label']}/log_loss"] == pytest.approx(expected["log_loss"], rel=1e-3)
    root = anes96_run["root"]
    evaluation = hdfs_io.resolve(str(root / "eval"))   # a published unit: its current version
    with open(os.path.join(evaluation, "evaluation.json")) as handle:
        assert json.load(handle)["targets"]["vote"]["answers"] == 2
    text = open(os.path.join(evaluation, "evaluation.txt")).read()
    assert "acc majority" in text and "logloss LR" in text and "selfLR" in text
    assert hdfs_io.is_published(str(root / "eval"))


@pytest.mark.slow
def test_anes96_predictions_are_probabilities(anes96_run):
    root, plan = anes96_run["root"], anes96_run["plan"]
    assert hdfs_io.is_published(str(root / "pred")) and anes96_run["predicted"]["rows"] == 40
    table = hdfs_io.read_parquet(str(root / "pred")).to_pandas().sort_values("respondent", key=lambda s: s.astype(int))
    assert table["respondent"].tolist() == [str(i) for i in range(1, 41)]
    for t in plan["targets"]:
        columns = [f"{t['column']}__p_{c}" for c in t["classes"]]
        probabilities = table[columns].to_numpy()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
        best = np.array(t["classes"])[probabilities.argmax(axis=1)]
        assert table[f"{t['column']}__answer"].tolist() == best.tolist()
    with pytest.raises(FileExistsError):
        from tfos_jobs.survey import steps
        steps.predict(None, plan, str(root / "export"), str(root / "new.csv"), str(root / "pred"))


@pytest.mark.slow
def test_export_from_another_prep_is_refused(anes96_run, tmp_path):
    from tfos_jobs.survey.steps import check_export
    plan = json.loads(json.dumps(anes96_run["plan"]))
    plan["targets"][0]["classes"] = ["0", "1", "2"]
    with pytest.raises(ValueError, match="not trained on this prep"):
        check_export(plan, str(anes96_run["root"] / "export"))
    from tfos_jobs.survey.steps import export_plan    # the plan the export carries is the prep's own
    assert check_export(export_plan(str(anes96_run["root"] / "export")), str(anes96_run["root"] / "export"))


STREAM_T0_MS, STREAM_STEP_MS, ANSWER_DELAY_MS = 1_780_000_000_000, 60_000, 120_000


@pytest.fixture(scope="module")
def survey_stream(anes96_run):
    """`tfos-survey stream-predict` as a user types it, on 40 respondents' JSON records (a minute apart)
    landing in a directory, two of them malformed."""
    from cluster.testing import describe, run_process
    root = anes96_run["root"]
    landing = root / "landing"
    landing.mkdir()
    rows = data.anes96_table().drop(["vote", "PID", "selfLR"]).slice(0, 40).to_pylist()
    for i in range(2):   # answers as JSON numbers and strings: both canonicalized like the CSV's text
        lines = [json.dumps({**{k: (str(v) if i else v) for k, v in r.items()},
                             "event_time": STREAM_T0_MS + STREAM_STEP_MS * (20 * i + j)})
                 for j, r in enumerate(rows[i * 20:(i + 1) * 20])]
        if i:
            lines += ["not json", json.dumps({"age": 40})]
        (landing / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    done = run_process([sys.executable, "-m", "tfos_jobs.survey", "stream-predict", "--export", str(root / "export"),
                        "--input", str(landing), "--output", str(root / "stream"), "--checkpoint",
                        str(root / "stream-ckpt"), "--trigger", "available-now", "--master", "local[2]"], timeout=600)
    assert done.returncode == 0, describe(done)
    return root, done


@pytest.mark.slow
def test_stream_predict_answers_like_batch_predict(anes96_run, survey_stream, local_spark):
    """JSON records landing in a directory are answered with the export's plan exactly as `predict`
    answers the same respondents; bad records are quarantined."""
    from cluster.testing import describe
    root, done = survey_stream
    stream = local_spark.read.parquet(f"file://{root}/stream").toPandas()
    quarantine = local_spark.read.parquet(f"file://{root}/stream.quarantine").toPandas()
    batch = hdfs_io.read_parquet(str(root / "pred")).to_pandas()
    assert sorted(quarantine["reason_code"]) == ["id", "record"], (quarantine, describe(done))
    assert stream["id"].is_unique and len(stream) == 40, stream
    merged = stream.merge(batch, left_on="id", right_on="respondent", suffixes=("", "_batch"))
    assert len(merged) == 40
    for t in anes96_run["plan"]["targets"]:
        for c in t["classes"]:
            np.testing.assert_allclose(merged[f"{t['column']}__p_{c}"], merged[f"{t['column']}__p_{c}_batch"],
                                       rtol=1e-5, err_msg=t["column"])
        assert (merged[f"{t['column']}__answer"] == merged[f"{t['column']}__answer_batch"]).all()
    assert (merged["model_version"] == merged["model_version_batch"]).all()
    assert (merged["event_time"].astype("datetime64[ms]").astype("int64")
            == STREAM_T0_MS + STREAM_STEP_MS * (merged["id"].astype(int) - 1)).all()


@pytest.mark.slow
def test_stream_monitor_scores_later_answers_per_question(anes96_run, survey_stream, local_spark):
    """`tfos-survey stream-monitor`: answers given two minutes after the records (some never, some too
    late, one not among the answers the model knows) label the predictions; every question's landmark,
    fading and tilted windows equal the same figures computed here from the predictions and answers."""
    import math
    from cluster.testing import describe, run_process
    from tfos_jobs.streaming import quality
    from tfos_jobs.streaming.pipeline import read_metrics
    from tfos_jobs.streaming.windows import CALENDAR, WindowSet, WindowSpec
    root, _ = survey_stream
    plan = anes96_run["plan"]
    full = data.anes96_table().slice(0, 40).to_pylist()
    answers, expected = root / "answers", []
    answers.mkdir()
    for f in range(2):
        lines = []
        for i in range(20 * f, 20 * f + 20):
            if i % 5 == 4:
                continue                       # never answers
            late = i % 7 == 3                  # answers after --max-answer-delay-s
            record = {"respondent": full[i]["respondent"], "vote": full[i]["vote"], "PID": full[i]["PID"],
                      "selfLR": 99 if i == 0 else full[i]["selfLR"],      # 99: not an answer it knows
                      "event_time": STREAM_T0_MS + STREAM_STEP_MS * i + (900_000 if late else ANSWER_DELAY_MS)}
            lines.append(json.dumps(record))
            if not late:
                expected += [(str(full[i]["respondent"]), t["column"], str(record[t["column"]]))
                             for t in plan["targets"] if str(record[t["column"]]) in t["classes"]]
        (answers / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
        os.utime(answers / f"part-{f}.jsonl", (1e9 + f, 1e9 + f))     # land in order
    done = run_process([sys.executable, "-m", "tfos_jobs.survey", "stream-monitor", "--export", str(root / "export"),
                        "--predictions", str(root / "stream"), "--answers", str(answers), "--metrics",
                        str(root / "metrics"), "--checkpoint", str(root / "monitor-ckpt"), "--trigger",
                        "available-now", "--max-answer-delay-s", "600", "--watermark-s", "3600",
                        "--sliding", "1200:600", "--half-life-s", "600", "--master", "local[2]"], timeout=600)
    assert done.returncode == 0, describe(done)
    stream = local_spark.read.parquet(f"file://{root}/stream").toPandas().set_index("id")
    records = read_metrics(str(root / "metrics"))
    assert {r["series"] for r in records} == {t["column"] for t in plan["targets"]}, describe(done)
    checked = 0
    for t in plan["targets"]:
        q = t["column"]
        rows = [(rid, given) for rid, question, given in expected if question == q]
        p = stream.loc[[rid for rid, _ in rows]]
        probs = p[[f"{q}__p_{c}" for c in t["classes"]]].to_numpy(dtype="float64")
        given = np.array([t["classes"].index(a) for _, a in rows])
        label = (p[f"{q}__answer"].to_numpy() == np.array([a for _, a in rows])).astype("float64")
        loss = -np.log(np.clip(probs[np.arange(len(rows)), given], quality.EPS, 1 - quality.EPS))
        times = p["event_time"].astype("datetime64[ms]").astype("int64").to_numpy()
        reference = WindowSet(WindowSpec(half_life_s=600, tilted=CALENDAR))
        reference.update(times, label, probs.max(axis=1), loss)
        want = {(w["window_kind"], w["window"], w["window_start_ms"]): w for w in reference.records()}
        got = {(r["window_kind"], r["window"], r["window_start_ms"]): r for r in records
               if r["series"] == q and r["window_kind"] != "sliding"}
        assert set(got) == set(want), (q, sorted(got), sorted(want))
        landmark = got[("landmark", "since first row", int(times.min()))]
        assert landmark["count"] == len(rows) and landmark["ctr"] == pytest.approx(label.mean()), (q, landmark)
        assert landmark["log_loss"] == pytest.approx(loss.mean(), rel=1e-6), (q, landmark)
        assert math.isfinite(landmark["log_loss"]) and landmark["model_version"] == p["model_version"].iloc[0]
        for key, w in want.items():
            for name in quality.summary(quality.empty(1)):
                want_value = None if w[name] is None else pytest.approx(w[name], rel=1e-6, abs=1e-9)
                assert got[key][name] == want_value, (q, key, name, got[key][name], w[name])
        checked += 1
    assert checked == len(plan["targets"])
    assert "[tfos-stream] landmark" in done.stdout, describe(done)
