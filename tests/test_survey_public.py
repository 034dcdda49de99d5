"""The survey model's parts that keep it at least as good as logistic regression, on public surveys
(``tests/survey_public.py``): the fitted LR inside the model, ordinal targets, k-fold splits, early
stopping. The quality figures themselves come from ``benchmarks/survey_quality.py``."""
import numpy as np
import pytest

import hdfs_io
import survey_public
from tfos_jobs.survey import linear, prep, schema, steps
from tfos_jobs.survey.model import (LINEAR, SurveyTask, build_survey_model, masked_ranked_probability_score,
                                    median_answer, target_metrics)

PLAN = {"inputs": {"c_a": "int64", "n_b": "float32"},
        "features": [{"type": "categorical", "input": "c_a", "vocab_size": 6}, {"type": "numeric", "input": "n_b"}],
        "targets": [{"label": "y_t", "classes": ["1", "2", "3"], "type": "ordinal"}]}


def test_model_starts_as_its_logistic_regression():
    rng = np.random.default_rng(0)
    weights = {"y_t": {"table": rng.normal(size=(6, 3)), "kernel": rng.normal(size=(1, 3)), "bias": rng.normal(size=3)}}
    model = build_survey_model(PLAN, linear=weights)
    x = {"c_a": np.array([0, 3, 5, 9]), "n_b": np.array([0.5, -1.0, 2.0, 0.0], dtype="float32")}
    out = model.predict(x, verbose=0)
    assert sorted(out) == ["y_t", "y_t" + LINEAR]
    w = weights["y_t"]
    logits = w["table"][np.clip(x["c_a"], 0, 5)] + x["n_b"][:, None] * w["kernel"][0] + w["bias"]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["y_t" + LINEAR], expected, rtol=1e-5)
    np.testing.assert_allclose(out["y_t"], out["y_t" + LINEAR], rtol=1e-6)   # the residual starts at zero
    assert not any("linear" in v.path for v in model.trainable_variables)


def test_ordinal_loss_and_metrics():
    p = np.array([[1, 0, 0], [1, 0, 0], [0.2, 0.3, 0.5]], dtype="float32")
    # a sure answer one step off costs half of one two steps off; unanswered rows cost nothing
    np.testing.assert_allclose(np.asarray(masked_ranked_probability_score(np.array([1, 2, -1]), p)), [0.5, 1.0, 0.0])
    assert median_answer([[0.1, 0.3, 0.6], [0.5, 0.2, 0.3], [0.3, 0.1, 0.6]]).tolist() == [2, 0, 2]
    metrics = target_metrics([2, 0, 1, -1], [[0.1, 0.3, 0.6], [0.5, 0.2, 0.3], [0.6, 0.3, 0.1], [1, 0, 0]], ordinal=True)
    assert metrics["rows"] == 3 and metrics["mae"] == pytest.approx(1 / 3)
    task = SurveyTask({**PLAN, "spec": {}, "targets": [{**PLAN["targets"][0], "column": "t"}], "labels": ["y_t"]})
    loss = task.per_example_loss({"y_t": np.array([2, 0])}, {"y_t": p[:2]})
    assert np.asarray(loss)[0] > 16 and np.asarray(loss)[1] < 1e-3   # cross-entropy + RPS


def test_ordinal_targets_in_the_spec():
    spec = schema.parse_spec("targets: [q]\ncolumns: {q: {type: ordinal, order: [None, Some, Freq]}}")
    assert spec.columns["q"]["order"] == ["None", "Some", "Freq"]
    assert "None" not in spec.codes_for("q")["missing"]   # an answer the order lists is an answer
    with pytest.raises(schema.SpecError, match="fold 5 .* does not fit"):
        schema.parse_spec("targets: [q]\nsplit: {validation_fraction: 0.2, fold: 5}")


def test_choose_heads_for_predict():
    plan = {"targets": [{"label": "a"}, {"label": "b"}]}
    metrics = {"valid/a/log_loss": 0.5, "valid/a/lr/log_loss": 0.6, "valid/b/log_loss": 0.7, "valid/b/lr/log_loss": 0.7}
    assert steps.choose_heads(plan, metrics, "best") == {"a": "model", "b": "logistic_regression"}
    assert set(steps.choose_heads(plan, metrics, "lr").values()) == {"logistic_regression"}
    with pytest.raises(ValueError, match="carries no logistic regression"):
        steps.choose_heads(plan, {"valid/a/log_loss": 0.5}, "best", "old-export")


@pytest.fixture(scope="module")
def mass_survey(local_spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("mass_survey")
    data, spec_path = survey_public.write_dataset("mass_survey", str(root))
    spec = schema.load_spec(spec_path)
    plans = [prep.run_prep(local_spark, spec, data, str(root / f"prep-{fold}"), validation_fraction=0.2, fold=fold,
                           log=lambda _: None) for fold in (0, 1)]
    return {"root": root, "plans": plans}


@pytest.mark.slow
def test_k_fold_validation_sets_are_disjoint(mass_survey):
    ids = [set(hdfs_io.read_parquet(str(mass_survey["root"] / f"prep-{fold}" / "valid"),
                                    columns=["rownames"]).column(0).to_pylist()) for fold in (0, 1)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert 30 < len(ids[0]) < 70 and 30 < len(ids[1]) < 70   # a fifth of 237 each
    exer = next(t for t in mass_survey["plans"][0]["targets"] if t["column"] == "Exer")
    assert exer["type"] == "ordinal" and exer["classes"] == ["None", "Some", "Freq"] and exer["train_counts"][0] > 10


def _encoded(uri):
    table = hdfs_io.read_parquet(uri)
    return {name: table.column(name).to_numpy() for name in table.column_names}


@pytest.mark.slow
def test_linear_head_reproduces_the_fitted_regression(mass_survey):
    """The regression laid out in the model's LinearLogits gives scikit-learn's own probabilities on
    the validation rows, answers unseen in training included."""
    plan = mass_survey["plans"][0]
    directory = prep.prep_dir(str(mass_survey["root"] / "prep-0"))
    train, valid = _encoded(hdfs_io.join(directory, "train")), _encoded(hdfs_io.join(directory, "valid"))
    features = {n: train[n] for n in plan["inputs"]}
    weights, regs = linear.fit_linear(plan, features, {n: train[n] for n in plan["labels"]})
    assert set(regs) == set(plan["labels"]) and set(regs.values()) <= set(linear.REG_GRID)
    model = build_survey_model(plan, linear=weights)
    ours = model.predict({n: valid[n] for n in plan["inputs"]}, verbose=0)
    x_valid = linear.design(plan, {n: valid[n] for n in plan["inputs"]})
    for t in plan["targets"]:
        y = train[t["label"]]
        reference, _ = linear._fit(linear.design(plan, features)[y >= 0], y[y >= 0], (regs[t["label"]],))
        expected = np.zeros((len(valid["rownames"]), len(t["classes"])))
        expected[:, reference.classes_] = reference.predict_proba(x_valid)
        np.testing.assert_allclose(ours[t["label"] + LINEAR], expected, atol=1e-4, err_msg=t["column"])
