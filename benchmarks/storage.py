"""Parquet read throughput through hdfs_io vs raw pyarrow, on file://, s3:// and hdfs://, in one run.

The same Parquet files are written to a local directory, to the pseudo-cluster's S3 bucket and to its
HDFS, then read back alternately through ``hdfs_io.read_parquet`` and through the raw client:

* file: ``pyarrow.parquet.read_table(<local dir>)``
* s3:   ``pyarrow.parquet.read_table("<bucket>/<prefix>", filesystem=pyarrow.fs.S3FileSystem(...))``
* hdfs: hdfs-native ``Client.read`` + ``pyarrow.parquet.read_table`` per file (pyarrow's own
        HadoopFileSystem needs libhdfs, which is not installable here)

Each reader reads all files ``--repeats`` times, interleaved in ABBA order. The headline figure is the
best run's MB/s of Parquet bytes (the least disturbed by other load on a shared machine); medians are
reported next to it. The last line of output is one JSON object with
``"ratio_vs_pyarrow": {"file", "s3", "hdfs"}`` (hdfs_io MB/s / raw MB/s, best runs; goal >= 0.9).

Uses the running pseudo-cluster (``cluster.connection()``), or starts it with ``cluster.up()`` and
stops it afterwards with ``cluster.down()`` (``--keep-cluster`` leaves it up).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hdfs_io  # noqa: E402


def make_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {f"f{i}": rng.standard_normal(rows).astype(np.float32) for i in range(8)}
    cols.update({f"i{i}": rng.integers(0, 1_000_000, rows) for i in range(4)})
    cols["cat"] = pa.array(rng.integers(0, 50_000, rows).astype(str))
    cols["label"] = rng.integers(0, 2, rows).astype(np.int8)
    return pa.table(cols)


def client_env(conn: dict) -> dict:
    """The cluster's client variables (``cluster.client_env``), or the storage subset of them for a
    connection dict given with ``--conn-json``."""
    try:
        import cluster

        return cluster.client_env(conn)
    except (ImportError, KeyError):
        s3 = conn["s3"]
        return {
            "AWS_ENDPOINT_URL": s3["endpoint"],
            "AWS_ACCESS_KEY_ID": s3["access_key"],
            "AWS_SECRET_ACCESS_KEY": s3["secret_key"],
            "AWS_REGION": s3["region"],
            "AWS_EC2_METADATA_DISABLED": "true",
            "HADOOP_CONF_DIR": conn["hadoop_conf_dir"],
        }


def cluster_connection(start: bool, conn_json: str | None = None):
    if conn_json:
        with open(conn_json) as f:
            return json.load(f), False
    import cluster

    try:
        return cluster.connection(), False
    except Exception as exc:  # noqa: BLE001 - not up
        if not start:
            raise SystemExit(f"pseudo-cluster not up ({exc}); run without --no-start or 'tfos-cluster up'") from None
    print("starting the pseudo-cluster ...", flush=True)
    return cluster.up(), True


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = fn()
    return time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_500_000, help="rows in total (default 1.5M, ~60 MB)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--no-start", action="store_true", help="fail instead of starting the cluster")
    ap.add_argument("--keep-cluster", action="store_true", help="leave a cluster we started running")
    ap.add_argument("--conn-json", help="use services described by this connection JSON instead of the cluster")
    args = ap.parse_args()

    conn, started = cluster_connection(start=not args.no_start, conn_json=args.conn_json)
    os.environ.update(client_env(conn))
    hdfs_io.reset()
    run_id = uuid.uuid4().hex[:8]
    local_dir = tempfile.mkdtemp(prefix="hdfs_io-bench-")
    s3_uri = f"s3://{conn['s3']['bucket']}/bench-{run_id}/ds"
    hdfs_uri = hdfs_io.join(conn["hdfs"]["uri"], f"tmp/hdfs_io-bench-{run_id}/ds")
    file_uri = "file://" + os.path.join(local_dir, "ds")
    result: dict = {"rows": args.rows, "files": args.files, "repeats": args.repeats}
    try:
        table = make_table(args.rows)
        per_file = -(-args.rows // args.files)
        for uri in (file_uri, s3_uri, hdfs_uri):
            hdfs_io.write_parquet(table, uri, rows_per_file=per_file, row_group_size=128 * 1024)
        del table
        nbytes = hdfs_io.size(file_uri)
        result["parquet_mb"] = round(nbytes / 1e6, 1)

        # raw clients, built the way a user of each library would
        s3_settings = hdfs_io.config.s3_settings()
        raw_s3 = pafs.S3FileSystem(endpoint_override=s3_settings.endpoint, scheme=s3_settings.scheme,
                                   region=s3_settings.region)
        s3_path = s3_uri.split("://", 1)[1]
        from hdfs_native import Client

        hclient = Client(conn["hdfs"]["uri"])
        hpaths = [hdfs_io.uri.parse(f.uri).path for f in hdfs_io.list_data_files(hdfs_uri)]
        local_path = os.path.join(local_dir, "ds")

        def raw_file():
            return pq.read_table(local_path).num_rows

        def raw_s3_read():
            return pq.read_table(s3_path, filesystem=raw_s3).num_rows

        def raw_hdfs():
            return pa.concat_tables([pq.read_table(hclient.read(p)) for p in hpaths]).num_rows

        readers = {
            "file": (lambda: hdfs_io.read_parquet(file_uri).num_rows, raw_file),
            "s3": (lambda: hdfs_io.read_parquet(s3_uri).num_rows, raw_s3_read),
            "hdfs": (lambda: hdfs_io.read_parquet(hdfs_uri).num_rows, raw_hdfs),
        }
        ratios, detail = {}, {}
        for scheme, (ours, raw) in readers.items():
            assert ours() == raw() == args.rows, f"{scheme}: row counts differ"  # warm-up + check
            t_ours, t_raw = [], []
            for i in range(args.repeats):  # ABBA order so drift in machine load hits both alike
                pair = [(ours, t_ours), (raw, t_raw)]
                for fn, sink in (pair if i % 2 == 0 else pair[::-1]):
                    sink.append(timed(fn)[0])
            mb = nbytes / 1e6
            best_ours, best_raw = mb / min(t_ours), mb / min(t_raw)
            med_ours, med_raw = mb / statistics.median(t_ours), mb / statistics.median(t_raw)
            ratios[scheme] = round(best_ours / best_raw, 3)
            detail[scheme] = {"hdfs_io_mb_s": round(best_ours, 1), "pyarrow_mb_s": round(best_raw, 1),
                              "median_hdfs_io_mb_s": round(med_ours, 1), "median_pyarrow_mb_s": round(med_raw, 1),
                              "median_ratio": round(med_ours / med_raw, 3)}
            print(f"{scheme:5s} hdfs_io {best_ours:8.1f} MB/s   raw {best_raw:8.1f} MB/s   ratio {ratios[scheme]:.3f}"
                  f"   (medians {med_ours:.1f} / {med_raw:.1f})", flush=True)
        result["throughput"] = detail
        result["load_avg_1m"] = round(os.getloadavg()[0], 1)
        result["ratio_vs_pyarrow"] = ratios
    finally:
        for uri in (s3_uri.rsplit("/", 1)[0], hdfs_uri.rsplit("/", 1)[0]):
            try:
                hdfs_io.delete(uri, recursive=True, missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                print(f"cleanup of {uri} failed: {exc}", file=sys.stderr)
        shutil.rmtree(local_dir, ignore_errors=True)
        if started and not args.keep_cluster:
            import cluster

            cluster.down()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
