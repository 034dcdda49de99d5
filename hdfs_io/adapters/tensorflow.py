"""The storage layer's TensorFlow adapter: ``tf.data`` input from Parquet files on any scheme.

:func:`tf_dataset` streams record batches (:func:`hdfs_io.iter_record_batches`) through
``tf.data.Dataset.from_generator``: memory holds one Parquet row group plus a few batches, never a
whole file. TensorFlow is imported only when this is called, so ``import hdfs_io`` never loads it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ..parquet import DEFAULT_BATCH_SIZE, Files, _as_infos, _open_parquet, _signature, iter_record_batches

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["tf_dataset", "rebatch"]


def rebatch(batches: Iterator[pa.RecordBatch], batch_size: int, drop_remainder: bool = False) -> Iterator[pa.Table]:
    """Regroup record batches of any sizes into tables of exactly ``batch_size`` rows (the last may be
    smaller unless ``drop_remainder``)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size).combine_chunks()
            rest = table.slice(batch_size)
            pending = rest.combine_chunks().to_batches() if rest.num_rows else []
            rows = rest.num_rows
    if rows and not drop_remainder:
        yield pa.Table.from_batches(pending).combine_chunks()


def _tf_dtype(tf, typ: pa.DataType, column: str, uri: str):
    if pa.types.is_boolean(typ):
        return tf.bool, ()
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return tf.as_dtype(typ.to_pandas_dtype()), ()
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return tf.string, ()
    if pa.types.is_fixed_size_list(typ):
        inner, shape = _tf_dtype(tf, typ.value_type, column, uri)
        if shape:
            raise TypeError(f"column {column!r} in {uri}: nested lists are not supported")
        return inner, (typ.list_size,)
    raise TypeError(
        f"column {column!r} in {uri} has type {typ}, which tf_dataset does not convert "
        "(numbers, bool, strings and fixed-size lists are supported)"
    )


def _to_numpy(col: pa.ChunkedArray | pa.Array, typ: pa.DataType, column: str, uri: str) -> np.ndarray:
    if col.null_count:
        raise ValueError(f"column {column!r} has {col.null_count} null value(s) in {uri}: fill them before training")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(typ):
        flat = col.flatten()
        if flat.null_count:
            raise ValueError(f"column {column!r} has null list items in {uri}")
        return flat.to_numpy(zero_copy_only=False).reshape(len(col), typ.list_size)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def _with_uri(infos, columns, batch_size) -> Iterator[pa.RecordBatch]:
    for fi in infos:
        for batch in iter_record_batches([fi], columns, batch_size):
            for i, name in enumerate(batch.schema.names):
                if batch.column(i).null_count:
                    raise ValueError(
                        f"column {name!r} has {batch.column(i).null_count} null value(s) in {fi.uri}: "
                        "fill them before training"
                    )
            yield batch


def _column_types(uri: str, columns: list[str]) -> dict[str, pa.DataType]:
    """The Arrow types of ``columns`` in the first file (``SchemaMismatchError`` if one is missing)."""
    first = _open_parquet(uri)
    try:
        schema = first.schema_arrow
        _signature(schema, columns, uri)
    finally:
        first.close()
    return {c: schema.field(c).type for c in columns}


def tf_dataset(
    files: Files,
    feature_columns: Sequence[str],
    label_column: str | None = None,
    batch_size: int = 1024,
    drop_remainder: bool = False,
    prefetch: int = 2,
    read_batch_rows: int = DEFAULT_BATCH_SIZE,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batches from Parquet ``files`` (FileInfos, URIs, or a data set URI,
    e.g. this worker's :func:`hdfs_io.shard_files` share).

    Each element is a dict ``{column: tensor of shape [batch, ...]}`` of ``feature_columns``, or
    ``(features, label)`` when ``label_column`` is given. Files are read in the order given and rows in
    file order; shuffle with ``Dataset.shuffle`` on top if needed. The dataset can be iterated many
    times (each epoch re-reads the files)."""
    import tensorflow as tf

    if isinstance(feature_columns, str):
        feature_columns = [feature_columns]
    feature_columns = list(feature_columns)
    if not feature_columns:
        raise ValueError("tf_dataset needs at least one feature column")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    infos = _as_infos(files)
    if not infos:
        raise ValueError(f"tf_dataset got no files ({files!r})")
    columns = feature_columns + ([label_column] if label_column else [])
    if len(set(columns)) != len(columns):
        raise ValueError(f"column listed twice in {columns}")
    types = _column_types(infos[0].uri, columns)
    lead = batch_size if drop_remainder else None
    specs = {}
    for c in columns:
        dtype, shape = _tf_dtype(tf, types[c], c, infos[0].uri)
        specs[c] = tf.TensorSpec(shape=(lead, *shape), dtype=dtype, name=c)
    features_spec = {c: specs[c] for c in feature_columns}
    signature = (features_spec, specs[label_column]) if label_column else features_spec

    def generate():
        for table in rebatch(_with_uri(infos, columns, read_batch_rows), batch_size, drop_remainder):
            arrays = {c: _to_numpy(table.column(c), types[c], c, "the data set") for c in columns}
            feats = {c: arrays[c] for c in feature_columns}
            yield (feats, arrays[label_column]) if label_column else feats

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.prefetch(prefetch) if prefetch else ds
