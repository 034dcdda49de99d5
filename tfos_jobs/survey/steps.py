"""The survey job's steps on top of the runtime: train, evaluate, predict (prep is in ``survey.prep``).

**Evaluation** (:func:`evaluate`): per target, on the validation split, the trained model against two
baselines, on the same rows (those where the target was answered).

* ``model``: the export scored on Spark (:func:`tfos_jobs.scoring.score_dataframe_vectors`);
* ``logistic_regression``: the regression exported inside the model (``<target>__lr``, see
  ``survey.model``), scored in the same pass; an export from before it carried one gets a Spark MLlib
  regression fitted here instead;
* ``majority``: always the training split's most frequent answer (accuracy); its log loss uses the
  training answer frequencies as probabilities (a constant predictor that puts probability 1 on one
  answer would have infinite log loss); for an ordinal target its MAE is that of the training median.

Ordinal targets add the mean absolute error in answer steps of each method's median answer; ``better``
names the one of model and LR with the lower log loss. Written atomically to
``<out>/evaluation.json`` and ``<out>/evaluation.txt`` (a readable table).

**Prediction** (:func:`predict`): answer probabilities for new respondents: encode them with the prep
plan, score them on Spark with the export, write Parquet atomically (complete with ``_SUCCESS``, or
nothing). Output columns: the id column (or ``--keep`` columns; by default every input column when the
spec has no id), then per target ``<target>__p_<answer>`` (float, one per answer, summing to 1) and
``<target>__answer`` (the most probable answer, as text), and ``<target>__model``: which answered it,
``model`` or ``logistic_regression`` (``--model best`` picks per target). Question columns absent from the new data
count as missing for every respondent (a warning names them); target columns, when present, are ignored.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

import hdfs_io
from tfos_jobs.export import METRICS_FILE, read_export_file
from tfos_jobs import scoring, sparkprep
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig, TrainConfig
from tfos_jobs.survey import linear, prep, schema
from tfos_jobs.survey.model import LINEAR, SurveyTask
from tfos_jobs.task import ParquetSource
from tfos_jobs.trainer import fit

# pyspark (heavy) is imported inside the functions that build Spark columns and models.
EPS = 1e-7
METHODS = ("model", "majority", "logistic_regression")

# The job's training defaults, for library callers and `tfos-survey train` alike: MultiWorkerMirrored
# with 2 workers, 64 respondents per worker per step, 20 epochs (survey data sets are small).
SCALING = ScalingConfig(strategy="mwms", num_workers=2, num_ps=1)
LOOP = LoopConfig(batch_size=64, epochs=20.0, checkpoint_every=200, log_every=50)
EARLY_STOPPING_DIR = "early_stopping"


# ------------------------------------------------------------------------------------ train


def train(sc: Any, plan: dict, prep_uri: str, model: dict | None = None, *, scaling: ScalingConfig = SCALING,
          loop: LoopConfig = LOOP, run: RunConfig) -> Any:
    """Fit the logistic regression per target (``survey.linear``), then train the network on top of it
    through the runtime on ``<prep>/train`` less the early-stopping rows, checking their log loss once
    an epoch (unless ``loop.validate_every`` says otherwise); returns the TrainResult.

    The split of the training rows is written to ``<model_dir>/early_stopping/{fit,holdout}``.
    ``model``: options over the spec's ``model`` section (``hidden``, ``embedding_dim``, ``dropout``,
    ``learning_rate``; None keeps the spec's)."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    if not run.model_dir:
        raise ValueError("the survey job writes the rows it holds out for early stopping to the model dir: give one")
    directory = prep.prep_dir(prep_uri)   # callers pass the directory they read the plan from: one version
    train_uri, work = hdfs_io.join(directory, "train"), hdfs_io.join(run.model_dir, EARLY_STOPPING_DIR)
    spark = SparkSession.getActiveSession() or SparkSession(sc)
    rows = linear.split_holdout(spark.read.parquet(sparkprep.spark_uri(train_uri)), plan).cache()
    try:
        files = max(scaling.num_workers, len(hdfs_io.list_data_files(train_uri)))
        kept = rows.where(~F.col(linear.HOLDOUT)).drop(linear.HOLDOUT)
        data_uri = sparkprep.write_part(kept, hdfs_io.join(work, "fit"), files, mode="overwrite")
        holdout_uri = sparkprep.write_part(rows.where(F.col(linear.HOLDOUT)).drop(linear.HOLDOUT),
                                           hdfs_io.join(work, "holdout"), 1, mode="overwrite")
    finally:
        rows.unpersist()
    parts = [hdfs_io.read_parquet(uri, columns=list(plan["inputs"]) + plan["labels"]) for uri in (data_uri, holdout_uri)]
    columns = {name: np.concatenate([part.column(name).to_numpy() for part in parts])
               for name in list(plan["inputs"]) + plan["labels"]}
    fitted, regs = linear.fit_linear(plan, {n: columns[n] for n in plan["inputs"]}, {n: columns[n] for n in plan["labels"]})
    if not loop.validate_every:   # once an epoch of the network's rows
        epoch = dataclasses.replace(loop, epochs=1.0, steps=0).total_steps(parts[0].num_rows, scaling)
        loop = dataclasses.replace(loop, validate_every=epoch)
    task = SurveyTask(plan, valid_uri=hdfs_io.join(directory, "valid"), linear=fitted, holdout_uri=holdout_uri,
                      lr_regularization=regs, **(model or {}))
    data = ParquetSource(data_uri, features=list(plan["inputs"]), labels=plan["labels"])
    return fit(sc, task, data, config=TrainConfig(scaling, run, loop))


# ------------------------------------------------------------------------------------ evaluate


def export_plan(export_uri: str) -> dict:
    """The prep plan published with the export (one unit with the model): predict needs no prep."""
    return read_export_file(export_uri, prep.PLAN_FILE, "survey model export")


def check_export(plan: dict, export_uri: str) -> dict:
    """The export exists, is complete and was trained on this plan's encoding; return its metrics."""
    metrics = read_export_file(export_uri, METRICS_FILE, "survey model export")
    if metrics.get("survey_plan_id") != prep.plan_id(plan):
        raise ValueError(f"the model at {export_uri} was not trained on this prep output (its encoding differs): "
                         "train again on this prep, or pass the prep it was trained on")
    return metrics


def probability_metrics(df: Any, label: str, probabilities: str, ordinal: bool = False) -> dict[str, float]:
    """``{"rows", "accuracy", "log_loss"}`` (and ``"mae"``, in answer steps of the predicted median, for
    an ordinal target) from a Spark DataFrame with an int label column and an array<float> probability
    column (answered rows only), in one aggregation."""
    from pyspark.sql import functions as F
    answered = df.where(F.col(label) >= 0)
    p = F.col(probabilities)
    predicted = F.array_position(p, F.array_max(p)) - 1
    picked = F.element_at(p, (F.col(label) + 1).cast("int"))
    aggregates = [F.count(F.lit(1)).alias("rows"), F.avg((predicted == F.col(label)).cast("double")).alias("accuracy"),
                  F.avg(-F.log(F.greatest(picked.cast("double"), F.lit(EPS)))).alias("log_loss")]
    if ordinal:
        cumulative = F.expr(f"transform(`{probabilities}`, (x, i) -> aggregate(slice(`{probabilities}`, 1, i + 1), "
                            "0D, (acc, y) -> acc + y))")
        median = F.array_position(F.transform(cumulative, lambda c: c >= F.lit(0.5 - 1e-6)), True) - 1
        aggregates.append(F.avg(F.abs(median - F.col(label)).cast("double")).alias("mae"))
    row = answered.agg(*aggregates).collect()[0]
    out = {"rows": int(row["rows"]), "accuracy": _float(row["accuracy"]), "log_loss": _float(row["log_loss"])}
    if ordinal:
        out["mae"] = _float(row["mae"])
    return out


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def majority_metrics(target: dict) -> dict:
    """Majority-class baseline from the plan's training and validation answer counts; for an ordinal
    target also the MAE of always answering the training median."""
    train, valid = target["train_counts"], target["valid_counts"]
    total_train, total_valid = sum(train), sum(valid)
    majority = max(range(len(train)), key=lambda i: train[i])
    ordinal = target.get("type") == "ordinal"
    if total_valid == 0:
        return {"rows": 0, "accuracy": float("nan"), "log_loss": float("nan"), "answer": target["classes"][majority],
                **({"mae": float("nan")} if ordinal else {})}
    prior = [max(n / total_train, EPS) for n in train]
    log_loss = -sum(n * math.log(p) for n, p in zip(valid, prior)) / total_valid
    out = {"rows": total_valid, "accuracy": valid[majority] / total_valid, "log_loss": log_loss,
           "answer": target["classes"][majority]}
    if ordinal:
        running, median = 0, 0
        for median, n in enumerate(train):
            running += n
            if running * 2 >= total_train:
                break
        out["mae"] = sum(n * abs(i - median) for i, n in enumerate(valid)) / total_valid
        out["median"] = target["classes"][median]
    return out


def logistic_regression(train_df: Any, valid_df: Any, plan: dict, reg_param: float = 0.01,
                        max_iter: int = 100) -> dict[str, dict]:
    """``{label: metrics}``: one MLlib multinomial LR per target on the encoded features, for an export
    that carries no logistic regression of its own (trained before it did)."""
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
            out[label] = probability_metrics(scored, label, "__p", target.get("type") == "ordinal")
    finally:
        train_vec.unpersist()
        valid_vec.unpersist()
    return out


def better(entry: dict) -> str:
    """Which of the model and the logistic regression is better on a target: the lower validation log
    loss (a proper scoring rule: it judges the probabilities, not only the top answer); ties go to LR,
    the simpler one."""
    model, lr = entry["model"]["log_loss"], entry["logistic_regression"]["log_loss"]
    return "model" if model < lr else "logistic_regression"


def has_linear_head(metrics: dict) -> bool:
    """Whether an export carries its logistic regression (``<target>__lr``), from its metrics."""
    return any(key.endswith("/lr/log_loss") for key in metrics)


def evaluate(spark: Any, plan: dict, prep_uri: str, export_uri: str, out_uri: str, overwrite: bool = False,
             lr_reg: float = 0.01, lr_max_iter: int = 100, log: Callable[[str], Any] = print) -> dict:
    """Score the validation split with the export (the model and, in the same pass, the logistic
    regression exported with it) and compute the majority baseline; write the report (see module doc).
    An export without a logistic regression gets one fitted here (``lr_reg``, ``lr_max_iter``)."""
    started = time.monotonic()
    metrics = check_export(plan, export_uri)
    if hdfs_io.exists(out_uri) and not overwrite:
        raise FileExistsError(f"{out_uri} exists; pass --overwrite to replace it")
    directory = prep.prep_dir(prep_uri)   # one complete version for both splits
    valid_df = spark.read.parquet(sparkprep.spark_uri(hdfs_io.join(directory, "valid")))
    heads = [""] + ([LINEAR] if has_linear_head(metrics) else [])
    outputs = {t["label"] + head: f"__p_{t['label']}{head}" for t in plan["targets"] for head in heads}
    scored = scoring.score_dataframe_vectors(valid_df, export_uri, list(plan["inputs"]), outputs,
                                             keep=plan["labels"]).cache()
    try:
        figures = {t["label"] + head: probability_metrics(scored, t["label"], outputs[t["label"] + head],
                                                          t.get("type") == "ordinal")
                   for t in plan["targets"] for head in heads}
    finally:
        scored.unpersist()
    if LINEAR not in heads:
        train_df = spark.read.parquet(sparkprep.spark_uri(hdfs_io.join(directory, "train")))
        for label, value in logistic_regression(train_df, valid_df, plan, reg_param=lr_reg,
                                                max_iter=lr_max_iter).items():
            figures[label + LINEAR] = value
    report = {"prep": prep_uri, "export": export_uri, "validation_rows": plan["rows"]["valid"],
              "seconds": None, "targets": {}}
    for t in plan["targets"]:
        entry = {"answers": len(t["classes"]), "type": t.get("type", "categorical"),
                 "model": figures[t["label"]], "majority": majority_metrics(t),
                 "logistic_regression": figures[t["label"] + LINEAR]}
        reg = metrics.get(f"valid/{t['label']}/lr/reg")
        entry["logistic_regression"]["reg"] = reg if reg is not None else lr_reg
        entry["better"] = better(entry)
        report["targets"][t["column"]] = entry
    report["seconds"] = round(time.monotonic() - started, 1)
    table = format_table(report)
    with hdfs_io.publish(out_uri, overwrite=overwrite) as local:
        with open(os.path.join(local, "evaluation.json"), "w") as handle:
            handle.write(schema.dumps(report))
        with open(os.path.join(local, "evaluation.txt"), "w") as handle:
            handle.write(table + "\n")
    log(table)
    return report


def format_table(report: dict) -> str:
    """One line per target: answered validation rows, accuracy and log loss of each method, the MAE
    of ordinal targets (the majority column then holds the training median's) and the better of model
    and LR."""
    ordinal = any(entry.get("type") == "ordinal" for entry in report["targets"].values())
    header = ["target", "answers", "rows", "acc model", "acc majority", "acc LR",
              "logloss model", "logloss majority", "logloss LR"]
    header += ["MAE model", "MAE median", "MAE LR"] if ordinal else []
    header += ["better"]
    rows = []
    for name, entry in report["targets"].items():
        row = [name, str(entry["answers"]) + (" ordered" if entry.get("type") == "ordinal" else ""),
               str(entry["model"]["rows"])]
        row += [f"{entry[m]['accuracy']:.3f}" for m in METHODS] + [f"{entry[m]['log_loss']:.3f}" for m in METHODS]
        if ordinal:
            row += [f"{entry[m]['mae']:.3f}" if "mae" in entry[m] else "-" for m in METHODS]
        row.append("LR" if entry.get("better") == "logistic_regression" else entry.get("better", "-"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ predict


def check_inputs(plan: dict, data_uri: str, fmt: str = "auto",
                 keep: list[str] | None = None) -> tuple[str, list[str], list[str], list[str]]:
    """Driver-side checks before Spark: the data exists and has a header; returns (format, header,
    absent question columns, columns to keep)."""
    fmt = schema.detect_format(data_uri, fmt)
    header = schema.read_header(data_uri, fmt)
    absent = [f["column"] for f in plan["features"] if f["column"] not in header]
    if len(absent) == len(plan["features"]):
        raise schema.SpecError(f"none of the {len(absent)} question columns the model uses is in {data_uri}: "
                                f"is it the right file? (its columns: {', '.join(header[:20])})")
    if keep is None:
        keep = [plan["id"]] if plan.get("id") in header else [c for c in header if c not in
                                                                {t["column"] for t in plan["targets"]}]
    unknown = [c for c in keep if c not in header]
    if unknown:
        raise schema.SpecError(f"--keep column(s) {unknown} not in {data_uri}")
    outputs = {f"{t['column']}__{s}" for t in plan["targets"] for s in ("answer", "model")} | \
        {scoring.VERSION_COLUMN} | {f"{t['column']}__p_{c}" for t in plan["targets"] for c in t["classes"]}
    clash = sorted(set(keep) & outputs)
    if clash:
        raise schema.SpecError(f"--keep column(s) {clash} clash with prediction columns")
    return fmt, header, absent, keep


MODEL_CHOICES = ("model", "lr", "best")


def choose_heads(plan: dict, metrics: dict, choice: str, export_uri: str = "the export") -> dict[str, str]:
    """``{label: "model" | "logistic_regression"}``: which output of the export answers each target.
    ``best`` takes the one with the lower validation log loss in the export's metrics (ties: LR)."""
    if choice not in MODEL_CHOICES:
        raise ValueError(f"--model must be one of {', '.join(MODEL_CHOICES)}, got {choice!r}")
    if choice == "model":
        return {t["label"]: "model" for t in plan["targets"]}
    if not has_linear_head(metrics):
        raise ValueError(f"{export_uri} carries no logistic regression (it was trained before exports did): "
                         "train it again, or use --model model")
    if choice == "lr":
        return {t["label"]: "logistic_regression" for t in plan["targets"]}
    return {t["label"]: "logistic_regression" if metrics[f"valid/{t['label']}/lr/log_loss"]
            <= metrics[f"valid/{t['label']}/log_loss"] else "model" for t in plan["targets"]}


def score_respondents(encoded: Any, plan: dict, export_uri: str, keep: Sequence[str] = (),
                      batch_size: int = 4096, heads: dict[str, str] | None = None) -> Any:
    """``keep`` columns, one ``<target>__p_<answer>`` column per answer, ``<target>__answer`` per target
    and the model version, for encoded respondents (:func:`prep.transform`): batch and stream share it.
    ``heads`` (:func:`choose_heads`) picks the model or its logistic regression per target."""
    from pyspark.sql import functions as F
    heads = heads or {}
    outputs = {t["label"] + (LINEAR if heads.get(t["label"]) == "logistic_regression" else ""): f"__p_{t['label']}"
               for t in plan["targets"]}
    by_label = {t["label"]: column for t, column in zip(plan["targets"], outputs.values())}
    scored = scoring.score_dataframe_vectors(encoded, export_uri, list(plan["inputs"]), outputs, keep=list(keep),
                                             batch_size=batch_size)
    columns = [F.col(f"`{k}`") for k in keep]
    for t in plan["targets"]:
        p = F.col(by_label[t["label"]])
        columns += [p[i].alias(f"{t['column']}__p_{c}") for i, c in enumerate(t["classes"])]
        best = F.array_position(p, F.array_max(p)).cast("int")
        columns.append(F.element_at(F.lit(t["classes"]).cast("array<string>"), best).alias(f"{t['column']}__answer"))
    return scored.select(*columns, F.col(scoring.VERSION_COLUMN))


def predict(spark: Any, plan: dict, export_uri: str, data_uri: str, out_uri: str, fmt: str = "auto",
            keep: list[str] | None = None, overwrite: bool = False, partitions: int | None = None,
            batch_size: int = 4096, model: str = "model", log: Callable[[str], Any] = print) -> dict:
    """Answer probabilities for the respondents in ``data_uri``, written to ``out_uri`` (see module doc);
    ``model``: ``model``, ``lr`` or ``best`` (:func:`choose_heads`), recorded per target in
    ``<target>__model``."""
    from pyspark.sql import functions as F
    heads = choose_heads(plan, check_export(plan, export_uri), model, export_uri)
    fmt, header, absent, keep = check_inputs(plan, data_uri, fmt, keep)
    if hdfs_io.exists(out_uri) and not overwrite:
        raise FileExistsError(f"{out_uri} exists; pass --overwrite to replace it")
    if absent:
        log(f"warning: {len(absent)} question column(s) absent from {data_uri}, treated as missing: "
            f"{', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}")
    df = prep.canonicalize(prep.read_table(spark, data_uri, fmt), header)
    for column in absent:
        df = df.withColumn(column, F.lit(None).cast("string"))
    kept = [f"__keep_{i}" for i in range(len(keep))]
    encoded = prep.transform(df.select("*", *[F.col(f"`{c}`").alias(k) for c, k in zip(keep, kept)]),
                              plan, with_labels=False, keep=kept)
    scored = score_respondents(encoded, plan, export_uri, kept, batch_size=batch_size, heads=heads)
    scored = scored.select(*[F.col(k).alias(c) for c, k in zip(keep, kept)],
                           *[F.col(f"`{c}`") for c in scored.columns if c not in kept],
                           *[F.lit(heads[t["label"]]).alias(f"{t['column']}__model") for t in plan["targets"]])
    report = scoring.write_scores(scored, out_uri, overwrite=overwrite, partitions=partitions)
    log(f"predicted {report['rows']} respondents -> {out_uri} ({report['seconds']:.1f} s)")
    return report
