"""A prep is one published unit (issue #18): a failed re-prep (too many bad rows, an exception while
writing) leaves the previous prep byte for byte, the survey splits and their plan never part; a prep over
an output of another kind, or over a directory that is not an output, is refused and leaves it as it was."""
import json
import os
import subprocess
import sys

import pytest

import hdfs_io
from tfos_jobs import sparkprep
from tfos_jobs.ctr import cli as ctr_cli
from tfos_jobs.ctr import prep as ctr_prep
from tfos_jobs.ctr import synthetic as generator
from tfos_jobs.survey import prep as survey_prep
from tfos_jobs.survey import schema as survey_spec
from tfos_jobs.survey import synthetic as survey_data

VENV_BIN = os.path.dirname(sys.executable)


def snapshot(uri):
    """Every file's bytes in the directory tree ``uri`` (relative path -> bytes)."""
    out = {}
    for top, _, files in os.walk(uri):
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, uri)] = handle.read()
    return out


def published_state(uri):
    """What a reader can see at ``uri``: the pointer's bytes, the resolved version and all its files,
    and the names in ``uri`` itself (a failed run must not add or remove any)."""
    version = hdfs_io.resolve(uri)
    with open(os.path.join(uri, "_CURRENT"), "rb") as handle:
        pointer = handle.read()
    return {"pointer": pointer, "version": version, "files": snapshot(version), "names": sorted(os.listdir(uri))}


def make_export(uri):
    with hdfs_io.staged_output(uri, kind="ctr-export") as version:
        with hdfs_io.open(hdfs_io.join(version, "saved_model.pb"), "wb") as handle:
            handle.write(b"model")


# ------------------------------------------------------------------ refused targets (no Spark needed)


def test_prep_over_another_kind_is_refused_before_any_work(tmp_path, capsys):
    export = str(tmp_path / "export")
    make_export(export)
    before = published_state(export)
    raw = str(tmp_path / "raw")
    generator.generate(raw, 50, seed=1)
    # spark=None: the target is checked before Spark is touched
    with pytest.raises(hdfs_io.WrongKindError, match="ctr-export"):
        ctr_prep.prep(None, raw, export, overwrite=True)
    with pytest.raises(hdfs_io.WrongKindError, match="ctr-export"):
        survey_prep.check_output(export, overwrite=True)
    # the CLI: one line, exit 2, before Spark starts
    assert ctr_cli.main(["prep", "--input", raw, "--output", export, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tfos-ctr prep: error: ") and "'ctr-export'" in err
    assert published_state(export) == before
    # a CTR prep is not a survey prep either, and the other way round
    prep_dir = str(tmp_path / "ctr-prep")
    with hdfs_io.staged_output(prep_dir, kind=ctr_prep.KIND) as version:
        with hdfs_io.open(hdfs_io.join(version, "prep.json"), "w") as handle:
            json.dump({"rows": 1}, handle)
    with pytest.raises(hdfs_io.WrongKindError, match="ctr-prep"):
        survey_prep.check_output(prep_dir, overwrite=True)
    ctr_prep.check_output(prep_dir, overwrite=True)   # the same kind: replaceable with --overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        ctr_prep.check_output(prep_dir, overwrite=False)


def test_prep_over_a_directory_that_is_not_an_output_is_refused(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text("ckpt-1")
    (model_dir / "_SUCCESS").touch()   # even a legacy published output: it holds no prep.json
    with pytest.raises(FileExistsError, match="not a ctr-prep output"):
        ctr_prep.prep(None, str(tmp_path), str(model_dir), overwrite=True)
    assert sorted(os.listdir(model_dir)) == ["_SUCCESS", "checkpoint"]
    empty = tmp_path / "empty"
    empty.mkdir()
    survey_prep.check_output(str(empty), overwrite=True)   # nothing to lose


def test_prep_readers_resolve_once_and_name_the_fix(tmp_path):
    # a prep written before the protocol (report at the top, no pointer) still reads
    legacy = tmp_path / "legacy"
    (legacy / "train").mkdir(parents=True)
    (legacy / "prep.json").write_text(json.dumps({"hash_buckets": 7, "train": "elsewhere"}))
    report = ctr_prep.read_report(str(legacy))
    assert report["hash_buckets"] == 7 and report["train"] == hdfs_io.join(str(legacy), "train")
    # a directory with parts but no report and no pointer: one line that says to re-run prep
    half = tmp_path / "half"
    (half / "train").mkdir(parents=True)
    with pytest.raises(hdfs_io.NotPublishedError, match="re-run `tfos-ctr prep`"):
        ctr_prep.read_report(str(half))
    with pytest.raises(FileNotFoundError, match="run `tfos-survey prep` first"):
        survey_prep.read_plan(str(tmp_path / "missing"))
    # a published prep: every part from the one version the pointer names
    uri = str(tmp_path / "published")
    with hdfs_io.staged_output(uri, kind=ctr_prep.KIND) as version:
        with hdfs_io.open(hdfs_io.join(version, "prep.json"), "w") as handle:
            json.dump({"hash_buckets": 9}, handle)
    report = ctr_prep.read_report(uri)
    assert report["valid"] == hdfs_io.join(hdfs_io.resolve(uri), "valid") and report["hash_buckets"] == 9
    # a path inside a published output given to a reader without the protocol: the current version's
    assert sparkprep.data_dir(hdfs_io.join(uri, "prep.json")) == hdfs_io.join(hdfs_io.resolve(uri), "prep.json")
    assert sparkprep.data_dir(uri) == hdfs_io.resolve(uri)
    with pytest.raises(FileNotFoundError, match="input .*nope does not exist"):
        sparkprep.data_dir(str(tmp_path / "nope"))


# ------------------------------------------------------------------ failed re-preps (local Spark)


@pytest.fixture(scope="module")
def ctr_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    good, bad = str(root / "good"), str(root / "bad")
    generator.generate(good, 1500, files=2, seed=3)
    generator.generate(bad, 1500, files=2, seed=4, malformed_fraction=0.5)
    return good, bad


@pytest.mark.slow
def test_failed_ctr_prep_overwrite_keeps_the_old_prep_byte_for_byte(local_spark, ctr_inputs, tmp_path, monkeypatch):
    good, bad = ctr_inputs
    out = str(tmp_path / "prep")
    first = ctr_prep.prep(local_spark, good, out, hash_buckets=100)
    before = published_state(out)
    assert {"prep.json", "train/_SUCCESS", "valid/_SUCCESS", "quarantine/_SUCCESS"} <= set(before["files"])

    # a bad day: half the lines malformed, far above the limit
    with pytest.raises(sparkprep.BadInputError, match="above the limit") as err:
        ctr_prep.prep(local_spark, bad, out, hash_buckets=100, overwrite=True)
    assert published_state(out) == before, "a failed re-prep changed the published prep"
    assert ctr_prep.read_report(out) == first
    rejected = ctr_prep.rejected_uri(out)
    assert rejected in str(err.value) and hdfs_io.read_parquet(rejected).num_rows > 500

    # an exception while the new version is being written (after train, before valid)
    real = sparkprep.write_part

    def fail_on_valid(df, uri, *args, **kwargs):
        if uri.endswith("/valid"):
            raise OSError("executor lost while writing valid")
        return real(df, uri, *args, **kwargs)
    monkeypatch.setattr(sparkprep, "write_part", fail_on_valid)
    with pytest.raises(OSError, match="executor lost"):
        ctr_prep.prep(local_spark, good, out, hash_buckets=50, overwrite=True)
    assert published_state(out) == before


@pytest.mark.slow
def test_survey_prep_failing_midway_keeps_the_old_splits_and_plan_together(local_spark, tmp_path, monkeypatch):
    table, generated = survey_data.synthetic_survey(rows=300, questions=8, targets=1, seed=2)
    csv_uri = survey_data.write_csv(table, str(tmp_path / "survey.csv"))
    parsed = survey_spec.parse_spec(json.dumps(generated))
    out = str(tmp_path / "prep")
    plan = survey_prep.run_prep(local_spark, parsed, csv_uri, out, files=1, log=lambda _: None)
    before = published_state(out)
    assert hdfs_io.published_kind(out) == survey_prep.KIND
    assert json.loads(before["files"]["prep.json"])["inputs"] == plan["inputs"]

    def broken_plan_write(obj, uri):
        raise OSError("storage went away while writing the plan")
    monkeypatch.setattr(sparkprep, "write_json", broken_plan_write)
    with pytest.raises(OSError, match="writing the plan"):   # another split: new splits, then the plan fails
        survey_prep.run_prep(local_spark, parsed, csv_uri, out, files=2, validation_fraction=0.5, overwrite=True,
                             log=lambda _: None)
    assert published_state(out) == before, "new splits were published without their plan (or the old plan lost)"
    assert survey_prep.read_plan(out) == plan


@pytest.mark.slow
def test_ctr_prep_cli_overwrite_as_a_user_types_it(ctr_inputs, tmp_path):
    good, _ = ctr_inputs
    out = str(tmp_path / "prep")
    cmd = [os.path.join(VENV_BIN, "tfos-ctr"), "prep", "--input", good, "--output", out, "--hash-buckets", "100",
           "--master", "local[2]"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    old = hdfs_io.resolve(out)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == \
        f"tfos-ctr prep: error: output {out} already exists (use --overwrite to replace it)"
    proc = subprocess.run(cmd + ["--overwrite", "--validation-fraction", "0.3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    new = hdfs_io.resolve(out)
    assert new != old and report["train"] == hdfs_io.join(new, "train") and report["validation_fraction"] == 0.3
    assert ctr_prep.read_report(out) == report
    rows = hdfs_io.read_parquet(report["train"]).num_rows + hdfs_io.read_parquet(report["valid"]).num_rows
    assert rows == report["good"] == 1500
    assert sorted(os.listdir(out)) == sorted(["_CURRENT", os.path.basename(old), os.path.basename(new)])
