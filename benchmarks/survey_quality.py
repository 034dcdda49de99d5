"""The survey model against logistic regression and the majority answer on public surveys it was never
tuned on (``tests/survey_public.py``), with the job's defaults (not a test; the last line is one JSON object).

Per data set: prep, train (the job's defaults: ``mwms``, 2 workers, 20 epochs) and evaluate on local
Spark, once per fold (k-fold cross-validation under about 1,000 respondents, else one 20% split). Per
target the figures are pooled over the folds (each validation row counted once). A target is a *win*
when the model's accuracy is at least LR's and its log loss at most LR's; ``worse_than_majority`` counts
targets whose model log loss is above the majority answer's.

``--categorical-targets`` treats every target as categorical (what the job could do before ordinal
targets), for the figures before and after a change.

Usage: python benchmarks/survey_quality.py [--datasets mass_survey,beps] [--categorical-targets]
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import survey_public  # noqa: E402
from tfos_jobs.config import RunConfig  # noqa: E402
from tfos_jobs.spark import local_cluster_master, spark_session  # noqa: E402
from tfos_jobs.survey import prep, schema, steps  # noqa: E402

METRICS = ("accuracy", "log_loss", "mae")


def run_fold(spark, spec_path, data, work, fold, folds):
    spec = schema.load_spec(spec_path)
    fraction = 1.0 / folds if folds > 1 else None
    prep_uri = os.path.join(work, f"prep-{fold}")
    plan = prep.run_prep(spark, spec, data, prep_uri, validation_fraction=fraction, fold=fold, log=lambda _: None)
    export = os.path.join(work, f"export-{fold}")
    steps.train(spark.sparkContext, prep.read_plan(prep_uri), prep_uri,
                run=RunConfig(model_dir=os.path.join(work, f"model-{fold}"), export_uri=export))
    return steps.evaluate(spark, plan, prep_uri, export, os.path.join(work, f"eval-{fold}"), log=lambda _: None)


def pool(reports):
    """Per target and method: each metric averaged over all validation rows of all folds."""
    out = {}
    for report in reports:
        for target, entry in report["targets"].items():
            methods = {m: v for m, v in entry.items() if isinstance(v, dict) and "rows" in v}
            for method, figures in methods.items():
                slot = out.setdefault(target, {}).setdefault(method, {"rows": 0})
                slot["rows"] += figures["rows"]
                for metric in METRICS:
                    if metric in figures:
                        slot[metric] = slot.get(metric, 0.0) + figures[metric] * figures["rows"]
    for methods in out.values():
        for figures in methods.values():
            for metric in METRICS:
                if metric in figures:
                    figures[metric] = round(figures[metric] / max(figures["rows"], 1), 4)
    return out


def judge(pooled):
    wins, worse = [], []
    for target, m in pooled.items():
        model, lr, majority = m["model"], m["logistic_regression"], m["majority"]
        if model["accuracy"] >= lr["accuracy"] and model["log_loss"] <= lr["log_loss"]:
            wins.append(target)
        if model["log_loss"] > majority["log_loss"]:
            worse.append(target)
    return wins, worse


def table(name, pooled):
    lines = [f"{name}: target  rows  accuracy model/majority/LR  log loss model/majority/LR  MAE model/median/LR"]
    for target, m in pooled.items():
        cells = [f"{m[k]['accuracy']:.3f}" for k in ("model", "majority", "logistic_regression")]
        losses = [f"{m[k]['log_loss']:.3f}" for k in ("model", "majority", "logistic_regression")]
        mae = "/".join(f"{m[k]['mae']:.3f}" for k in ("model", "majority", "logistic_regression")) \
            if "mae" in m["model"] else "-"
        lines.append(f"  {target}  {m['model']['rows']}  {'/'.join(cells)}  {'/'.join(losses)}  {mae}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(n for n, d in survey_public.DATASETS.items()
                                                        if not d.get("held_out")),
                        help="comma-separated names (default: all but the held-out ones)")
    parser.add_argument("--categorical-targets", action="store_true")
    parser.add_argument("--work", help="working directory (default: a temporary one, removed)")
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    spark = spark_session(local_cluster_master(executors=2, memory_mb=1536), "survey-quality")
    results, total_targets, total_wins, total_worse = {}, 0, 0, 0
    with tempfile.TemporaryDirectory(prefix="survey-quality-") as scratch:
        work_root = args.work or scratch
        for name in names:
            folds = survey_public.DATASETS[name]["folds"]
            work = os.path.join(work_root, name)
            data, spec_path = survey_public.write_dataset(name, work, args.categorical_targets)
            started = time.monotonic()
            reports = [run_fold(spark, spec_path, data, work, fold, folds) for fold in range(folds)]
            seconds = time.monotonic() - started
            pooled = pool(reports)
            wins, worse = judge(pooled)
            print(table(name, pooled), flush=True)
            print(f"  {len(wins)} of {len(pooled)} targets: model at least LR on accuracy and log loss; "
                  f"worse than majority on log loss: {worse or 'none'}; {seconds:.0f} s for {folds} fold(s)", flush=True)
            results[name] = {"folds": folds, "seconds": round(seconds, 1), "wins": wins, "worse_than_majority": worse,
                             "targets": pooled}
            total_targets, total_wins, total_worse = total_targets + len(pooled), total_wins + len(wins), \
                total_worse + len(worse)
    spark.stop()
    print(json.dumps({"datasets": results, "targets": total_targets, "wins": total_wins,
                      "win_fraction": round(total_wins / max(total_targets, 1), 3),
                      "worse_than_majority": total_worse, "categorical_targets": args.categorical_targets}))


if __name__ == "__main__":
    main()
