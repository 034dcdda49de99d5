"""Parquet data sets: list, shard, read, stream, write.

A data set is a directory of part files, as Spark and :func:`write_parquet` write it. Names starting
with ``_`` or ``.`` (``_SUCCESS``, ``_temporary/``, ``_common_metadata``, ``.crc`` files, our hidden
temporary directories) are not data. Files in ``key=value`` sub-directories are included, but the
partition values are not added as columns (use ``pyarrow.dataset`` with :func:`hdfs_io.filesystem`
for Hive partitioning).

Every error names the file: a missing data set → ``FileNotFoundError``; a file that is not Parquet or
is damaged → :class:`CorruptFileError`; a file whose columns or types differ from the first file's →
:class:`SchemaMismatchError`.
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from . import backends
from . import fs as _fs
from .errors import CorruptFileError, SchemaMismatchError, not_found
from .fs import FileInfo
from .publishing import data_location, staged_output
from .stores import Store

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "list_data_files",
    "shard_files",
    "read_parquet",
    "iter_record_batches",
    "write_parquet",
    "DEFAULT_BATCH_SIZE",
]

DEFAULT_BATCH_SIZE = 8192
# what the readers take: a data set (or file) URI, or a list of file URIs / FileInfos
Files = Union[str, os.PathLike, Iterable[Union[FileInfo, str, os.PathLike]]]
READ_THREADS = 4


def _store_of(uri: str) -> Store:
    return backends.resolve(uri)[0]


def _is_data(rel: str) -> bool:
    return not any(part.startswith(("_", ".")) for part in rel.split("/")) and not rel.endswith(".crc")


def list_data_files(uri: str, require_success: bool = False) -> list[FileInfo]:
    """The data files of a data set directory (recursively, sorted by URI), or ``[file]`` for a file.
    A published directory (see :mod:`hdfs_io.publishing`) gives the files of its current version.
    With ``require_success=True`` a directory must be published (either layout)."""
    top = _fs.info(uri)
    if not top.is_dir:
        return [top]
    store, loc = backends.resolve(top.uri)   # info() followed a path inside a published output
    data = data_location(store, loc, require_success)
    return sorted((fi for rel, fi in _fs.walk_files(data.uri) if _is_data(rel)), key=lambda f: f.uri)


def _as_infos(files: Files) -> list[FileInfo]:
    if isinstance(files, (str, os.PathLike)):
        return list_data_files(os.fspath(files))
    out = []
    for f in files:
        if isinstance(f, FileInfo):
            out.append(f)
        else:
            out.append(_fs.info(os.fspath(f)))
    return out


def shard_files(files: Files, num_shards: int, index: int) -> list[FileInfo]:
    """Worker ``index`` of ``num_shards``'s share of ``files`` (FileInfos, URIs, or a data set URI).

    Deterministic (independent of input order and of the machine), balanced by bytes and a partition:
    every file goes to exactly one shard. Files are assigned largest first, each to the shard with the
    fewest bytes so far (ties: fewer files, then lower index), so the largest shard exceeds the
    smallest by at most one file's size. A shard may be empty when there are fewer files than shards.
    The share is returned sorted by URI."""
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if not isinstance(index, int) or not 0 <= index < num_shards:
        raise ValueError(f"index must be in [0, {num_shards}), got {index!r}")
    infos = _as_infos(files)
    seen = set()
    for fi in infos:
        if fi.uri in seen:
            raise ValueError(f"file listed twice: {fi.uri}")
        seen.add(fi.uri)
    loads = [[0, 0, i] for i in range(num_shards)]  # bytes, files, shard
    mine = []
    for fi in sorted(infos, key=lambda f: (-f.size, f.uri)):
        target = min(loads)
        target[0] += fi.size
        target[1] += 1
        if target[2] == index:
            mine.append(fi)
    return sorted(mine, key=lambda f: f.uri)


def _open_parquet(uri: str, pre_buffer: bool = False, whole: bool = False) -> pq.ParquetFile:
    """Open a Parquet file. ``whole=True`` (the caller decodes every column): on HDFS fetch the file
    in one sequential pass into memory instead of seeking through it with Python-level reads."""
    store, loc = backends.resolve(uri)
    try:
        if whole and not store.caps.ranged_reads:
            nf = pa.BufferReader(pa.py_buffer(store.read_all(loc)))
        else:
            nf = store.meta(loc, "open", store.fs.open_input_file, loc.path)
    except FileNotFoundError:
        raise not_found(uri) from None
    except IsADirectoryError:
        raise CorruptFileError(uri, "is a directory, not a Parquet file") from None
    try:
        return store.transfer(uri, "read footer of", 1 << 20, lambda: pq.ParquetFile(nf, pre_buffer=pre_buffer))
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        nf.close()
        raise _corrupt(uri, exc) from None


def _signature(schema: pa.Schema, columns: Sequence[str] | None, uri: str) -> list[tuple[str, pa.DataType]]:
    if columns is None:
        return [(f.name, f.type) for f in schema]
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise SchemaMismatchError(uri, f"no column(s) {missing}; it has {schema.names}")
    return [(c, schema.field(c).type) for c in columns]


def _check(expected, got, uri: str) -> None:
    if expected != got:
        exp = dict(expected)
        diffs = [f"{n}: {t} (expected {exp.get(n, 'no such column')})" for n, t in got if exp.get(n) != t]
        extra = [n for n in exp if n not in dict(got)]
        if extra:
            diffs.append(f"missing {extra}")
        raise SchemaMismatchError(uri, "; ".join(diffs) or f"column order {[n for n, _ in got]}")


def _corrupt(uri: str, exc: Exception) -> Exception:
    """A decode failure as CorruptFileError naming the file; network failures stay network errors."""
    if isinstance(exc, (ConnectionError, TimeoutError, FileNotFoundError, PermissionError,
                        CorruptFileError, SchemaMismatchError)):
        return exc
    if isinstance(exc, OSError):
        translated = _store_of(uri).translate_error(uri, exc)
        if translated is not exc:
            return translated
    return CorruptFileError(uri, str(exc))


def read_parquet(uri: Files, columns: Sequence[str] | None = None, threads: int = READ_THREADS) -> pa.Table:
    """Read a Parquet file, a data set directory or a list of files/FileInfos into one Table.
    Files are read in parallel; all must agree on the (selected) columns' names and types."""
    infos = _as_infos(uri)
    if not infos:
        raise FileNotFoundError(f"no Parquet data files in {uri}")
    columns = list(columns) if columns is not None else None

    def read_one(fi: FileInfo):
        pf = _open_parquet(fi.uri, pre_buffer=True, whole=columns is None)
        try:
            sig = _signature(pf.schema_arrow, columns, fi.uri)
            return sig, _store_of(fi.uri).transfer(fi.uri, "read", fi.size,
                                                   lambda: pf.read(columns=columns, use_threads=True))
        except Exception as exc:  # noqa: BLE001
            raise _corrupt(fi.uri, exc) from None
        finally:
            pf.close()

    if len(infos) == 1 or threads <= 1:
        results = [read_one(fi) for fi in infos]
    else:
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(infos))) as pool:
            futures = [pool.submit(read_one, fi) for fi in infos]
            results = [f.result() for f in futures]
    expected = results[0][0]
    for fi, (sig, _) in zip(infos, results):
        _check(expected, sig, fi.uri)
    tables = [t for _, t in results]
    schema = tables[0].schema
    return pa.concat_tables([t.replace_schema_metadata(schema.metadata) if t.schema != schema else t for t in tables])


def iter_record_batches(
    files: Files, columns: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of up to ``batch_size`` rows from ``files`` (FileInfos, URIs, or a data
    set URI), file by file, one row group in memory at a time. Schemas are checked file by file
    against the first (``SchemaMismatchError`` naming the file); decode errors name the file."""
    infos = _as_infos(files)
    columns = list(columns) if columns is not None else None
    expected = None
    for fi in infos:
        pf = _open_parquet(fi.uri)
        try:
            sig = _signature(pf.schema_arrow, columns, fi.uri)
            if expected is None:
                expected = sig
            _check(expected, sig, fi.uri)
            it = pf.iter_batches(batch_size=batch_size, columns=columns, use_threads=False)
            store = _store_of(fi.uri)
            md = pf.metadata
            group_bytes = max((md.row_group(i).total_byte_size for i in range(md.num_row_groups)), default=0)
            while True:
                try:
                    batch = store.transfer(fi.uri, "read", group_bytes, next, it)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001
                    raise _corrupt(fi.uri, exc) from None
                yield batch
        finally:
            pf.close()


def write_parquet(
    table: pa.Table | pa.RecordBatch | pd.DataFrame,
    uri: str,
    rows_per_file: int | None = 1_000_000,
    row_group_size: int = 65536,
    compression: str = "snappy",
    overwrite: bool = False,
    kind: str | None = None,
) -> list[str]:
    """Write ``table`` (a ``pyarrow.Table``, ``RecordBatch`` or pandas DataFrame) as a new version of
    the data set ``uri`` (``part-NNNNN.parquet`` files plus ``_SUCCESS``) and publish it (see
    :mod:`hdfs_io.publishing`; ``kind`` is stored in its pointer). Returns the URIs of the part files
    (inside the published version, immutable)."""
    if not isinstance(table, pa.Table):
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        elif hasattr(table, "to_parquet") and hasattr(table, "columns"):
            table = pa.Table.from_pandas(table, preserve_index=False)
        else:
            raise TypeError(f"write_parquet takes a pyarrow Table/RecordBatch or pandas DataFrame, got {type(table)}")
    n = table.num_rows
    step = rows_per_file if rows_per_file and rows_per_file > 0 else max(n, 1)
    names = []
    with staged_output(uri, overwrite=overwrite, kind=kind) as tmp:
        store, tmp_loc = backends.resolve(tmp)
        for i, start in enumerate(range(0, max(n, 1), step)):
            name = f"part-{i:05d}.parquet"
            part = table.slice(start, step)
            path = f"{tmp_loc.path}/{name}"
            with store.fs.open_output_stream(path, compression=None) as out:
                pq.write_table(part, out, row_group_size=row_group_size, compression=compression)
            names.append(name)
    return [_fs.join(tmp, name) for name in names]

