"""Answer probabilities for new respondents: encode them with the prep plan, score them on Spark with
the export, write Parquet atomically (complete with ``_SUCCESS``, or nothing).

Output columns: the id column (or ``--keep`` columns; by default every input column when the spec has
no id), then per target ``<target>__p_<answer>`` (float, one per answer, summing to 1) and
``<target>__answer`` (the most probable answer, as text).

Question columns absent from the new data count as missing for every respondent (a warning names
them); target columns, when present, are ignored.
"""
import hdfs_io
from tfos_jobs import scoring
from tfos_jobs.survey import prep as sprep
from tfos_jobs.survey import spec as specmod


def check_inputs(plan, data_uri, fmt="auto", keep=None):
    """Driver-side checks before Spark: the data exists and has a header; returns (format, header,
    absent question columns, columns to keep)."""
    fmt = specmod.detect_format(data_uri, fmt)
    header = specmod.read_header(data_uri, fmt)
    absent = [f["column"] for f in plan["features"] if f["column"] not in header]
    if len(absent) == len(plan["features"]):
        raise specmod.SpecError(f"none of the {len(absent)} question columns the model uses is in {data_uri}: "
                                f"is it the right file? (its columns: {', '.join(header[:20])})")
    if keep is None:
        keep = [plan["id"]] if plan.get("id") in header else [c for c in header if c not in
                                                                {t["column"] for t in plan["targets"]}]
    unknown = [c for c in keep if c not in header]
    if unknown:
        raise specmod.SpecError(f"--keep column(s) {unknown} not in {data_uri}")
    outputs = {f"{t['column']}__answer" for t in plan["targets"]} | {
        f"{t['column']}__p_{c}" for t in plan["targets"] for c in t["classes"]}
    clash = sorted(set(keep) & outputs)
    if clash:
        raise specmod.SpecError(f"--keep column(s) {clash} clash with prediction columns")
    return fmt, header, absent, keep


def run_predict(spark, plan, export_uri, data_uri, out_uri, fmt="auto", keep=None, overwrite=False, partitions=None,
                batch_size=4096, log=print):
    from pyspark.sql import functions as F
    from tfos_jobs.survey.evaluate import check_export
    check_export(plan, export_uri)
    fmt, header, absent, keep = check_inputs(plan, data_uri, fmt, keep)
    if hdfs_io.exists(out_uri) and not overwrite:
        raise FileExistsError(f"{out_uri} exists; pass --overwrite to replace it")
    if absent:
        log(f"warning: {len(absent)} question column(s) absent from {data_uri}, treated as missing: "
            f"{', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}")
    df = sprep.canonicalize(sprep.read_table(spark, data_uri, fmt), header)
    for column in absent:
        df = df.withColumn(column, F.lit(None).cast("string"))
    kept = [f"__keep_{i}" for i in range(len(keep))]
    encoded = sprep.transform(df.select("*", *[F.col(f"`{c}`").alias(k) for c, k in zip(keep, kept)]),
                              plan, with_labels=False, keep=kept)
    outputs = {t["label"]: f"__p_{t['label']}" for t in plan["targets"]}
    scored = scoring.score_dataframe_vectors(encoded, export_uri, list(plan["inputs"]), outputs, keep=kept,
                                             batch_size=batch_size)
    columns = [F.col(k).alias(c) for c, k in zip(keep, kept)]
    for t in plan["targets"]:
        p = F.col(outputs[t["label"]])
        columns += [p[i].alias(f"{t['column']}__p_{c}") for i, c in enumerate(t["classes"])]
        best = F.array_position(p, F.array_max(p)).cast("int")
        columns.append(F.element_at(F.lit(t["classes"]).cast("array<string>"), best).alias(f"{t['column']}__answer"))
    report = scoring.write_scores(scored.select(*columns), out_uri, overwrite=overwrite, partitions=partitions)
    log(f"predicted {report['rows']} respondents -> {out_uri} ({report['seconds']:.1f} s)")
    return report
