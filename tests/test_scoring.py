"""Generic Spark batch scoring: once-per-process model load, Arrow batches, atomic output."""
import numpy as np
import pyarrow as pa
import pytest

import hdfs_io
from tfos_jobs import scoring
from tfos_jobs.export import export_dir, publish_export

pytestmark = pytest.mark.slow
FEATURES = {"x": "float32", "k": "int64"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras
    root = tmp_path_factory.mktemp("scoring")
    x = keras.Input(shape=(), name="x", dtype="float32")
    k = keras.Input(shape=(), name="k", dtype="int64")
    h = keras.layers.Concatenate()([keras.layers.Reshape((1,))(x), keras.layers.Embedding(10, 2)(k)])
    model = keras.Model({"x": x, "k": k}, keras.layers.Dense(1, activation="sigmoid")(h))
    export = publish_export(str(root / "export"), model, FEATURES, {"auc": 0.5})
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(2000), "x": rng.normal(size=2000).astype(np.float32),
                      "k": rng.integers(0, 10, 2000)})
    data = str(root / "data")
    hdfs_io.write_parquet(table, data, rows_per_file=700)
    expected = model({"x": table.column("x").to_numpy(), "k": table.column("k").to_numpy()}).numpy().ravel()
    return export, data, expected


def test_scores_match_the_model(local_spark, exported, tmp_path):
    export, data, expected = exported
    out = str(tmp_path / "scores")
    result = scoring.score(local_spark, export, data, out, list(FEATURES), keep=["id"], batch_size=300,
                           partitions=2)
    assert result["rows"] == 2000 and hdfs_io.is_published(out)
    table = hdfs_io.read_parquet(out)
    assert table.column_names == ["id", "prediction", "model_version"]
    assert set(table.column("model_version").to_pylist()) == {scoring.model_version(export_dir(export))}
    order = np.argsort(table.column("id").to_numpy())
    np.testing.assert_allclose(table.column("prediction").to_numpy()[order], expected, rtol=1e-5, atol=1e-6)


def test_bad_requests(local_spark, exported, tmp_path):
    export, data, _ = exported
    with pytest.raises(ValueError, match=r"\['nope'\] not in the data"):
        scoring.score(local_spark, export, data, str(tmp_path / "o"), ["x", "nope"])
    with pytest.raises(FileNotFoundError, match="missing-export"):
        scoring.score(local_spark, str(tmp_path / "missing-export"), data, str(tmp_path / "o"), list(FEATURES))
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        scoring.score(local_spark, export, data, str(tmp_path / "taken"), list(FEATURES))


def test_failed_scoring_leaves_no_output(local_spark, exported, tmp_path):
    export, _, _ = exported
    data = str(tmp_path / "nulls")
    hdfs_io.write_parquet(pa.table({"x": pa.array([1.0, None], pa.float32()), "k": [1, 2]}), data)
    out = str(tmp_path / "o")
    with pytest.raises(Exception, match="null value"):
        scoring.score(local_spark, export, data, out, list(FEATURES))
    assert not hdfs_io.exists(out)
