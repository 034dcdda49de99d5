"""Adapters from the storage layer to the frameworks that consume it.

The storage layer itself (:mod:`hdfs_io.fs`, :mod:`hdfs_io.parquet`, ...) knows nothing of any ML
framework; each adapter imports its framework lazily, when first called.

* :mod:`hdfs_io.adapters.tensorflow`: ``tf.data`` datasets from Parquet files on any scheme
  (:func:`hdfs_io.tf_dataset`, :func:`hdfs_io.rebatch`).
"""
