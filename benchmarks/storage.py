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

Publish figure: the time to publish a directory of ``--publish-files`` files of ``--publish-mb`` MB
with overwrite over an existing output, by the current protocol (version directory + ``_CURRENT``
pointer, :mod:`hdfs_io.publishing`) and by the old one (c394a37: a hidden temporary sibling, then
rename on HDFS/local or, on S3, delete the old objects and server-side copy every object), ABBA
order, best and median of ``--publish-repeats``; ``"publish_ratio_new_vs_old"`` in the JSON (< 1: faster).

Uses the running pseudo-cluster (``cluster.connection()``), or starts it with ``cluster.up()`` and
stops it afterwards with ``cluster.down()`` (``--keep-cluster`` leaves it up). ``--moto`` instead
starts a moto S3 server of its own and measures file:// and s3:// only (no cluster, no HDFS);
``--publish-only`` skips the read benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import concurrent.futures
import shutil
import socket
import statistics
import subprocess
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
from hdfs_io import backends  # noqa: E402


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


# ------------------------------------------------------------------------------------------ publish
def old_publish_dir(local_dir: str, final_uri: str) -> None:
    """The old protocol (c394a37), ``publish_dir(..., overwrite=True)``: upload to a hidden temporary
    sibling with ``_SUCCESS``; then rename (old aside, new in, old deleted) where rename is atomic,
    else delete the old ``_SUCCESS`` and objects and server-side copy every object, ``_SUCCESS`` last."""
    store, final = backends.resolve(final_uri)
    tmp = hdfs_io.fs.temp_sibling(final)
    if store.caps.real_directories:
        store.fs.create_dir(tmp.path, recursive=True)
    hdfs_io.copy(local_dir, tmp.uri)
    with hdfs_io.open(tmp.child("_SUCCESS").uri, "wb"):
        pass
    if store.caps.atomic_rename:
        old = None
        if store.exists(final):
            old = final.parent().child(f".{final.name}._hdfs_io_old-{uuid.uuid4().hex[:12]}")
            store.fs.move(final.path, old.path)
        store.fs.move(tmp.path, final.path)
        if old is not None:
            hdfs_io.delete(old.uri, recursive=True, missing_ok=True)
        return
    if store.exists(final):
        marker = final.child("_SUCCESS")
        if store.exists(marker):
            store.delete_paths(final, [marker.path])
        store.delete_tree(final)
    data = [rel for rel, _ in hdfs_io.fs._walk(store, tmp) if rel != "_SUCCESS"]

    def copy_obj(rel: str) -> None:
        store.meta(final, "copy", store.fs.copy_file, f"{tmp.path}/{rel}", f"{final.path}/{rel}")

    with concurrent.futures.ThreadPoolExecutor(max(1, min(hdfs_io.fs.COPY_THREADS, len(data)))) as pool:
        list(pool.map(copy_obj, data))
    copy_obj("_SUCCESS")
    hdfs_io.delete(tmp.uri, recursive=True, missing_ok=True)


def publish_figures(bases: dict[str, str], files: int, mb: float, repeats: int, work: str) -> dict:
    """Seconds to publish ``files`` x ``mb`` MB with overwrite over an existing output, new vs old."""
    src = os.path.join(work, "publish-src")
    os.makedirs(src)
    rng = np.random.default_rng(1)
    for i in range(files):
        with open(os.path.join(src, f"part-{i:05d}.bin"), "wb") as f:
            f.write(rng.bytes(int(mb * 1e6)))
    out: dict = {}
    for scheme, base in bases.items():
        new_uri, old_uri = hdfs_io.join(base, "publish-new"), hdfs_io.join(base, "publish-old")
        ways = {"new": lambda: hdfs_io.publish_dir(src, new_uri, overwrite=True),
                "old": lambda: old_publish_dir(src, old_uri)}
        times: dict[str, list[float]] = {"new": [], "old": []}
        for fn in ways.values():
            fn()  # the existing output to overwrite (and a warm-up)
        for i in range(repeats):
            order = ["new", "old"] if i % 2 == 0 else ["old", "new"]
            for name in order:
                t0 = time.perf_counter()
                ways[name]()
                times[name].append(time.perf_counter() - t0)
        assert len(hdfs_io.list_data_files(new_uri)) == len(hdfs_io.list_data_files(old_uri)) == files
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        out[scheme] = {"new_s": round(best["new"], 3), "old_s": round(best["old"], 3),
                       "median_new_s": round(med["new"], 3), "median_old_s": round(med["old"], 3),
                       "ratio": round(best["new"] / best["old"], 3), "median_ratio": round(med["new"] / med["old"], 3)}
        print(f"publish {scheme:5s} {files} x {mb:g} MB overwrite: new {best['new']:.3f} s   "
              f"old protocol (c394a37) {best['old']:.3f} s   ratio {out[scheme]['ratio']:.3f}"
              f"   (medians {med['new']:.3f} / {med['old']:.3f})", flush=True)
    return out


def start_moto() -> tuple[subprocess.Popen, dict]:
    """A moto S3 server of our own (stopped by the caller) and a connection dict for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto server did not start") from None
            time.sleep(0.1)
    s3 = {"endpoint": f"http://127.0.0.1:{port}", "access_key": "bench", "secret_key": "bench",
          "region": "us-east-1", "bucket": "bench"}
    import botocore.session

    botocore.session.get_session().create_client(
        "s3", endpoint_url=s3["endpoint"], region_name=s3["region"], aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"]).create_bucket(Bucket=s3["bucket"])
    return proc, {"s3": s3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_500_000, help="rows in total (default 1.5M, ~60 MB)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--no-start", action="store_true", help="fail instead of starting the cluster")
    ap.add_argument("--keep-cluster", action="store_true", help="leave a cluster we started running")
    ap.add_argument("--conn-json", help="use services described by this connection JSON instead of the cluster")
    ap.add_argument("--moto", action="store_true", help="no cluster: start a moto S3 server, measure file and s3 only")
    ap.add_argument("--publish-only", action="store_true", help="only the publish figure")
    ap.add_argument("--publish-files", type=int, default=20)
    ap.add_argument("--publish-mb", type=float, default=2.0)
    ap.add_argument("--publish-repeats", type=int, default=4)
    args = ap.parse_args()

    moto = None
    if args.moto:
        moto, conn = start_moto()
        started = False
        s3 = conn["s3"]
        os.environ.update({"AWS_ENDPOINT_URL": s3["endpoint"], "AWS_ACCESS_KEY_ID": s3["access_key"],
                           "AWS_SECRET_ACCESS_KEY": s3["secret_key"], "AWS_REGION": s3["region"],
                           "AWS_EC2_METADATA_DISABLED": "true"})
    else:
        conn, started = cluster_connection(start=not args.no_start, conn_json=args.conn_json)
        os.environ.update(client_env(conn))
    hdfs_io.reset()
    has_hdfs = "hdfs" in conn
    run_id = uuid.uuid4().hex[:8]
    local_dir = tempfile.mkdtemp(prefix="hdfs_io-bench-")
    s3_uri = f"s3://{conn['s3']['bucket']}/bench-{run_id}/ds"
    hdfs_uri = hdfs_io.join(conn["hdfs"]["uri"], f"tmp/hdfs_io-bench-{run_id}/ds") if has_hdfs else ""
    file_uri = "file://" + os.path.join(local_dir, "ds")
    result: dict = {"rows": args.rows, "files": args.files, "repeats": args.repeats}
    try:
        bases = {"file": file_uri.rsplit("/", 1)[0], "s3": s3_uri.rsplit("/", 1)[0]}
        if has_hdfs:
            bases["hdfs"] = hdfs_uri.rsplit("/", 1)[0]
        publish = publish_figures(bases, args.publish_files, args.publish_mb, args.publish_repeats, local_dir)
        result["publish"] = {"files": args.publish_files, "mb_per_file": args.publish_mb,
                             "repeats": args.publish_repeats, "seconds": publish}
        result["publish_ratio_new_vs_old"] = {k: v["ratio"] for k, v in publish.items()}
        if args.publish_only:
            print(json.dumps(result))  # the last line of stdout (the cleanup below prints to stderr only)
            return
        table = make_table(args.rows)
        per_file = -(-args.rows // args.files)
        for uri in [u for u in (file_uri, s3_uri, hdfs_uri) if u]:
            hdfs_io.write_parquet(table, uri, rows_per_file=per_file, row_group_size=128 * 1024)
        del table
        nbytes = hdfs_io.size(hdfs_io.resolve(file_uri))
        result["parquet_mb"] = round(nbytes / 1e6, 1)

        # raw clients, built the way a user of each library would
        s3_settings = hdfs_io.config.s3_settings()
        raw_s3 = pafs.S3FileSystem(endpoint_override=s3_settings.endpoint, scheme=s3_settings.scheme,
                                   region=s3_settings.region)
        # a reader without the publish protocol is given the current version (hdfs_io.resolve)
        s3_path = hdfs_io.uri.parse(hdfs_io.resolve(s3_uri)).path
        local_path = hdfs_io.uri.parse(hdfs_io.resolve(file_uri)).path
        if has_hdfs:
            from hdfs_native import Client

            hclient = Client(conn["hdfs"]["uri"])
            hpaths = [hdfs_io.uri.parse(f.uri).path for f in hdfs_io.list_data_files(hdfs_uri)]

        def raw_file():
            return pq.read_table(local_path).num_rows

        def raw_s3_read():
            return pq.read_table(s3_path, filesystem=raw_s3).num_rows

        def raw_hdfs():
            return pa.concat_tables([pq.read_table(hclient.read(p)) for p in hpaths]).num_rows

        readers = {
            "file": (lambda: hdfs_io.read_parquet(file_uri).num_rows, raw_file),
            "s3": (lambda: hdfs_io.read_parquet(s3_uri).num_rows, raw_s3_read),
        }
        if has_hdfs:
            readers["hdfs"] = (lambda: hdfs_io.read_parquet(hdfs_uri).num_rows, raw_hdfs)
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
        for uri in [u.rsplit("/", 1)[0] for u in (s3_uri, hdfs_uri) if u]:
            try:
                hdfs_io.delete(uri, recursive=True, missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                print(f"cleanup of {uri} failed: {exc}", file=sys.stderr)
        shutil.rmtree(local_dir, ignore_errors=True)
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        if started and not args.keep_cluster:
            import cluster

            cluster.down()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
