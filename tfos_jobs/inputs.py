"""Getting a worker's share of a Parquet data set into tf.data.

Multi-worker (MWMS): each worker streams its files straight from storage with ``hdfs_io.tf_dataset``.

Parameter-server: the dataset function is traced on the chief and *run on the remote worker*, where
Python readers cannot run (a ``py_function`` would look for the chief's interpreter). So each worker
first stages its shard on local disk as TFRecords of raw column bytes, one record per batch, and the
chief's dataset function reads ``<stage_root>/worker-<index>`` with native TF ops only.
"""
import os
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

import hdfs_io


@dataclass(frozen=True)
class DataPlan:
    """What the driver learns about a data set from Parquet footers alone (no rows are read)."""
    files: tuple          # hdfs_io FileInfo, in a stable order
    num_rows: int
    dtypes: dict          # column -> numpy dtype name
    file_rows: dict       # uri -> rows

    def shard(self, num_workers, index):
        return hdfs_io.shard_files(list(self.files), num_workers, index)

    def smallest_shard_rows(self, num_workers):
        return min(sum(self.file_rows[f.uri] for f in self.shard(num_workers, i)) for i in range(num_workers))


def plan_parquet(source):
    """List the data set's files and read their footers: row count and column types."""
    files = hdfs_io.list_data_files(source.uri)
    if not files:
        raise FileNotFoundError(f"no Parquet data files under {source.uri}")
    dtypes, file_rows = None, {}
    for info in files:
        with hdfs_io.open(info.uri, "rb") as handle:
            meta = pq.ParquetFile(handle)
            file_rows[info.uri] = meta.metadata.num_rows
            schema = meta.schema_arrow
        missing = [c for c in source.columns if c not in schema.names]
        if missing:
            raise ValueError(f"{info.uri}: missing column(s) {missing}; it has {schema.names}")
        file_types = {c: np.dtype(schema.field(c).type.to_pandas_dtype()).name for c in source.columns}
        if dtypes is not None and file_types != dtypes:
            raise ValueError(f"{info.uri}: column types {file_types} differ from the first file's {dtypes}")
        dtypes = file_types
    return DataPlan(files=tuple(files), num_rows=sum(file_rows.values()), dtypes=dtypes, file_rows=file_rows)


def split_labels(source, batch):
    """(features dict, labels) from a dict of column tensors."""
    features = {name: batch[name] for name in source.features}
    if not source.labels:
        return features
    if len(source.labels) == 1:
        return features, batch[source.labels[0]]
    return features, {name: batch[name] for name in source.labels}


def streaming_dataset(source, files, batch_size):
    """A worker's shard streamed from storage (MWMS): dict of column tensors per batch.

    Only full batches: MWMS all-gathers sparse (embedding) gradients, which fails when the workers'
    batches differ in size."""
    import tensorflow as tf
    dataset = hdfs_io.tf_dataset(files, list(source.columns), batch_size=batch_size, drop_remainder=True)
    return dataset.map(lambda batch: split_labels(source, batch), num_parallel_calls=tf.data.AUTOTUNE)


def stage_shard(source, files, batch_size, local_dir):
    """Write a worker's shard to ``local_dir`` as TFRecords, one record per batch (PS workers)."""
    import tensorflow as tf
    os.makedirs(local_dir, exist_ok=True)
    path = os.path.join(local_dir, "part-0.tfrecord")
    rows = 0
    with tf.io.TFRecordWriter(path) as writer:
        for batch in hdfs_io.iter_record_batches(files, list(source.columns), batch_size):
            feature = {}
            for name in source.columns:
                column = batch.column(name)
                if column.null_count:
                    raise ValueError(f"column {name!r} has nulls in a batch of {files}: fill them in prep")
                values = column.to_numpy(zero_copy_only=False)
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[values.tobytes()]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            rows += batch.num_rows
    return rows


def staged_dataset(source, dtypes, pattern):
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
