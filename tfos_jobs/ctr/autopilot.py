"""The CTR job's part of the autopilot (:class:`tfos_jobs.autopilot.loop.Hooks`): retraining data from
the stream's own outputs, prep and distributed training through the runtime, and champion and
challenger judged on the same held-out rows.

The recent labelled rows are the stream's labelled predictions (``stream-monitor``'s output: an
impression's id, event time and label once its click came or its wait ran out) joined with the
impressions themselves (their raw Criteo fields). The newest ``retrain.last_rows`` (or those of the
last ``retrain.last_s`` seconds) become Criteo lines, prepped with the champion's hash buckets (so the
server and the stream encode the challenger's inputs as they did the champion's) and split: the
training part trains the challenger, the validation part (``retrain.holdout_fraction``) scores both.

Every retraining works under ``<work>/retrain-<decision>/`` and each step skips what it finished, so a
resumed retraining goes on where it stopped.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import hdfs_io
from tfos_jobs import sparkprep
from tfos_jobs.autopilot.loop import StreamJobHooks
from tfos_jobs.autopilot.policy import Policy
from tfos_jobs.config import LoopConfig, RunConfig, ScalingConfig
from tfos_jobs.ctr import prep, schema, steps
from tfos_jobs.ctr.model import ModelConfig
from tfos_jobs.registry import ModelRegistry


@dataclasses.dataclass
class CtrRetraining(StreamJobHooks):
    spark: Any
    policy: Policy
    impressions_uri: str        # the raw impression lines the stream scores (id, event time, Criteo fields)
    labeled_uri: str            # stream-monitor's labelled predictions
    metrics_uri: str            # stream-monitor's window records
    work_uri: str               # scratch for the retrainings
    model: ModelConfig = ModelConfig()
    scaling: ScalingConfig = steps.SCALING
    loop: LoopConfig = steps.LOOP

    def retrain(self, decision: dict) -> int:
        registry = ModelRegistry(self.policy.model)
        prepped = self._work(decision, "prep")
        for version, record in sorted(registry.state().versions.items()):   # trained before a restart?
            if record["state"] == "ready" and record.get("lineage", {}).get("data", {}).get("prep") == prepped:
                return version
        raw = self._work(decision, "raw")
        if not hdfs_io.is_published(raw):
            self.write_recent_lines(raw)
        if not hdfs_io.is_published(prepped):
            champion = steps.read_config(registry.version_uri(decision["champion"]))
            prep.prep(self.spark, raw, prepped, hash_buckets=int(champion["hash_buckets"]),
                      validation_fraction=self.policy.retrain.holdout_fraction, max_bad_fraction=0.05,
                      partitions=2 * self.scaling.num_workers)     # every TF worker needs files of its own
        run = RunConfig(model_dir=self._work(decision, "model"), export_uri=self.policy.model, export_version="auto",
                        allow_no_new_steps=True)
        result = steps.train(self.spark.sparkContext, prepped, self.model, scaling=self.scaling, loop=self.loop, run=run)
        return int(result.export_uri.rstrip("/").rsplit("/", 1)[-1])

    def write_recent_lines(self, out_uri: str) -> None:
        """The newest labelled impressions as labelled Criteo lines (published as one unit)."""
        from pyspark.sql import functions as F
        labeled = self.spark.read.parquet(sparkprep.spark_uri(self.labeled_uri)).select("id", "event_time", "label")
        lines = self.spark.read.text(sparkprep.spark_uri(self.impressions_uri))
        parts = F.split(F.col("value"), "\t", 3)
        fields = lines.select(F.get(parts, 0).alias("id"), F.get(parts, 2).alias("fields")).where(F.col("fields").isNotNull())
        joined = labeled.join(fields.dropDuplicates(["id"]), "id")
        r = self.policy.retrain
        if r.last_s is not None:
            newest = joined.agg(F.max("event_time")).first()[0]
            if newest is None:
                raise RuntimeError(f"no labelled impressions yet under {self.labeled_uri}")
            joined = joined.where(F.col("event_time") >= F.lit(newest) - F.expr(f"INTERVAL {int(r.last_s)} SECONDS"))
        else:
            joined = joined.orderBy(F.col("event_time").desc()).limit(int(r.last_rows))
        out = joined.select(F.concat(F.col("label").cast("int").cast("string"), F.lit("\t"), F.col("fields")).alias("value"))
        with hdfs_io.staged_output(out_uri, kind="ctr-retrain-lines") as version:
            out.write.mode("overwrite").text(sparkprep.spark_uri(version))

    def evaluate(self, decision: dict, versions: dict[str, int]) -> dict[str, float]:
        registry = ModelRegistry(self.policy.model)
        holdout = hdfs_io.join(prep.prep_dir(self._work(decision, "prep")), "valid")
        metric = self.policy.metric.split(":", 1)[0]
        scores = {}
        for role, version in versions.items():
            result = steps.evaluate(registry.version_uri(version), holdout,
                                    self._work(decision, f"evaluation-{role}-{version}.json"))
            scores[role] = float(result[metric])
        return scores

    def shadow(self, decision: dict, versions: dict[str, int], since_ms: int) -> list[dict]:
        """The champion's live predictions and the challenger's on the same impressions (labelled after
        ``since_ms``), per window of the policy's length: Spark sums a quality sketch per window, role
        and prediction bin (:mod:`tfos_jobs.streaming.quality`), the driver only reads the sums."""
        from pyspark.sql import functions as F
        from tfos_jobs import scoring
        from tfos_jobs.ctr.stream import encode_impressions
        from tfos_jobs.registry import CHALLENGER, CHAMPION
        from tfos_jobs.streaming import quality
        registry = ModelRegistry(self.policy.model)
        challenger_uri = registry.version_uri(versions[CHALLENGER])
        buckets = int(steps.read_config(challenger_uri)["hash_buckets"])
        labeled = (self.spark.read.parquet(sparkprep.spark_uri(self.labeled_uri))
                   .where((F.col(scoring.VERSION_COLUMN) == str(versions[CHAMPION]))
                          & (F.col("event_time") >= F.timestamp_millis(F.lit(int(since_ms)))))
                   .select("id", "label", F.col("prediction").alias(CHAMPION)))
        impressions = encode_impressions(self.spark.read.text(sparkprep.spark_uri(self.impressions_uri))
                                         .withColumn("source", F.input_file_name()), buckets)
        good = impressions.where(F.col("reason_code").isNull()).dropDuplicates(["id"])
        rows = good.join(labeled, "id")
        scored = scoring.score_dataframe(rows, challenger_uri, schema.FEATURES, keep=["event_time", "label", CHAMPION],
                                         prediction_column=CHALLENGER)
        length_s = self._window_s()
        bins = quality.DEFAULT_BINS
        sums = []
        for role in (CHAMPION, CHALLENGER):
            p = F.col(role).cast("double")
            b = F.least(F.greatest((p * bins).cast("long"), F.lit(0)), F.lit(bins - 1))
            clipped = F.least(F.greatest(p, F.lit(quality.EPS)), F.lit(1 - quality.EPS))
            loss = -(F.col("label") * F.log(clipped) + (1 - F.col("label")) * F.log(1 - clipped))
            sums.append(scored.groupBy(F.window("event_time", f"{length_s} seconds").alias("w"), b.alias("bin"))
                        .agg(F.sum("label").alias("pos"), F.sum(1 - F.col("label")).alias("neg"),
                             F.sum(p).alias("pred"), F.sum(loss).alias("loss")).withColumn("role", F.lit(role)))
        sketches: dict = {}
        for r in sums[0].unionByName(sums[1]).select(F.unix_millis(F.col("w.end")).alias("end_ms"), "role", "bin",
                                                       "pos", "neg", "pred", "loss").collect():
            s = sketches.setdefault(r["end_ms"], {}).setdefault(r["role"], quality.empty(bins))
            s[r["bin"]] += (r["pos"], r["neg"], r["pred"], r["loss"])
        metric = self.policy.metric.split(":", 1)[0]
        out = []
        for end_ms, by_role in sorted(sketches.items()):
            figures = {role: quality.summary(by_role.get(role, quality.empty(bins))) for role in (CHAMPION, CHALLENGER)}
            out.append({"window_end_ms": end_ms, "count": figures[CHAMPION]["count"],
                        **{role: figures[role][metric] for role in (CHAMPION, CHALLENGER)}})
        return out

    def incompatible(self, champion: int, challenger: int) -> str | None:
        registry = ModelRegistry(self.policy.model)
        old, new = (steps.read_config(registry.version_uri(v)) for v in (champion, challenger))
        for key in ("hash_buckets", "features"):
            if old.get(key) != new.get(key):
                return f"{key} differs: {old.get(key)!r} in the champion, {new.get(key)!r} in the challenger"
        if schema.FEATURES != new.get("features"):
            return "the challenger's features are not the job's"
        return None
