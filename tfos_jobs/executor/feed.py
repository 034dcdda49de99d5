"""The DataFrame feed's senders: Spark tasks that stream partitions to the TF workers' receivers.

Runs in Spark's Python workers (a ``mapInArrow`` function or a ``mapPartitions`` over Parquet files).
Every slice of ``batch_size * workers`` rows is split evenly across *all* workers, so each worker gets
the same number of rows (+-1 per slice) from every partition. That matters for MultiWorkerMirrored:
the workers step in lockstep, and if one partition went to one worker only, that worker's full queue
could block the only sender while another worker starves waiting for data -- a deadlock under bounded
memory. Split evenly, a sender blocked on a full worker means every worker has data.
"""
from __future__ import annotations

from typing import Any, Iterator

import hdfs_io
from tfos_jobs.wire.auth import Session, json_line
from tfos_jobs.wire.feed import CONNECT_TIMEOUT_S, FeedError, FeedSpec


def make_sender(spec: FeedSpec, epoch: int, addresses: list):
    """The mapInArrow function of one epoch's feeding job (runs in Spark's Python workers)."""
    secret, n, size = spec.secret, len(addresses), spec.batch_size
    stall, schema_bytes = spec.stall_timeout_s, spec.arrow_schema().serialize().to_pybytes()

    def send_partition(batches):
        import pyarrow as pa
        from pyspark import TaskContext
        schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        partition = TaskContext.get().partitionId()
        if callable(batches):      # a direct Parquet read, started once the schema is known
            batches = batches(schema)
        links = []
        try:
            for worker, address in enumerate(addresses):
                links.append(_Link(worker, address, secret, epoch, partition, schema, stall))
            step = size * n
            for batch in batches:
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
                for start in range(0, batch.num_rows, step):
                    piece = batch.slice(start, step)
                    rows = piece.num_rows
                    # rotate which worker gets the larger share of an uneven split
                    for j in range(n):
                        lo, hi = j * rows // n, (j + 1) * rows // n
                        if hi > lo:
                            links[(j + partition) % n].write(piece.slice(lo, hi - lo))
            for link in links:      # end every stream before waiting for any acknowledgement
                link.end()
            counts = [link.ack() for link in links]
        finally:
            for link in links:
                link.close()
        yield pa.RecordBatch.from_pydict({"partition": [partition] * n, "worker": list(range(n)),
                                          "rows": counts},
                                         schema=pa.schema([("partition", pa.int32()), ("worker", pa.int32()),
                                                           ("rows", pa.int64())]))
    return send_partition


class _Link:
    """One feeding task's Arrow stream to one receiver, on an authenticated connection whose trailer
    seals the stream with an HMAC."""

    def __init__(self, worker, address, secret, epoch, partition, schema, stall_timeout_s):
        import pyarrow as pa
        self.worker, self.address, self.rows, self.writer = worker, address, 0, None
        self.session = Session(address, secret, timeout=stall_timeout_s, connect_timeout=CONNECT_TIMEOUT_S)
        reply = self.session.request({"kind": "data", "epoch": epoch, "partition": partition})
        if "error" in reply:
            raise FeedError(reply["error"])
        self.dup = reply.get("dup")
        if self.dup is None:
            self.mac = self.session.stream_mac()
            self.wfile = self.session.sock.makefile("wb", buffering=1 << 20)
            self.writer = pa.ipc.new_stream(self.mac.writer(self.wfile), schema)

    def write(self, batch: Any) -> None:   # pyarrow.RecordBatch
        if self.writer is not None:
            self.writer.write_batch(batch)
            # Flush every piece: buffered pieces for one worker while another's queue is full would
            # break the even split and could deadlock lockstep (MWMS) consumers.
            self.wfile.flush()
            self.rows += batch.num_rows

    def end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            trailer = {"rows": self.rows, "mac": self.mac.seal(self.rows)}   # the stream is whole and ours
            self.wfile.write(json_line(trailer))
            self.wfile.flush()

    def ack(self) -> int:
        if self.writer is None:
            return self.dup
        ack = self.session.read_reply()
        if ack.get("rows") != self.rows:
            raise FeedError(f"worker {self.worker} at {self.address} acknowledged {ack} after {self.rows} rows")
        return self.rows

    def close(self) -> None:
        self.session.close()


def read_file(uri: str, columns: list, schema, batch_rows: int = 65536) -> Iterator:
    """A feeding task's Parquet file as record batches of ``schema`` (Spark's column types)."""
    for batch in hdfs_io.iter_record_batches([uri], columns, batch_rows):
        try:
            yield batch.select(columns).cast(schema)
        except (ValueError, TypeError) as err:   # pyarrow raises ArrowInvalid, a ValueError
            raise FeedError(f"{uri}: its columns {batch.schema} do not convert to the DataFrame's "
                            f"{schema}: {err}") from err
