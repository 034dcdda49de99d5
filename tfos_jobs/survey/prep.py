"""Spark prep of a survey response table: profile, resolve column treatments, encode, split, write.

One pass profiles every column of the training split at once (answers exploded to
``(column, answer, kind)`` and counted, so hundreds of question columns cost one shuffle), the
treatments are resolved on the driver (spec first, inference for the rest), and one ``select``
encodes every column. Output at ``<out>``, published as one unit (:func:`hdfs_io.staged_output`,
kind ``survey-prep``; a failed run leaves the previous prep and its plan as they were):

``train/`` and ``valid/`` (Parquet: the id column if any, the encoded features, one ``y_*`` int64 label
per target, -1 where the target was not answered), ``prep.json`` (the plan: every column's treatment,
vocabularies, scaling, classes and counts; training, evaluation and prediction read it back). Readers
resolve ``<out>`` once (:func:`prep_dir`) and read the plan and the splits from that version.

Encodings (all scalar columns, no nulls, as the runtime requires):

* categorical → ``c_<q>`` int64 id: 0 other/unseen, 1 missing, 2 refused, 3 not asked, 4.. answers;
* ordinal     → ``n_<q>`` float32 position in the order scaled to [0, 1] (training mean when not
  answered) plus ``m_<q>__<kind>`` float32 0/1 indicators for the kinds seen in training;
* numeric     → ``n_<q>`` standardized (0 when not answered) plus the same indicators;
* target      → ``y_<q>`` int64 index into its classes (sorted answers seen in training), else -1.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable

import hdfs_io
from tfos_jobs import sparkprep
from tfos_jobs.survey import schema
from tfos_jobs.survey.schema import KINDS, Spec, SpecError

# pyspark (heavy) is imported inside the functions that build Spark columns.
PLAN_FILE = "prep.json"
KIND = "survey-prep"
RERUN = "run `tfos-survey prep` first (with --overwrite to re-create it)"
RESERVED_IDS = {"other": 0, "missing": 1, "refused": 2, "not_asked": 3}
FIRST_ANSWER_ID = 4
PLAN_VERSION = 1
MAX_NUMBER = 9.2e18    # answers at or beyond this magnitude (and inf, NaN) are not numbers here


# ------------------------------------------------------------------------------------ Spark columns


def canonical_col(name: str) -> Any:
    """Spark twin of :func:`schema.canonical`: trimmed text, integral numbers without decimals."""
    from pyspark.sql import functions as F
    return canonical_col_of(F.col(f"`{name}`"))


def canonical_col_of(column: Any) -> Any:
    """:func:`canonical_col` of a column expression (a field of a parsed record, say)."""
    from pyspark.sql import functions as F
    text = F.trim(column.cast("string"))
    number = text.try_cast("double")
    integral = readable_number(number) & (number == F.floor(number))
    return F.when(integral, number.cast("bigint").cast("string")).otherwise(text)


def readable_number(number: Any) -> Any:
    """A double column's values a numeric treatment uses: finite and below 9.2e18 in magnitude (an
    answer like ``inf`` or ``1e19`` is not a number of the survey; floor() of it would overflow)."""
    from pyspark.sql import functions as F
    return number.isNotNull() & ~F.isnan(number) & (F.abs(number) < F.lit(MAX_NUMBER))


def canonicalize(df: Any, names: list[str] | None = None) -> Any:
    """Every (or each named) column replaced by its canonical text, once, so later expressions stay
    small (hundreds of columns would otherwise outgrow Spark's generated-code limits)."""
    names = list(df.columns) if names is None else list(names)
    return df.select(*[canonical_col(c).alias(c) for c in names])


def _col(name: str) -> Any:
    from pyspark.sql import functions as F
    return F.col(f"`{name}`")


def kind_col(value: Any, codes: dict[str, list[str]]) -> Any:
    """'missing' / 'refused' / 'not_asked' / null (an answer) for a canonical value column."""
    from pyspark.sql import functions as F

    def among(values):
        return value.isin(list(values)) if values else F.lit(False)
    return (F.when(value.isNull() | among(codes["missing"]), F.lit("missing"))
            .when(among(codes["refused"]), F.lit("refused"))
            .when(among(codes["not_asked"]), F.lit("not_asked")))


def read_table(spark: Any, uri: str, fmt: str) -> Any:
    reader = spark.read
    uri = sparkprep.data_dir(uri)   # a published data set: its current version
    if fmt == "csv":
        # every column as text: answer codes ("refused", 98, "") are compared as written
        return reader.option("header", True).option("inferSchema", False).option("mode", "PERMISSIVE") \
            .csv(sparkprep.spark_uri(uri))
    return reader.parquet(sparkprep.spark_uri(uri))


# ------------------------------------------------------------------------------------ profile


def profile(df: Any, columns: list[str], spec: Spec, is_valid: Any) -> tuple[dict, dict]:
    """Per column (train split): answer counts, kind counts, numeric summary and top answers.

    Returns ``{column: {"answered", "distinct", "kinds": {kind: n}, "non_numeric", "non_integral",
    "sum", "sumsq", "numeric_n", "top": [(answer, n), ...], "valid": {answer_or_kind: n}}}``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    max_top = int(spec.infer["max_vocab"]) + 1
    structs = []
    for i, name in enumerate(columns):
        value = _col(name)
        kind = kind_col(value, spec.codes_for(name))
        structs.append(F.struct(F.lit(i).alias("c"), F.when(kind.isNull(), value).alias("v"), kind.alias("k")))
    exploded = df.select(is_valid.alias("valid"), F.explode(F.array(*structs)).alias("e")) \
        .select("valid", "e.c", "e.v", "e.k")
    grouped = exploded.groupBy("valid", "c", "v", "k").agg(F.count(F.lit(1)).alias("n")).cache()
    try:
        train = grouped.where(~F.col("valid"))
        number = F.col("v").try_cast("double")
        answered = F.col("k").isNull()
        numeric = answered & readable_number(number)
        stats = train.groupBy("c").agg(
            F.sum(F.when(answered, F.col("n")).otherwise(0)).alias("answered"),
            F.count(F.when(answered, 1)).alias("distinct"),
            *[F.sum(F.when(F.col("k") == kind, F.col("n")).otherwise(0)).alias(kind) for kind in KINDS],
            F.sum(F.when(answered & ~numeric, F.col("n")).otherwise(0)).alias("non_numeric"),
            F.sum(F.when(numeric & (number != F.floor(number)), F.col("n")).otherwise(0)).alias("non_integral"),
            F.sum(F.when(numeric, F.col("n") * number).otherwise(0.0)).alias("sum"),
            F.sum(F.when(numeric, F.col("n") * number * number).otherwise(0.0)).alias("sumsq"),
            F.sum(F.when(numeric, F.col("n")).otherwise(0)).alias("numeric_n"),
        ).collect()
        rank = F.row_number().over(Window.partitionBy("c").orderBy(F.desc("n"), F.asc("v")))
        top = train.where(answered).withColumn("r", rank).where(F.col("r") <= max_top) \
            .select("c", "v", "n").collect()
        target_ids = [i for i, name in enumerate(columns) if name in spec.targets]
        valid_rows = grouped.where(F.col("valid") & F.col("c").isin(target_ids)).select("c", "v", "k", "n").collect() \
            if target_ids else []
        split_counts = {bool(r["valid"]): r["n"] for r in grouped.where(F.col("c") == 0)
                        .groupBy("valid").agg(F.sum("n").alias("n")).collect()}
    finally:
        grouped.unpersist()
    out = {name: {"answered": 0, "distinct": 0, "kinds": {k: 0 for k in KINDS}, "non_numeric": 0,
                  "non_integral": 0, "sum": 0.0, "sumsq": 0.0, "numeric_n": 0, "top": [], "valid": {}}
           for name in columns}
    for row in stats:
        entry = out[columns[row["c"]]]
        entry.update({key: row[key] or 0 for key in ("answered", "distinct", "non_numeric", "non_integral",
                                                       "sum", "sumsq", "numeric_n")})
        entry["kinds"] = {kind: row[kind] or 0 for kind in KINDS}
    for row in sorted(top, key=lambda r: (r["c"], -r["n"], r["v"])):
        out[columns[row["c"]]]["top"].append((row["v"], row["n"]))
    for row in valid_rows:
        key = row["k"] if row["k"] is not None else row["v"]
        out[columns[row["c"]]]["valid"][key] = out[columns[row["c"]]]["valid"].get(key, 0) + row["n"]
    return out, {"train": split_counts.get(False, 0), "valid": split_counts.get(True, 0)}


# ------------------------------------------------------------------------------------ plan


def resolve(spec: Spec, header: list[str], stats: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Column treatments (spec, else inferred) with their encodings: the plan's ``features``,
    ``ignored`` and ``targets`` entries."""
    taken = set()
    targets = [_target(name, stats[name], spec.infer, taken, spec.columns.get(name, {})) for name in spec.targets]
    features, ignored = [], []
    for name in header:
        if name in spec.targets or name == spec.id_column:
            continue
        s = stats[name]
        declared = spec.columns.get(name, {}).get("type", "auto")
        ctype, why = (declared, "spec") if declared != "auto" else _infer(s, spec.infer)
        if ctype == "ignore":
            ignored.append({"column": name, "why": why})
            continue
        entry = {"column": name, "type": ctype, "source": "spec" if declared != "auto" else "inferred", "why": why,
                 "codes": spec.codes_for(name), "answered": s["answered"], "not_answered": dict(s["kinds"])}
        if ctype == "categorical":
            vocab = [v for v, n in s["top"][:int(spec.infer["max_vocab"])] if n >= int(spec.infer["min_count"])]
            entry.update(input=schema.safe_name(name, "c_", taken), vocab=vocab,
                         vocab_size=FIRST_ANSWER_ID + len(vocab))
        else:
            entry["input"] = schema.safe_name(name, "n_", taken)
            entry.update(_ordinal(s, spec.columns.get(name, {}).get("order")) if ctype == "ordinal" else _numeric(s))
            # an unparsable answer in a numeric column counts as missing
            entry["indicators"] = {kind: schema.safe_name(f"{name}__{kind}", "m_", taken) for kind in KINDS
                                   if s["kinds"][kind] or (kind == "missing" and ctype == "numeric"
                                                           and s["non_numeric"])}
        features.append(entry)
    if not features:
        raise SpecError("no feature columns are left once targets, the id and ignored columns are set aside")
    return features, ignored, targets


def _target(name: str, s: dict, infer: dict, taken: set[str], declared: dict) -> dict:
    """A target's plan entry: its classes (the answers seen in training; for an ordinal target its
    ``order``, lowest first, when the spec gives one) and answer counts per split."""
    ordinal = declared.get("type") == "ordinal"
    classes = declared.get("order") or schema.sort_answers([v for v, _ in s["top"]])
    if s["distinct"] > len(s["top"]) and not declared.get("order"):
        raise SpecError(f"target {name!r} has {s['distinct']} distinct answers, more than infer.max_vocab "
                        f"({infer['max_vocab']}): is it really a question with a fixed set of answers?")
    seen = [c for c in classes if c in dict(s["top"])]
    if len(seen) < 2:
        raise SpecError(f"target {name!r} has {len(seen)} distinct answer(s) in the training split: "
                        "nothing to predict")
    counts = dict(s["top"])
    valid = s["valid"]
    return {
        "column": name, "label": schema.safe_name(name, "y_", taken), "classes": classes,
        "type": "ordinal" if ordinal else "categorical",
        "train_counts": [counts.get(c, 0) for c in classes],
        "valid_counts": [valid.get(c, 0) for c in classes],
        "train_not_answered": dict(s["kinds"]),
        "valid_not_answered": dict({k: valid.get(k, 0) for k in KINDS},
                                   unseen=sum(n for v, n in valid.items() if v not in KINDS and v not in counts)),
    }


def _ordinal(s: dict, order: list[str] | None) -> dict:
    """An ordinal column's order (the spec's, else its sorted answers) and the value imputed when not answered."""
    if order is None:
        order = schema.sort_answers([v for v, _ in s["top"]])
        if len(order) < 2:
            order = order + ["__never__"]
    counts = dict(s["top"])
    positions = [i / (len(order) - 1) for i in range(len(order))]
    seen = sum(counts.get(v, 0) for v in order)
    impute = sum(p * counts.get(v, 0) for p, v in zip(positions, order)) / seen if seen else 0.5
    return {"order": order, "impute": impute}


def _numeric(s: dict) -> dict:
    """A numeric column's standardization (training mean and standard deviation)."""
    n = s["numeric_n"]
    mean = s["sum"] / n if n else 0.0
    var = max(s["sumsq"] / n - mean * mean, 0.0) if n else 0.0
    return {"mean": mean, "std": var ** 0.5 if var > 1e-12 else 1.0}


def _infer(s: dict, infer: dict) -> tuple[str, str]:
    if s["answered"] == 0:
        return "ignore", "never answered in the training split"
    if s["distinct"] == 1:
        return "ignore", "a single answer in the training split (constant)"
    numeric = s["non_numeric"] == 0
    if numeric and s["non_integral"] == 0 and s["distinct"] <= int(infer["max_categories"]):
        return "categorical", f"integer codes, {s['distinct']} distinct answers (<= infer.max_categories)"
    if numeric:
        return "numeric", f"numbers, {s['distinct']} distinct values"
    if s["distinct"] > int(infer["max_categories"]) and s["distinct"] >= 0.5 * s["answered"]:
        return "ignore", f"text with {s['distinct']} distinct values in {s['answered']} answers (an identifier " \
                         "or free text?)"
    return "categorical", f"text, {s['distinct']} distinct answers"


def feature_inputs(plan: dict) -> dict[str, str]:
    """``{input column: "int64" | "float32"}`` in model order."""
    out = {}
    for f in plan["features"]:
        out[f["input"]] = "int64" if f["type"] == "categorical" else "float32"
        for name in f.get("indicators", {}).values():
            out[name] = "float32"
    return out


def label_columns(plan: dict) -> list[str]:
    return [t["label"] for t in plan["targets"]]


# ------------------------------------------------------------------------------------ encode


def transform(df: Any, plan: dict, with_labels: bool = True, keep: Any = ()) -> Any:
    """Encode a :func:`canonicalize`-d response DataFrame with a plan: ``keep`` columns, the features
    and, when ``with_labels``, the labels. Works for new respondents too (targets may be absent then)."""
    from pyspark.sql import functions as F
    out = [F.col(f"`{c}`").alias(c) for c in keep]
    for f in plan["features"]:
        value = _col(f["column"])
        kind = kind_col(value, f["codes"])
        answered = kind.isNull()
        if f["type"] == "categorical":
            pos = F.array_position(F.lit(f["vocab"] or ["\u0000"]).cast("array<string>"), value)
            code = F.coalesce(*[F.when(kind == k, F.lit(RESERVED_IDS[k])) for k in KINDS],
                              F.when(pos > 0, pos + (FIRST_ANSWER_ID - 1)), F.lit(0))
            out.append(code.cast("bigint").alias(f["input"]))
            continue
        if f["type"] == "ordinal":
            order = f["order"]
            pos = F.array_position(F.lit(order).cast("array<string>"), value)
            valid = answered & (pos > 0)
            scaled = (pos - 1).cast("double") / F.lit(float(len(order) - 1))
            encoded = F.when(valid, scaled).otherwise(F.lit(float(f["impute"])))
        else:
            number = value.try_cast("double")
            valid = answered & readable_number(number)
            encoded = F.when(valid, (number - F.lit(f["mean"])) / F.lit(f["std"])).otherwise(F.lit(0.0))
        out.append(encoded.cast("float").alias(f["input"]))
        for k, name in f.get("indicators", {}).items():
            flag = (kind == k) if k != "missing" else ((kind == "missing") | (answered & ~valid))
            out.append(F.coalesce(flag, F.lit(False)).cast("float").alias(name))
    if with_labels:
        for t in plan["targets"]:
            value = _col(t["column"])
            kind = kind_col(value, t["codes"])
            pos = F.array_position(F.lit(t["classes"]).cast("array<string>"), value)
            label = F.when(kind.isNull() & (pos > 0), pos - 1).otherwise(F.lit(-1))
            out.append(label.cast("bigint").alias(t["label"]))
    return df.select(*out)


# ------------------------------------------------------------------------------------ the job


def run_prep(spark: Any, spec: Spec, data_uri: str, out_uri: str, fmt: str = "auto", files: int = 4,
             overwrite: bool = False, header: list[str] | None = None, validation_fraction: float | None = None,
             seed: int | None = None, fold: int | None = None, log: Callable[[str], Any] = print) -> dict:
    """Prep ``data_uri`` with ``spec`` into ``out_uri``; returns the plan (also in ``prep.json``).
    Call :func:`schema.preflight` first (the CLI does) so bad input fails before Spark starts."""
    from pyspark.sql import functions as F
    started = time.monotonic()
    if header is None:
        fmt, header = schema.preflight(spec, data_uri, fmt)
    check_output(out_uri, overwrite)
    fraction, seed, fold = resolve_split(spec, validation_fraction, seed, fold)
    df = read_table(spark, data_uri, fmt)
    missing = [c for c in header if c not in df.columns]
    if missing:
        raise SpecError(f"Spark read columns {df.columns[:20]} from {data_uri}, not the header's {missing[:5]}")
    df = canonicalize(df, header)
    keys = [_col(spec.id_column)] if spec.id_column else [_col(c) for c in header]
    df = df.withColumn("__valid", sparkprep.hash_split(keys, fraction, seed, fold))
    columns = [c for c in header if c != spec.id_column]
    df = df.cache()
    try:
        stats, counts = profile(df, columns, spec, F.col("__valid"))
        features, ignored, targets = resolve(spec, header, stats)
        for t in targets:
            t["codes"] = spec.codes_for(t["column"])
        plan = {"version": PLAN_VERSION, "data": data_uri, "format": fmt, "spec": spec.to_dict(),
                "id": spec.id_column, "features": features, "ignored": ignored, "targets": targets,
                "split": {"validation_fraction": fraction, "seed": seed, "fold": fold, "key": spec.id_column or "<all columns>"},
                "rows": {"total": counts["train"] + counts["valid"], **counts}}
        if counts["valid"] == 0 or counts["train"] == 0:
            raise SpecError(f"the split left {counts['train']} training and {counts['valid']} validation rows: "
                            "need both (more data or another validation_fraction)")
        plan["inputs"] = feature_inputs(plan)
        plan["labels"] = label_columns(plan)
        _write_splits(df, plan, out_uri, files, overwrite, started)
    finally:
        df.unpersist()
    log(summary(plan))
    return plan


def _write_splits(df: Any, plan: dict, out_uri: str, files: int, overwrite: bool, started: float) -> None:
    """``train/``, ``valid/`` (rows of ``df`` by its ``__valid`` flag, encoded with ``plan``) and the
    plan, published as one version."""
    from pyspark.sql import functions as F
    keep = [plan["id"]] if plan.get("id") else []
    with hdfs_io.staged_output(out_uri, overwrite=overwrite, kind=KIND) as version:
        for split, flag in (("train", False), ("valid", True)):
            part = transform(df.where(F.col("__valid") == F.lit(flag)), plan, keep=keep)
            sparkprep.write_part(part, hdfs_io.join(version, split), max(int(files), 1))
        plan["prep_seconds"] = round(time.monotonic() - started, 1)
        sparkprep.write_json(plan, hdfs_io.join(version, PLAN_FILE))


def run_prep_with_plan(spark: Any, plan: dict, data_uri: str, out_uri: str, *, fmt: str = "parquet",
                       files: int = 4, validation_fraction: float, overwrite: bool = False) -> dict:
    """Prep new responses with an existing plan: no profiling, the same vocabularies, scaling and
    classes, so a model trained on them takes the same inputs as one trained on the plan's own prep
    (the autopilot's retraining: the server and the stream encode answers with the champion's plan).
    The new plan is that one with this data's ``data`` and ``rows``; the answer counts and statistics
    it was built from stay the old ones. Returns the new plan (also in ``prep.json``)."""
    from pyspark.sql import functions as F
    started = time.monotonic()
    check_output(out_uri, overwrite)
    columns = list(dict.fromkeys([*([plan["id"]] if plan.get("id") else []),
                                  *(f["column"] for f in plan["features"]), *(t["column"] for t in plan["targets"])]))
    df = read_table(spark, data_uri, fmt)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SpecError(f"{data_uri} lacks the plan's column(s) {missing[:5]}; it has {df.columns[:20]}")
    df = canonicalize(df, columns)
    keys = [_col(plan["id"])] if plan.get("id") else [_col(c) for c in columns]
    df = df.withColumn("__valid", sparkprep.hash_split(keys, validation_fraction, int(plan["split"]["seed"]))).cache()
    try:
        counted = df.agg(F.count(F.lit(1)).alias("total"), F.sum(F.col("__valid").cast("long")).alias("valid")).first()
        total, valid = int(counted["total"]), int(counted["valid"] or 0)
        if valid == 0 or valid == total:
            raise SpecError(f"{data_uri}: the split left {total - valid} training and {valid} validation rows: "
                            "need both")
        new = {**plan, "data": data_uri, "rows": {"total": total, "train": total - valid, "valid": valid},
               "split": {**plan["split"], "validation_fraction": validation_fraction}}
        _write_splits(df, new, out_uri, files, overwrite, started)
    finally:
        df.unpersist()
    return new


def resolve_split(spec: Spec, validation_fraction: float | None = None, seed: int | None = None,
                  fold: int | None = None) -> tuple[float, int, int]:
    """The spec's split with the command line's overrides, checked (before Spark, by the CLI)."""
    fraction = float(spec.split["validation_fraction"] if validation_fraction is None else validation_fraction)
    seed = int(spec.split["seed"] if seed is None else seed)
    fold = int(spec.split.get("fold", 0) if fold is None else fold)
    schema.check_fold(fold, fraction, _raise_spec_error)
    return fraction, seed, fold


def _raise_spec_error(message: str) -> None:
    raise SpecError(message)


def check_output(out_uri: str, overwrite: bool) -> None:
    """Before any work: refuse an existing output without ``overwrite``, and any output that is not a
    survey prep (an export, a model dir, ...) even with it."""
    sparkprep.check_prep_target(out_uri, KIND, PLAN_FILE, overwrite)


def plan_id(plan: dict) -> float:
    """A number that identifies a prep plan's encoding (stored in the export's metrics.json, checked
    before evaluating or predicting with that export)."""
    key = json.dumps({"inputs": plan["inputs"], "targets": [[t["label"], t["classes"]] for t in plan["targets"]],
                      "features": plan["features"]}, sort_keys=True)
    return float(int(hashlib.sha1(key.encode()).hexdigest()[:12], 16))


def prep_dir(prep_uri: str) -> str:
    """The directory of the prep's current version (see :func:`sparkprep.prep_dir`): read the plan
    and the splits from it, so they always belong together."""
    return sparkprep.prep_dir(prep_uri, PLAN_FILE, RERUN)


def read_plan(prep_uri: str) -> dict:
    """The plan of the prep ``prep_uri`` (or of one of its version directories, :func:`prep_dir`)."""
    uri = hdfs_io.join(prep_dir(prep_uri), PLAN_FILE)
    plan = sparkprep.read_json(uri, missing=f"{uri} not found: {RERUN}")
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(f"{uri} has plan version {plan.get('version')}, this code reads {PLAN_VERSION}")
    return plan


def summary(plan: dict) -> str:
    by_type = {}
    for f in plan["features"]:
        by_type.setdefault(f["type"], []).append(f)
    inferred = [f for f in plan["features"] if f["source"] == "inferred"]
    lines = [f"rows: {plan['rows']['total']} ({plan['rows']['train']} train, {plan['rows']['valid']} validation)",
             "features: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_type.items()))
             + f"; {len(plan['ignored'])} ignored; {len(plan['inputs'])} model inputs"]
    for f in inferred[:15]:
        lines.append(f"  inferred {f['column']}: {f['type']} ({f['why']})")
    if len(inferred) > 15:
        lines.append(f"  ... and {len(inferred) - 15} more inferred columns (see prep.json)")
    for i in plan["ignored"][:10]:
        lines.append(f"  ignored {i['column']}: {i['why']}")
    for t in plan["targets"]:
        not_answered = sum(t["train_not_answered"].values())
        lines.append(f"target {t['column']}: {len(t['classes'])} answers {t['classes'][:10]}"
                     f"{' ...' if len(t['classes']) > 10 else ''}; {not_answered} training rows without an answer")
    return "\n".join(lines)
