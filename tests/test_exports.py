"""Model exports as one published unit: replaceable exports, numbered versions in TF Serving's layout,
kind checks and exports written before the publish protocol (local storage, a real tiny Keras model)."""
import json
import os
import shutil

import numpy as np
import pytest

import hdfs_io
from tfos_jobs.export import (NotAnExport, check_export_target, export_dir, load_serving, publish_export,
                              read_export_file, saved_model_path, write_export)

FEATURES = {"x": "float32"}


def _model(weight):
    import keras
    inputs = {"x": keras.Input(shape=(), name="x", dtype="float32")}
    out = keras.layers.Dense(1, use_bias=False)(keras.layers.Reshape((1,))(inputs["x"]))
    model = keras.Model(inputs, out)
    model.set_weights([np.array([[weight]], dtype=np.float32)])
    return model


def _predict(export_uri):
    import tensorflow as tf
    return float(load_serving(export_uri, None)(x=tf.constant([1.0], tf.float32))["prediction"].numpy().ravel()[0])


def test_numbered_versions_use_tf_serving_layout_and_are_write_once(tmp_path):
    base = str(tmp_path / "models" / "ctr")
    first = publish_export(base, _model(2.0), FEATURES, {"auc": 0.7}, kind="ctr-export",
                           files={"ctr.json": {"hash_buckets": 10}}, version="auto")
    second = publish_export(base, _model(3.0), FEATURES, {"auc": 0.8}, kind="ctr-export", version="auto")
    assert (first, second) == (os.path.join(base, "1"), os.path.join(base, "2"))
    check_export_target(base, "ctr-export", version="auto")      # a third `train --version auto` may start
    listing = sorted(os.listdir(first))
    for name in ("saved_model.pb", "variables", "metrics.json", "ctr.json", "model.keras", "_SUCCESS"):
        assert name in listing, listing
    assert export_dir(base) == second and saved_model_path(second) == second
    assert _predict(base) == pytest.approx(3.0) and _predict(first) == pytest.approx(2.0)
    assert read_export_file(first, "ctr.json") == {"hash_buckets": 10}


def test_a_crashed_version_is_skipped_and_never_reused(tmp_path):
    base = str(tmp_path / "models")
    publish_export(base, _model(2.0), FEATURES, {}, version="auto")
    os.makedirs(os.path.join(base, "2", "variables"))              # a crash before _SUCCESS
    assert export_dir(base) == os.path.join(base, "1")
    assert publish_export(base, _model(4.0), FEATURES, {}, version="auto") == os.path.join(base, "3")


def test_replacing_an_export_needs_overwrite_and_keeps_the_old_one_on_failure(tmp_path):
    uri = str(tmp_path / "export")
    publish_export(uri, _model(2.0), FEATURES, {"run": 1}, kind="ctr-export", files={"ctr.json": {"v": 1}})
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_export_target(uri, "ctr-export")
    with pytest.raises(FileExistsError):
        publish_export(uri, _model(3.0), FEATURES, {"run": 2}, kind="ctr-export")
    with pytest.raises(TypeError):   # the new export fails midway (a file that is not JSON)
        publish_export(uri, _model(3.0), FEATURES, {"run": 2}, kind="ctr-export", files={"ctr.json": {1, 2}},
                       overwrite=True)
    assert read_export_file(uri, "metrics.json") == {"run": 1} and _predict(uri) == pytest.approx(2.0)
    publish_export(uri, _model(3.0), FEATURES, {"run": 2}, kind="ctr-export", files={"ctr.json": {"v": 2}},
                   overwrite=True)
    assert read_export_file(uri, "ctr.json") == {"v": 2} and _predict(uri) == pytest.approx(3.0)
    assert hdfs_io.published_kind(uri) == "ctr-export"


def test_an_export_over_a_prep_is_refused_and_the_prep_untouched(tmp_path):
    prep = str(tmp_path / "prep")
    with hdfs_io.staged_output(prep, kind="ctr-prep") as version:
        hdfs_io.mkdirs(hdfs_io.join(version, "train"))
        with hdfs_io.open(hdfs_io.join(version, "prep.json"), "w") as handle:
            json.dump({"rows": 5}, handle)
    before = hdfs_io.resolve(prep)
    with pytest.raises(hdfs_io.WrongKindError, match="ctr-prep"):
        check_export_target(prep, "ctr-export", overwrite=True)
    with pytest.raises(hdfs_io.WrongKindError):
        publish_export(prep, _model(1.0), FEATURES, {}, kind="ctr-export", overwrite=True)
    with pytest.raises(FileExistsError, match="not a directory of numbered model versions"):
        check_export_target(prep, "ctr-export", version="auto")
    assert hdfs_io.resolve(prep) == before and hdfs_io.published_kind(prep) == "ctr-prep"


def test_an_export_written_before_the_protocol_still_loads(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    write_export(str(legacy), _model(5.0), FEATURES, {"auc": 0.6}, {"ctr.json": {"hash_buckets": 3}})
    (legacy / "_SUCCESS").touch()
    assert export_dir(str(legacy)) == str(legacy)
    assert _predict(str(legacy)) == pytest.approx(5.0)
    assert read_export_file(str(legacy), "ctr.json") == {"hash_buckets": 3}
    shutil.rmtree(legacy / "saved_model")
    with pytest.raises(NotAnExport, match="re-create the export"):
        saved_model_path(str(legacy))


def test_a_directory_that_is_no_export_gives_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(NotAnExport) as err:
        export_dir(str(tmp_path / "junk"))
    assert "\n" not in str(err.value) and "train --export" in str(err.value)
