"""Per-target evaluation on the validation split: the trained model against two baselines computed in
the same job, on the same rows (those where the target was answered).

* ``model``: the export scored on Spark (:func:`tfos_jobs.scoring.score_dataframe_vectors`);
* ``majority``: always the training split's most frequent answer (accuracy); its log loss uses the
  training answer frequencies as probabilities (a constant predictor that puts probability 1 on one
  answer would have infinite log loss);
* ``logistic_regression``: Spark MLlib multinomial logistic regression per target on the same encoded
  features (categorical ids one-hot encoded), trained on the training split.

Written atomically to ``<out>/evaluation.json`` and ``<out>/evaluation.txt`` (a readable table).
"""
import json
import math
import os
import time

import hdfs_io
from tfos_jobs import prep as gprep
from tfos_jobs import scoring
from tfos_jobs.survey.prep import plan_id
from tfos_jobs.survey.spec import dumps

EPS = 1e-7
METHODS = ("model", "majority", "logistic_regression")


def check_export(plan, export_uri):
    """The export exists, is complete and was trained on this plan's encoding; return its metrics."""
    if not hdfs_io.exists(export_uri):
        raise FileNotFoundError(f"model export {export_uri} does not exist: run `tfos-survey train` first")
    hdfs_io.require_published(export_uri)
    with hdfs_io.open(hdfs_io.join(export_uri, "metrics.json"), "r") as handle:
        metrics = json.load(handle)
    if metrics.get("survey_plan_id") != plan_id(plan):
        raise ValueError(f"the model at {export_uri} was not trained on this prep output (its encoding differs): "
                         "train again on this prep, or pass the prep it was trained on")
    return metrics


def probability_metrics(df, label, probabilities):
    """``{"rows", "accuracy", "log_loss"}`` from a Spark DataFrame with an int label column and an
    array<float> probability column (answered rows only), in one aggregation."""
    from pyspark.sql import functions as F
    answered = df.where(F.col(label) >= 0)
    p = F.col(probabilities)
    predicted = F.array_position(p, F.array_max(p)) - 1
    picked = F.element_at(p, (F.col(label) + 1).cast("int"))
    row = answered.agg(F.count(F.lit(1)).alias("rows"),
                       F.avg((predicted == F.col(label)).cast("double")).alias("accuracy"),
                       F.avg(-F.log(F.greatest(picked.cast("double"), F.lit(EPS)))).alias("log_loss")).collect()[0]
    return {"rows": int(row["rows"]), "accuracy": _float(row["accuracy"]), "log_loss": _float(row["log_loss"])}


def _float(value):
    return float("nan") if value is None else float(value)


def majority_metrics(target):
    """Majority-class baseline from the plan's training and validation answer counts."""
    train, valid = target["train_counts"], target["valid_counts"]
    total_train, total_valid = sum(train), sum(valid)
    majority = max(range(len(train)), key=lambda i: train[i])
    if total_valid == 0:
        return {"rows": 0, "accuracy": float("nan"), "log_loss": float("nan"), "answer": target["classes"][majority]}
    prior = [max(n / total_train, EPS) for n in train]
    log_loss = -sum(n * math.log(p) for n, p in zip(valid, prior)) / total_valid
    return {"rows": total_valid, "accuracy": valid[majority] / total_valid, "log_loss": log_loss,
            "answer": target["classes"][majority]}


def logistic_regression(train_df, valid_df, plan, reg_param=0.01, max_iter=100):
    """``{label: metrics}``: one MLlib multinomial LR per target on the encoded features."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import OneHotEncoder, VectorAssembler
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    categorical = [f["input"] for f in plan["features"] if f["type"] == "categorical"]
    dense = [name for name, dtype in plan["inputs"].items() if dtype == "float32"]
    stages = []
    if categorical:
        stages.append(OneHotEncoder(inputCols=categorical, outputCols=[f"{c}__onehot" for c in categorical],
                                    dropLast=False, handleInvalid="keep"))
    stages.append(VectorAssembler(inputCols=[f"{c}__onehot" for c in categorical] + dense,
                                  outputCol="__features", handleInvalid="error"))
    featurizer = Pipeline(stages=stages).fit(train_df)
    train_vec = featurizer.transform(train_df).select("__features", *plan["labels"]).cache()
    valid_vec = featurizer.transform(valid_df).select("__features", *plan["labels"]).cache()
    out = {}
    try:
        for target in plan["targets"]:
            label = target["label"]
            rows = train_vec.where(F.col(label) >= 0).withColumn("__label", F.col(label).cast("double"))
            lr = LogisticRegression(featuresCol="__features", labelCol="__label", family="multinomial",
                                    regParam=reg_param, elasticNetParam=0.0, maxIter=max_iter)
            model = lr.fit(rows)
            # classes absent from training can only make the fitted model narrower: pad to all classes
            scored = model.transform(valid_vec.where(F.col(label) >= 0)) \
                .select(F.col(label), vector_to_array("probability", "float32").alias("__p"))
            n = len(target["classes"])
            scored = scored.withColumn("__p", F.concat(F.col("__p"), F.array_repeat(F.lit(0.0).cast("float"),
                                                                                  F.lit(n) - F.size("__p"))))
            out[label] = probability_metrics(scored, label, "__p")
    finally:
        train_vec.unpersist()
        valid_vec.unpersist()
    return out


def run_evaluate(spark, plan, prep_uri, export_uri, out_uri, overwrite=False, lr_reg=0.01, lr_max_iter=100,
                 log=print):
    started = time.monotonic()
    check_export(plan, export_uri)
    if hdfs_io.exists(out_uri) and not overwrite:
        raise FileExistsError(f"{out_uri} exists; pass --overwrite to replace it")
    train_df = spark.read.parquet(gprep.spark_uri(hdfs_io.join(prep_uri, "train")))
    valid_df = spark.read.parquet(gprep.spark_uri(hdfs_io.join(prep_uri, "valid")))
    outputs = {t["label"]: f"__p_{t['label']}" for t in plan["targets"]}
    scored = scoring.score_dataframe_vectors(valid_df, export_uri, list(plan["inputs"]), outputs,
                                             keep=plan["labels"]).cache()
    try:
        model = {t["label"]: probability_metrics(scored, t["label"], outputs[t["label"]]) for t in plan["targets"]}
    finally:
        scored.unpersist()
    lr = logistic_regression(train_df, valid_df, plan, reg_param=lr_reg, max_iter=lr_max_iter)
    report = {"prep": prep_uri, "export": export_uri, "validation_rows": plan["rows"]["valid"],
              "seconds": None, "targets": {}}
    for t in plan["targets"]:
        report["targets"][t["column"]] = {
            "answers": len(t["classes"]),
            "model": model[t["label"]],
            "majority": majority_metrics(t),
            "logistic_regression": lr[t["label"]],
        }
    report["seconds"] = round(time.monotonic() - started, 1)
    table = format_table(report)
    with hdfs_io.publish(out_uri, overwrite=overwrite) as local:
        with open(os.path.join(local, "evaluation.json"), "w") as handle:
            handle.write(dumps(report))
        with open(os.path.join(local, "evaluation.txt"), "w") as handle:
            handle.write(table + "\n")
    log(table)
    return report


def format_table(report):
    """One line per target: answered validation rows, then accuracy and log loss of each method."""
    header = ["target", "answers", "rows", "acc model", "acc majority", "acc LR",
              "logloss model", "logloss majority", "logloss LR"]
    rows = []
    for name, entry in report["targets"].items():
        rows.append([name, str(entry["answers"]), str(entry["model"]["rows"])]
                    + [f"{entry[m]['accuracy']:.3f}" for m in METHODS]
                    + [f"{entry[m]['log_loss']:.3f}" for m in METHODS])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
