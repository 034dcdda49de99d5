"""tf.data pipelines of the TF process: a worker's Parquet shard streamed from storage (MWMS), and a
staged share read back with native ops (PS; see ``tfos_jobs.tfnode.staging``)."""
from __future__ import annotations

import hdfs_io


def split_labels(source, batch: dict):
    """(features dict, labels) from a dict of columns (tensors, arrays or specs); ``source`` is anything
    with ``features`` and ``labels`` names."""
    features = {name: batch[name] for name in source.features}
    if not source.labels:
        return features
    if len(source.labels) == 1:
        return features, batch[source.labels[0]]
    return features, {name: batch[name] for name in source.labels}


def streaming_dataset(source, files: list, batch_size: int):
    """A worker's shard streamed from storage (MWMS): dict of column tensors per batch.

    Only full batches: MWMS all-gathers sparse (embedding) gradients, which fails when the workers'
    batches differ in size."""
    import tensorflow as tf
    dataset = hdfs_io.tf_dataset(files, list(source.columns), batch_size=batch_size, drop_remainder=True)
    return dataset.map(lambda batch: split_labels(source, batch), num_parallel_calls=tf.data.AUTOTUNE)


def staged_dataset(source, dtypes: dict, pattern):
    """Read staged records back with native ops only; ``pattern`` may be a string tensor."""
    import tensorflow as tf
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in source.columns}

    def decode(record):
        raw = tf.io.parse_single_example(record, spec)
        return {name: tf.io.decode_raw(raw[name], tf.dtypes.as_dtype(dtypes[name])) for name in source.columns}

    files = tf.io.matching_files(pattern)
    return (tf.data.TFRecordDataset(files)
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
            .map(lambda batch: split_labels(source, batch)))
