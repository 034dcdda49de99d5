"""hdfs_io: one URI-based storage layer over hdfs:// (and viewfs://), s3:// / s3a://, file:// and
plain paths, for TensorFlow-on-Spark jobs.

TensorFlow 2.21 cannot open hdfs:// or s3:// itself (tensorflow-io is dead, libhdfs unavailable),
so all remote I/O goes through this package: file operations, atomic publishing of output
directories, Parquet data sets (read, write, shard) and TFRecord files. ``tf.data`` input is the
TensorFlow adapter's (:mod:`hdfs_io.adapters.tensorflow`, re-exported as :func:`tf_dataset`).

Each scheme is served by one store class (:mod:`hdfs_io.stores`; chosen by measurement): pyarrow's
LocalFileSystem for local paths, pyarrow's S3FileSystem for S3, hdfs-native (Rust, no JVM) for
HDFS/viewfs. Stores declare their capabilities (atomic rename, real directories, ...) and the generic
code follows them. Every remote call is bounded by ``HDFS_IO_TIMEOUT_S`` (default 30 s).
"""
from .backends import reset
from .config import timeout_s
from .errors import (
    CorruptFileError,
    CredentialsInURIError,
    NotPublishedError,
    SchemaMismatchError,
    StorageError,
    StorageTimeoutError,
    StorageUnavailableError,
    WrongKindError,
)
from .fs import (
    AtomicWriter,
    FileInfo,
    copy,
    create_new,
    delete,
    download,
    exists,
    filesystem,
    glob,
    info,
    join,
    ls,
    mkdirs,
    open,
    read_snapshot,
    rename,
    size,
    upload,
    walk_files,
)
from .parquet import iter_record_batches, list_data_files, read_parquet, shard_files, write_parquet
from .publishing import (
    SUCCESS,
    PublishedInfo,
    is_published,
    publish,
    publish_dir,
    publish_once,
    published_info,
    published_kind,
    require_published,
    resolve,
    staged_output,
)
from .adapters.tensorflow import rebatch, tf_dataset
from .tfrecord import read_tfrecords, write_tfrecords

__all__ = [
    "AtomicWriter",
    "CorruptFileError",
    "CredentialsInURIError",
    "FileInfo",
    "NotPublishedError",
    "PublishedInfo",
    "SUCCESS",
    "SchemaMismatchError",
    "StorageError",
    "StorageTimeoutError",
    "StorageUnavailableError",
    "copy",
    "create_new",
    "delete",
    "download",
    "exists",
    "filesystem",
    "glob",
    "info",
    "is_published",
    "iter_record_batches",
    "join",
    "list_data_files",
    "ls",
    "mkdirs",
    "open",
    "publish",
    "publish_dir",
    "publish_once",
    "published_info",
    "published_kind",
    "read_parquet",
    "read_snapshot",
    "read_tfrecords",
    "rebatch",
    "require_published",
    "reset",
    "resolve",
    "rename",
    "shard_files",
    "size",
    "staged_output",
    "tf_dataset",
    "timeout_s",
    "upload",
    "walk_files",
    "write_parquet",
    "write_tfrecords",
    "WrongKindError",
]
