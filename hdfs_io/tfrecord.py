"""TFRecord files through our file objects (TensorFlow cannot open hdfs:// or s3:// itself).

The framing is TFRecord's own: for each record ``uint64 length``, ``uint32 masked_crc32c(length)``,
``data``, ``uint32 masked_crc32c(data)``, little endian. Files written here are read by
``tf.data.TFRecordDataset`` and the other way round; ``compression="GZIP"`` matches TF's
``compression_type="GZIP"``. CRC32C comes from ``google-crc32c`` (C implementation).
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Iterable, Iterator

import google_crc32c

from . import fs as _fs
from .errors import CorruptFileError
from .parquet import Files, list_data_files

__all__ = ["write_tfrecords", "read_tfrecords", "masked_crc32c"]

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _as_bytes(record) -> bytes:
    if isinstance(record, (bytes, bytearray, memoryview)):
        return bytes(record)
    if hasattr(record, "SerializeToString"):  # tf.train.Example and other protos
        return record.SerializeToString()
    if hasattr(record, "numpy"):  # a scalar tf.string tensor
        return bytes(record.numpy())
    raise TypeError(f"TFRecord records must be bytes or protos, got {type(record)}")


def write_tfrecords(records: Iterable, uri: str, compression: str | None = None) -> int:
    """Write ``records`` (bytes or protos such as ``tf.train.Example``) to one TFRecord file at
    ``uri``, atomically (nothing appears there unless every record was written). Returns the count."""
    if compression not in (None, "", "GZIP"):
        raise ValueError(f"compression must be None or 'GZIP', got {compression!r}")
    count = 0
    with _fs.open(uri, "wb") as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compression == "GZIP" else raw
        try:
            for record in records:
                data = _as_bytes(record)
                header = _U64.pack(len(data))
                out.write(header)
                out.write(_U32.pack(masked_crc32c(header)))
                out.write(data)
                out.write(_U32.pack(masked_crc32c(data)))
                count += 1
        finally:
            if out is not raw:
                out.close()  # flushes the gzip trailer into raw; raw itself commits on exit
    return count


def _read_exact(f, n: int, uri: str, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptFileError(uri, f"truncated {what} at byte {offset} (wanted {n} bytes, got {len(data)})")
    return data


def _read_file(uri: str, compression: str | None, verify: bool) -> Iterator[bytes]:
    with _fs.open(uri, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="rb") if compression == "GZIP" else raw
        offset = 0
        try:
            while True:
                header = f.read(8)
                if not header:
                    return
                if len(header) < 8:
                    raise CorruptFileError(uri, f"truncated record header at byte {offset}")
                (length,) = _U64.unpack(header)
                (hcrc,) = _U32.unpack(_read_exact(f, 4, uri, offset + 8, "header checksum"))
                if verify and hcrc != masked_crc32c(header):
                    raise CorruptFileError(uri, f"bad length checksum at byte {offset} (not a TFRecord file?)")
                data = _read_exact(f, length, uri, offset + 12, "record")
                (dcrc,) = _U32.unpack(_read_exact(f, 4, uri, offset + 12 + length, "data checksum"))
                if verify and dcrc != masked_crc32c(data):
                    raise CorruptFileError(uri, f"bad data checksum for the record at byte {offset}")
                offset += 16 + length
                yield data
        except (gzip.BadGzipFile, EOFError, OSError) as exc:
            if isinstance(exc, (CorruptFileError, ConnectionError, TimeoutError, FileNotFoundError)):
                raise
            raise CorruptFileError(uri, str(exc)) from None
        finally:
            if f is not raw:
                f.close()


def read_tfrecords(uri: Files, compression: str | None = None, verify: bool = True) -> Iterator[bytes]:
    """Iterate the raw records of a TFRecord file, of every data file in a directory (sorted; names
    starting with ``_`` or ``.`` skipped), or of a list of URIs/FileInfos. Checksums are verified
    unless ``verify=False``; a damaged file raises :class:`CorruptFileError` naming it."""
    if compression not in (None, "", "GZIP"):
        raise ValueError(f"compression must be None or 'GZIP', got {compression!r}")
    if isinstance(uri, (str, os.PathLike)):
        uris = [fi.uri for fi in list_data_files(os.fspath(uri))]
    else:
        uris = [u.uri if isinstance(u, _fs.FileInfo) else os.fspath(u) for u in uri]
    for u in uris:
        yield from _read_file(u, compression, verify)
