"""The survey job's part of the autopilot (:class:`tfos_jobs.autopilot.loop.Hooks`): retraining data
from the stream's own inputs, prep with the champion's plan, distributed training through the
runtime, and champion and challenger judged on the same held-out respondents.

The recent labelled respondents are the records the stream answered (``stream-predict``'s input:
an id and the answers it encodes) joined with the answers given later (``stream-monitor``'s input:
the id, the target questions, and ``event_time``, when they were given). The newest
``retrain.last_rows`` respondents (or those of the last ``retrain.last_s`` seconds) are written as
a Parquet table, prepped with the champion's plan (:func:`tfos_jobs.survey.prep.run_prep_with_plan`:
the server and the stream encode a challenger's inputs as they did the champion's) and split: the
training part trains the challenger, the validation part (``retrain.holdout_fraction``) scores both.
The policy's metric is ``accuracy:<question>``.

Every retraining works under ``<work>/retrain-<decision>/`` and each step skips what it finished, so a
resumed retraining goes on where it stopped.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import hdfs_io
from tfos_jobs import scoring, sparkprep
from tfos_jobs.autopilot.loop import StreamJobHooks
from tfos_jobs.autopilot.policy import Policy
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig
from tfos_jobs.registry import CHAMPION, ModelRegistry
from tfos_jobs.survey import prep, steps
from tfos_jobs.survey.stream import EVENT_TIME, id_column


@dataclasses.dataclass
class SurveyRetraining(StreamJobHooks):
    spark: Any
    policy: Policy
    records_uri: str            # the respondents' records the stream answers (JSON lines)
    answers_uri: str            # the answers given later (JSON lines with the target questions)
    metrics_uri: str            # stream-monitor's window records
    work_uri: str               # scratch for the retrainings
    model: dict | None = None   # options over the spec's model section (hidden, dropout, ...)
    scaling: ScalingConfig = steps.SCALING
    loop: LoopConfig = steps.LOOP

    def retrain(self, decision: dict) -> int:
        registry = ModelRegistry(self.policy.model)
        raw, prepped = self._work(decision, "raw"), self._work(decision, "prep")
        for version, record in sorted(registry.state().versions.items()):   # trained before a restart?
            if record["state"] == "ready" and record.get("lineage", {}).get("data", {}).get("data") == raw:
                return version
        plan = steps.export_plan(registry.version_uri(decision["champion"]))
        if not hdfs_io.is_published(raw):
            self.write_recent_respondents(plan, raw)
        if not hdfs_io.is_published(prepped):
            prep.run_prep_with_plan(self.spark, plan, raw, prepped, files=2 * self.scaling.num_workers,
                                    validation_fraction=self.policy.retrain.holdout_fraction)
        run = RunConfig(model_dir=self._work(decision, "model"), export_uri=self.policy.model, export_version="auto",
                        allow_no_new_steps=True)
        result = steps.train(self.spark.sparkContext, prep.read_plan(prepped), prepped, self.model,
                             scaling=self.scaling, loop=self.loop, run=run)
        return int(result.export_uri.rstrip("/").rsplit("/", 1)[-1])

    def write_recent_respondents(self, plan: dict, out_uri: str) -> None:
        """The newest answered respondents (their record's answers and the target answers given later)
        as one Parquet table of text columns, published as one unit."""
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType, StructField, StructType
        rid, targets = id_column(plan), [t["column"] for t in plan["targets"]]
        questions = [c for c in dict.fromkeys(f["column"] for f in plan["features"]) if c not in targets]

        def read(uri, columns):
            fields = StructType([StructField(c, StringType()) for c in dict.fromkeys([rid, EVENT_TIME, *columns])])
            r = self.spark.read.text(sparkprep.spark_uri(uri)).select(F.from_json("value", fields).alias("r"))
            return r.select(*[F.col("r")[c].alias(c) for c in fields.fieldNames()]).where(F.col(rid).isNotNull())
        records = read(self.records_uri, questions).drop(EVENT_TIME).dropDuplicates([rid])
        answers = (read(self.answers_uri, targets).withColumn("__given", F.col(EVENT_TIME).try_cast("bigint"))
                   .where(F.col("__given").isNotNull()).drop(EVENT_TIME).dropDuplicates([rid]))
        joined = records.join(answers, rid)
        r = self.policy.retrain
        if r.last_s is not None:
            newest = joined.agg(F.max("__given")).first()[0]
            if newest is None:
                raise RuntimeError(f"no answered respondents yet under {self.answers_uri}")
            joined = joined.where(F.col("__given") >= F.lit(int(newest - 1000 * r.last_s)))
        else:
            joined = joined.orderBy(F.col("__given").desc()).limit(int(r.last_rows))
        with hdfs_io.staged_output(out_uri, kind="survey-retrain-respondents") as version:
            joined.drop("__given").write.mode("overwrite").parquet(sparkprep.spark_uri(version))

    def evaluate(self, decision: dict, versions: dict[str, int]) -> dict[str, float]:
        """The policy's question, scored by each version on the same held-out respondents."""
        registry = ModelRegistry(self.policy.model)
        directory = prep.prep_dir(self._work(decision, "prep"))
        plan = prep.read_plan(directory)
        name, target = self._metric(plan)
        valid = self.spark.read.parquet(sparkprep.spark_uri(hdfs_io.join(directory, "valid")))
        scores = {}
        for role, version in versions.items():
            export = registry.version_uri(version)
            scored = scoring.score_dataframe_vectors(valid, export, list(plan["inputs"]), {target["label"]: "__p"},
                                                     keep=[target["label"]])
            scores[role] = float(steps.probability_metrics(scored, target["label"], "__p")[name])
        return scores

    def _metric(self, plan: dict) -> tuple[str, dict]:
        """The policy's metric name and the plan's target it judges (``accuracy:<question>``)."""
        name, _, question = self.policy.metric.partition(":")
        target = next((t for t in plan["targets"] if t["column"] == question), None)
        if target is None:
            raise ValueError(f"the policy's metric {self.policy.metric!r} names no target of the model: "
                             f"{[t['column'] for t in plan['targets']]}")
        return name, target

    def shadow(self, decision: dict, versions: dict[str, int], since_ms: int) -> list[dict]:
        """Both versions on the respondents whose records came after ``since_ms`` and whose answers
        have come since, per window of the policy's length (by the record's event time): the policy's
        question's accuracy, as ``stream-monitor`` measures it. The champion is scored again here
        (the hooks read the stream's inputs, not its outputs): the same model and plan give the same
        answers it gave live."""
        from pyspark.sql import functions as F
        from tfos_jobs.streaming import pipeline
        from tfos_jobs.survey.stream import answers_of, encode_records, per_question
        registry = ModelRegistry(self.policy.model)
        plan = steps.export_plan(registry.version_uri(versions[CHAMPION]))
        _, target = self._metric(plan)

        def read(uri):
            return self.spark.read.text(sparkprep.spark_uri(uri)).withColumn("source", F.input_file_name())
        since = F.timestamp_millis(F.lit(int(since_ms)))
        records = (encode_records(read(self.records_uri), plan)
                   .where(F.col("reason_code").isNull() & (F.col("event_time") >= since)).dropDuplicates(["id"]))
        answers = answers_of(read(self.answers_uri), plan).dropDuplicates(["id"])
        rows = records.join(answers, "id").where(F.col("label_time") >= F.col("event_time"))
        answer_columns = [c for c in rows.columns if c.startswith("__a_")]
        per_role = []
        for role, version in versions.items():
            scored = steps.score_respondents(rows, plan, registry.version_uri(version),
                                             keep=["id", "event_time", "label_time", *answer_columns])
            labeled = per_question(scored, plan).where(F.col(pipeline.SERIES) == target["column"])
            per_role.append(labeled.withColumn("role", F.lit(role)))
        windows = (per_role[0].unionByName(per_role[1])
                   .groupBy(F.window("event_time", f"{self._window_s()} seconds").alias("w"), "role")
                   .agg(F.count("*").alias("count"), F.avg("label").alias("accuracy"))
                   .select(F.unix_millis(F.col("w.end")).alias("end_ms"), "role", "count", "accuracy").collect())
        out: dict[int, dict] = {}
        for r in windows:
            record = out.setdefault(r["end_ms"], {"window_end_ms": r["end_ms"], "count": 0})
            record[r["role"]] = float(r["accuracy"])
            record["count"] = max(record["count"], int(r["count"]))
        return [out[end] for end in sorted(out)]

    def incompatible(self, champion: int, challenger: int) -> str | None:
        registry = ModelRegistry(self.policy.model)
        old, new = (steps.export_plan(registry.version_uri(v)) for v in (champion, challenger))
        if prep.plan_id(old) != prep.plan_id(new):
            return ("the challenger encodes answers differently from the champion (its prep plan differs): "
                    "the server and the stream would feed it the champion's encoding")
        return None
