"""Each known tensorflowonspark 2.2.5 incompatibility has a fix; each test fails without its fix."""
import importlib.metadata
import subprocess
import sys
import textwrap

import pytest

from tfos_jobs import compat


def run_python(code, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_tfos_modules_import_in_a_fresh_interpreter():
    # Fails with setuptools >= 82 (no pkg_resources) or without six: both are pinned/declared.
    proc = run_python("import tensorflowonspark.TFSparkNode, tensorflowonspark.TFNode; print('ok')")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_installed_setuptools_still_ships_pkg_resources():
    major = int(importlib.metadata.version("setuptools").split(".")[0])
    assert major < 82, "setuptools>=82 removed pkg_resources, which tensorflowonspark imports"


def test_dependencies_declare_what_tfos_forgot():
    requirements = " ".join(importlib.metadata.requires("tfos-jobs") or [])
    assert "six" in requirements
    assert "setuptools" in requirements and "<82" in requirements


def test_missing_pkg_resources_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # makes `import pkg_resources` fail
    with pytest.raises(compat.IncompatibleEnvironment, match="setuptools<82"):
        compat.check_pkg_resources()


FORKSERVER_MANAGER = """
    import multiprocessing, uuid
    multiprocessing.set_start_method("forkserver", force=True)
    {fix}
    from tensorflowonspark import TFManager
    mgr = TFManager.start(uuid.uuid4().bytes, ["input"])
    mgr.set("state", "running")
    print("state", mgr.get("state"))
    mgr.shutdown()
"""


def test_tfmanager_fails_under_forkserver_without_the_fix():
    proc = run_python(FORKSERVER_MANAGER.format(fix=""))
    assert proc.returncode != 0
    assert "pickl" in proc.stderr.lower()


def test_tfmanager_starts_under_forkserver_with_the_fix():
    fix = "from tfos_jobs.compat import use_fork_for_tfmanager; use_fork_for_tfmanager()"
    proc = run_python(FORKSERVER_MANAGER.format(fix=fix))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "state 'running'" in proc.stdout


def _tiny_model():
    import keras
    inputs = {"a": keras.Input(shape=(), name="a"), "b": keras.Input(shape=(), name="b")}
    x = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs["a"]), keras.layers.Reshape((1,))(inputs["b"])])
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def test_tfos_export_is_broken_on_keras3_and_ours_works(tmp_path):
    import numpy as np
    import tensorflow as tf
    from tensorflowonspark import compat as tfos_compat
    from tfos_jobs.export import write_export

    model = _tiny_model()
    # TFoS calls model.save(dir, save_format='tf'): Keras 3 refuses that argument before writing anything
    with pytest.raises(ValueError, match=r"`save_format` argument is deprecated in Keras 3") as refused:
        tfos_compat.export_saved_model(model, str(tmp_path / "tfos"), is_chief=True)
    assert "save_format=tf" in str(refused.value), refused.value
    assert not (tmp_path / "tfos").exists()

    write_export(str(tmp_path / "ours"), model, {"a": "float32", "b": "float32"}, {"auc": 0.5})
    serve = tf.saved_model.load(str(tmp_path / "ours" / "saved_model")).signatures["serving_default"]
    features = {"a": np.array([0.5, -1.0], np.float32), "b": np.array([1.0, 2.0], np.float32)}
    served = serve(**{k: tf.constant(v) for k, v in features.items()})["prediction"].numpy().ravel()
    np.testing.assert_allclose(served, model.predict(features, verbose=0).ravel(), rtol=1e-5)
    assert (tmp_path / "ours" / "model.keras").is_file()
    assert (tmp_path / "ours" / "metrics.json").read_text().count("auc") == 1
