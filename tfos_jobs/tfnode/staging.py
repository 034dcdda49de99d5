"""Staging a parameter-server worker's share on local disk (runs in the TF worker process).

Under ParameterServerStrategy the chief's dataset function runs *on the remote worker* with native ops
only (a Python reader would look for the chief's interpreter), so each worker first writes its share
as TFRecords of raw column bytes, one record per batch, and the chief reads them back with
:func:`tfos_jobs.tfnode.datasets.staged_dataset`. Both sources stage through :func:`write_staged`:
a Parquet shard read from storage, and one pass of the DataFrame feed.
"""
from __future__ import annotations

import os
from typing import Iterable


def write_staged(batches: Iterable, columns: tuple, local_dir: str, origin: str) -> int:
    """Write Arrow record batches to ``local_dir/part-0.tfrecord`` (renamed into place when whole);
    return the rows written. A null value fails, naming ``origin`` (nulls have no raw bytes)."""
    import tensorflow as tf
    os.makedirs(local_dir, exist_ok=True)
    path = os.path.join(local_dir, "part-0.tfrecord")
    rows = 0
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
        for batch in batches:
            feature = {name: _bytes_feature(tf, batch, name, origin) for name in columns}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            rows += batch.num_rows
    os.replace(path + ".tmp", path)
    return rows


def _bytes_feature(tf, batch, name, origin):
    column = batch.column(name)
    if column.null_count:
        raise ValueError(f"column {name!r} has null values in {origin}: fill them before training "
                         "(in prep, or with df.fillna for a DataFrame)")
    values = column.to_numpy(zero_copy_only=False)
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[values.tobytes()]))
