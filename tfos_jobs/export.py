"""Export a trained model: a SavedModel with a ``serving_default`` signature, a ``model.keras`` file and
``metrics.json``, published atomically to storage (the directory appears complete or not at all).

TFoS's ``compat.export_saved_model`` calls ``model.save(dir, save_format='tf')``, which Keras 3 rejects;
this module replaces it.
"""
import json
import os

import hdfs_io

SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
METRICS_FILE = "metrics.json"


def serving_module(model, feature_dtypes: dict):  # -> tf.Module
    """A tf.Module whose ``serving_default`` takes one ``[batch]`` tensor per feature column."""
    import tensorflow as tf
    spec = {name: tf.TensorSpec([None], tf.dtypes.as_dtype(dtype), name=name)
            for name, dtype in feature_dtypes.items()}

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[spec])
        def serve(self, features):
            outputs = self.model(features, training=False)
            return outputs if isinstance(outputs, dict) else {"prediction": outputs}

    return Serving()


def write_export(local_dir: str, model, feature_dtypes: dict, metrics: dict) -> None:
    """Write SavedModel, Keras file and metrics into a local directory."""
    import tensorflow as tf
    module = serving_module(model, feature_dtypes)
    tf.saved_model.save(module, os.path.join(local_dir, SAVED_MODEL),
                        signatures={"serving_default": module.serve})
    model.save(os.path.join(local_dir, KERAS_FILE))
    with open(os.path.join(local_dir, METRICS_FILE), "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)


def publish_export(export_uri: str, model, feature_dtypes: dict, metrics: dict) -> str:
    # A new training run replaces the previous export as a whole.
    with hdfs_io.publish(export_uri, overwrite=True) as local_dir:
        write_export(local_dir, model, feature_dtypes, metrics)
    return export_uri


def load_serving(export_uri: str, local_cache: str):  # -> the serving_default signature
    """Load an export's serving function (downloading it first when it is remote)."""
    import tensorflow as tf
    local = export_uri if os.path.isdir(export_uri) else local_cache
    if local is local_cache:
        hdfs_io.download(export_uri, local_cache)
    return tf.saved_model.load(os.path.join(local, SAVED_MODEL)).signatures["serving_default"]
