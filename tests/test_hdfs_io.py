"""Unit tests for hdfs_io on file:// and plain paths (fast, no services), plus the timeout and
unreachable-service behaviour against local sockets that refuse or never answer."""
from __future__ import annotations

import gc
import json
import os
import random
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hdfs_io
from hdfs_io import config, uri as hio_uri


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No cluster/AWS settings leak in from the developer's shell; fresh clients per test."""
    for var in ("HADOOP_CONF_DIR", "HADOOP_HOME", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                "AWS_REGION", "AWS_DEFAULT_REGION", "HDFS_IO_TIMEOUT_S"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    hdfs_io.reset()
    yield
    hdfs_io.reset()


def table(n=100, offset=0):
    return pa.table({
        "x": np.arange(offset, offset + n, dtype=np.int64),
        "y": np.arange(offset, offset + n, dtype=np.float32) / 2,
        "s": [f"r{i}" for i in range(offset, offset + n)],
    })


# ------------------------------------------------------------------------------------------- URIs
def test_parse_schemes_and_aliases(tmp_path):
    loc = hio_uri.parse("s3a://bucket/a//b/")
    assert (loc.scheme, loc.written_scheme, loc.bucket, loc.key, loc.uri) == ("s3", "s3a", "bucket", "a/b", "s3a://bucket/a/b")
    assert hio_uri.parse("s3://bucket").path == "bucket"
    h = hio_uri.parse("hdfs://nn:9000/x/y/")
    assert (h.scheme, h.authority, h.path, h.uri) == ("hdfs", "nn:9000", "/x/y", "hdfs://nn:9000/x/y")
    assert hio_uri.parse("viewfs://cluster/a").scheme == "viewfs"
    assert hio_uri.parse("file:///tmp/a").uri == "file:///tmp/a"
    rel = hio_uri.parse("rel/dir")
    assert rel.path == os.path.abspath("rel/dir") and rel.uri == os.path.abspath("rel/dir")
    with pytest.raises(ValueError, match="unsupported URI scheme 'gs'"):
        hio_uri.parse("gs://b/k")
    with pytest.raises(ValueError, match="without a bucket"):
        hio_uri.parse("s3:///k")


def test_join():
    assert hdfs_io.join("s3://b", "a", "/c/") == "s3://b/a/c"
    assert hdfs_io.join("hdfs://nn:1/x/", "y", "z.parquet") == "hdfs://nn:1/x/y/z.parquet"
    assert hdfs_io.join("/tmp/", "a") == "/tmp/a"
    assert hdfs_io.join("file:///", "a") == "file:///a"
    assert hdfs_io.join("s3://b/k") == "s3://b/k"


def _core_site(tmp_path, props: dict) -> str:
    conf = tmp_path / "hadoop-conf"
    conf.mkdir(exist_ok=True)
    body = "".join(f"<property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
    (conf / "core-site.xml").write_text(f"<?xml version='1.0'?><configuration>{body}</configuration>")
    return str(conf)


def test_hdfs_without_host_uses_default_fs(tmp_path, monkeypatch):
    monkeypatch.setenv("HADOOP_CONF_DIR", _core_site(tmp_path, {"fs.defaultFS": "hdfs://namenode.example:8021/"}))
    loc = hio_uri.parse("hdfs:///user/x/data")
    assert (loc.authority, loc.path) == ("namenode.example:8021", "/user/x/data")
    assert loc.uri == "hdfs://namenode.example:8021/user/x/data"
    assert config.namenode_addresses("namenode.example:8021") == [("namenode.example", 8021)]
    assert config.namenode_addresses("nn-only") == [("nn-only", 8020)]


def test_hdfs_without_host_and_no_default_fs_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HADOOP_CONF_DIR", _core_site(tmp_path, {}))
    with pytest.raises(ValueError, match="fs.defaultFS is not set"):
        hdfs_io.exists("hdfs:///user/x")


def test_ha_nameservice_addresses(tmp_path, monkeypatch):
    conf = _core_site(tmp_path, {"fs.defaultFS": "hdfs://ns1"})
    (tmp_path / "hadoop-conf" / "hdfs-site.xml").write_text(
        "<configuration>"
        "<property><name>dfs.ha.namenodes.ns1</name><value>nn1, nn2</value></property>"
        "<property><name>dfs.namenode.rpc-address.ns1.nn1</name><value>h1:8020</value></property>"
        "<property><name>dfs.namenode.rpc-address.ns1.nn2</name><value>h2:9000</value></property>"
        "</configuration>")
    monkeypatch.setenv("HADOOP_CONF_DIR", conf)
    assert config.namenode_addresses("ns1") == [("h1", 8020), ("h2", 9000)]


def test_s3_settings_from_env_hold_no_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:7777")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    s = config.s3_settings()
    assert (s.endpoint, s.scheme, s.region) == ("127.0.0.1:7777", "http", "eu-west-3")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert config.s3_settings().region == "ap-south-1"
    for text in (repr(s), s.describe()):
        assert "very-secret-value" not in text and "AKIDEXAMPLE" not in text


def test_s3_region_from_profile(tmp_path, monkeypatch):
    cfg = tmp_path / "aws-config"
    cfg.write_text("[default]\nregion = us-west-1\n[profile other]\nregion = eu-central-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    assert config.s3_settings().region == "us-west-1"
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert config.s3_settings().region == "eu-central-1"


def test_timeout_setting(monkeypatch):
    assert hdfs_io.timeout_s() == 30.0
    monkeypatch.setenv("HDFS_IO_TIMEOUT_S", "2.5")
    assert hdfs_io.timeout_s() == 2.5
    monkeypatch.setenv("HDFS_IO_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="HDFS_IO_TIMEOUT_S"):
        hdfs_io.timeout_s()


# ----------------------------------------------------------------------------------- file ops
@pytest.mark.parametrize("style", ["plain", "file"])
def test_file_operations(tmp_path, style):
    base = str(tmp_path) if style == "plain" else f"file://{tmp_path}"
    d = hdfs_io.join(base, "a", "b")
    hdfs_io.mkdirs(d)
    hdfs_io.mkdirs(d)  # idempotent
    with hdfs_io.open(hdfs_io.join(d, "f.bin"), "wb") as f:
        f.write(b"x" * 1000)
    with hdfs_io.open(hdfs_io.join(d, "g.txt"), "w") as f:
        f.write("héllo")
    assert hdfs_io.exists(d) and not hdfs_io.exists(hdfs_io.join(d, "nope"))
    assert hdfs_io.size(hdfs_io.join(d, "f.bin")) == 1000
    assert hdfs_io.size(hdfs_io.join(base, "a")) == 1000 + len("héllo".encode())
    with hdfs_io.open(hdfs_io.join(d, "g.txt"), "r") as f:
        assert f.read() == "héllo"
    entries = hdfs_io.ls(hdfs_io.join(base, "a"))
    assert entries == [hdfs_io.FileInfo(d, 0, True)]
    listing = hdfs_io.ls(d)
    assert [(e.name, e.size, e.is_dir) for e in listing] == [("f.bin", 1000, False), ("g.txt", 6, False)]
    assert all(e.uri.startswith(base) for e in listing)
    assert hdfs_io.ls(hdfs_io.join(d, "f.bin")) == [hdfs_io.FileInfo(hdfs_io.join(d, "f.bin"), 1000, False)]
    assert hdfs_io.glob(hdfs_io.join(base, "a", "*", "*.bin")) == [hdfs_io.join(d, "f.bin")]
    assert hdfs_io.glob(hdfs_io.join(base, "*", "b")) == [d]
    assert hdfs_io.glob(hdfs_io.join(base, "a", "b", "[fg].*")) == [hdfs_io.join(d, "f.bin"), hdfs_io.join(d, "g.txt")]
    assert hdfs_io.glob(hdfs_io.join(base, "zz*")) == []
    hdfs_io.rename(hdfs_io.join(d, "f.bin"), hdfs_io.join(base, "moved", "f.bin"))
    assert not hdfs_io.exists(hdfs_io.join(d, "f.bin"))
    assert hdfs_io.size(hdfs_io.join(base, "moved", "f.bin")) == 1000
    with pytest.raises(FileExistsError, match="already exists"):
        hdfs_io.rename(hdfs_io.join(d, "g.txt"), hdfs_io.join(base, "moved", "f.bin"))
    hdfs_io.copy(hdfs_io.join(base, "a"), hdfs_io.join(base, "a2"))
    assert [e.name for e in hdfs_io.ls(hdfs_io.join(base, "a2", "b"))] == ["g.txt"]
    with pytest.raises(OSError, match="not empty"):
        hdfs_io.delete(hdfs_io.join(base, "a"))
    hdfs_io.delete(hdfs_io.join(base, "a"), recursive=True)
    assert not hdfs_io.exists(hdfs_io.join(base, "a"))
    hdfs_io.delete(hdfs_io.join(base, "a"), missing_ok=True)


def test_missing_paths_raise_file_not_found_naming_the_uri(tmp_path):
    missing = f"file://{tmp_path}/no/such/thing"
    calls = [
        lambda: hdfs_io.ls(missing), lambda: hdfs_io.info(missing), lambda: hdfs_io.size(missing),
        lambda: hdfs_io.open(missing), lambda: hdfs_io.delete(missing), lambda: hdfs_io.read_parquet(missing),
        lambda: list(hdfs_io.iter_record_batches([missing])), lambda: list(hdfs_io.read_tfrecords(missing)),
        lambda: hdfs_io.download(missing, str(tmp_path / "dl")), lambda: hdfs_io.rename(missing, missing + "2"),
        lambda: hdfs_io.copy(missing, str(tmp_path / "c")), lambda: hdfs_io.list_data_files(missing),
    ]
    for call in calls:
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert missing in str(info.value)


def test_upload_download_directory(tmp_path):
    src = tmp_path / "ckpt"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"pb" * 100)
    (src / "variables" / "variables.index").write_bytes(b"idx")
    (src / "empty.txt").write_bytes(b"")
    (src / "events.gz").write_bytes(os.urandom(500))  # copied byte for byte, not (de)compressed
    (src / "assets").mkdir()  # empty directories survive (SavedModel)
    dest = f"file://{tmp_path}/remote/ckpt"
    written = hdfs_io.upload(str(src), dest)
    assert sorted(written) == sorted(hdfs_io.join(dest, p) for p in
                                     ("saved_model.pb", "variables/variables.index", "empty.txt", "events.gz"))
    out = tmp_path / "back"
    hdfs_io.download(dest, str(out))
    assert (out / "saved_model.pb").read_bytes() == b"pb" * 100
    assert (out / "variables" / "variables.index").read_bytes() == b"idx"
    assert (out / "empty.txt").read_bytes() == b""
    assert (out / "events.gz").read_bytes() == (src / "events.gz").read_bytes()
    assert (out / "assets").is_dir()


def test_atomic_file_write(tmp_path):
    target = f"file://{tmp_path}/out.bin"
    with pytest.raises(RuntimeError):
        with hdfs_io.open(target, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("writer failed")
    assert not hdfs_io.exists(target)
    with pytest.raises(RuntimeError):
        with hdfs_io.open(target, "w") as f:
            f.write("partial")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []  # no temp files either
    f = hdfs_io.open(target, "wb")
    f.write(b"abandoned")
    del f
    gc.collect()
    assert not hdfs_io.exists(target) and os.listdir(tmp_path) == []
    with hdfs_io.open(target, "wb") as f:
        f.write(b"old")
    with pytest.raises(RuntimeError):
        with hdfs_io.open(target, "wb") as f:
            f.write(b"new but failed")
            raise RuntimeError
    assert hdfs_io.open(target).read() == b"old"  # a failed overwrite keeps the old file


# ---------------------------------------------------------------------------------- publishing
def test_publish_success_and_failure(tmp_path):
    final = f"file://{tmp_path}/exports/model"
    with hdfs_io.publish(final) as local:
        assert os.path.isdir(local) and not local.startswith(str(tmp_path / "exports"))
        (open(os.path.join(local, "saved_model.pb"), "wb")).write(b"m")
        os.makedirs(os.path.join(local, "assets"))
    assert not os.path.exists(local)  # local staging removed
    assert hdfs_io.is_published(final)
    first = hdfs_io.resolve(final)   # the pointer names one complete, immutable version directory
    version = first.rsplit("/", 1)[1]
    assert version.startswith("_v-") and sorted(e.name for e in hdfs_io.ls(final)) == ["_CURRENT", version]
    assert sorted(e.name for e in hdfs_io.ls(first)) == ["_SUCCESS", "assets", "saved_model.pb"]
    assert json.loads((tmp_path / "exports" / "model" / "_CURRENT").read_text())["version"] == version
    hdfs_io.require_published(final)
    with pytest.raises(FileExistsError):
        with hdfs_io.publish(final):
            pass

    failed = f"file://{tmp_path}/exports/failed"
    with pytest.raises(ValueError, match="training diverged"):
        with hdfs_io.publish(failed) as local:
            open(os.path.join(local, "half.bin"), "wb").write(b"h")
            raise ValueError("training diverged")
    assert not hdfs_io.exists(failed)
    assert sorted(os.listdir(tmp_path / "exports")) == ["model"]  # no temp siblings left

    with hdfs_io.publish(final, overwrite=True) as local:
        open(os.path.join(local, "v2.pb"), "wb").write(b"2")
    second = hdfs_io.resolve(final)
    assert second != first and sorted(e.name for e in hdfs_io.ls(second)) == ["_SUCCESS", "v2.pb"]
    pointer = json.loads((tmp_path / "exports" / "model" / "_CURRENT").read_text())
    assert pointer["version"] == second.rsplit("/", 1)[1] and pointer["previous"] == version
    # the previous version is kept (readers that resolved it just before the switch), unchanged
    assert sorted(e.name for e in hdfs_io.ls(final)) == sorted(["_CURRENT", version, pointer["version"]])
    assert sorted(e.name for e in hdfs_io.ls(first)) == ["_SUCCESS", "assets", "saved_model.pb"]
    with hdfs_io.open(hdfs_io.join(final, "v2.pb"), "rb") as handle:   # a path inside follows the pointer
        assert handle.read() == b"2"
    assert sorted(os.listdir(tmp_path / "exports")) == ["model"]


def test_publish_dir_failed_upload_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(b"x" * 10)
    final = f"file://{tmp_path}/dest/out"
    real = hdfs_io.fs._copy_one
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(*args)

    monkeypatch.setattr(hdfs_io.fs, "_copy_one", flaky)
    with pytest.raises(OSError, match="disk went away"):
        hdfs_io.publish_dir(str(src), final)
    assert not hdfs_io.exists(final)
    assert os.listdir(tmp_path / "dest") == []
    monkeypatch.setattr(hdfs_io.fs, "_copy_one", real)
    assert hdfs_io.publish_dir(str(src), final) == final
    assert hdfs_io.is_published(final) and len(hdfs_io.list_data_files(final)) == 5


def test_require_published(tmp_path):
    d = tmp_path / "incomplete"
    d.mkdir()
    (d / "part-0").write_bytes(b"x")
    with pytest.raises(hdfs_io.NotPublishedError, match="_SUCCESS"):
        hdfs_io.require_published(str(d))
    with pytest.raises(hdfs_io.NotPublishedError):
        hdfs_io.list_data_files(str(d), require_success=True)
    assert len(hdfs_io.list_data_files(str(d))) == 1


# ------------------------------------------------------------------------------------- parquet
def test_write_and_read_parquet(tmp_path):
    uri = f"file://{tmp_path}/ds"
    t = table(1000)
    parts = hdfs_io.write_parquet(t, uri, rows_per_file=300)
    version = hdfs_io.resolve(uri)   # the parts live in the published version, not beside the pointer
    assert version.startswith(uri + "/_v-")
    assert parts == [hdfs_io.join(version, f"part-{i:05d}.parquet") for i in range(4)]
    assert hdfs_io.is_published(uri)
    got = hdfs_io.read_parquet(uri)
    assert got.equals(t)
    assert hdfs_io.read_parquet(uri, columns=["y"]).column_names == ["y"]
    assert hdfs_io.read_parquet(parts[1]).num_rows == 300
    assert hdfs_io.read_parquet(parts[:2]).num_rows == 600
    with pytest.raises(FileExistsError):
        hdfs_io.write_parquet(t, uri)
    hdfs_io.write_parquet(table(10), uri, overwrite=True)
    assert hdfs_io.read_parquet(uri).num_rows == 10 and hdfs_io.resolve(uri) != version
    assert hdfs_io.read_parquet(parts[1]).num_rows == 300, "the previous version stays readable"


def test_write_parquet_failure_leaves_nothing(tmp_path):
    uri = f"file://{tmp_path}/ds"
    bad = pa.table({"x": pa.array([1, 2, 3])})
    with pytest.raises((ValueError, OSError, pa.ArrowException), match="(?i)codec|compression"):
        hdfs_io.write_parquet(bad, uri, compression="no-such-codec")
    assert not hdfs_io.exists(uri) and os.listdir(tmp_path) == []


def test_list_data_files_skips_markers_and_hidden(tmp_path):
    d = tmp_path / "ds"
    (d / "_temporary" / "0").mkdir(parents=True)
    (d / "year=2024").mkdir()
    pq.write_table(table(5), d / "part-00000.parquet")
    pq.write_table(table(5), d / "year=2024" / "part-00001.parquet")
    (d / "_SUCCESS").write_bytes(b"")
    (d / "_common_metadata").write_bytes(b"x")
    (d / ".part-00000.parquet.crc").write_bytes(b"x")
    (d / "_temporary" / "0" / "part-x.parquet").write_bytes(b"x")
    files = hdfs_io.list_data_files(str(d))
    assert [os.path.relpath(f.uri, d) for f in files] == ["part-00000.parquet", "year=2024/part-00001.parquet"]
    assert all(f.size > 0 and not f.is_dir for f in files)
    assert hdfs_io.read_parquet(str(d)).num_rows == 10


def test_shard_files_partition_balance_determinism():
    rng = random.Random(7)
    for n_files in (0, 1, 5, 23, 100):
        files = [hdfs_io.FileInfo(f"s3://b/ds/part-{i:05d}.parquet", rng.randint(1, 10_000), False) for i in range(n_files)]
        for shards in (1, 2, 3, 7):
            parts = [hdfs_io.shard_files(files, shards, i) for i in range(shards)]
            flat = [f.uri for p in parts for f in p]
            assert sorted(flat) == sorted(f.uri for f in files)  # every file exactly once
            assert len(flat) == len(set(flat))
            loads = [sum(f.size for f in p) for p in parts]
            if files:
                assert max(loads) - min(loads) <= max(f.size for f in files)
            shuffled = files[:]
            rng.shuffle(shuffled)
            assert [hdfs_io.shard_files(shuffled, shards, i) for i in range(shards)] == parts
            assert all(p == sorted(p, key=lambda f: f.uri) for p in parts)
    with pytest.raises(ValueError):
        hdfs_io.shard_files(files, 0, 0)
    with pytest.raises(ValueError):
        hdfs_io.shard_files(files, 3, 3)
    with pytest.raises(ValueError, match="twice"):
        hdfs_io.shard_files(files[:1] * 2, 2, 0)


def test_shard_files_balances_bytes_not_counts():
    sizes = [100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 100]
    files = [hdfs_io.FileInfo(f"/d/f{i:02d}", s, False) for i, s in enumerate(sizes)]
    shares = [hdfs_io.shard_files(files, 2, i) for i in range(2)]
    assert [sum(f.size for f in s) for s in shares] == [105, 105]


def test_shard_files_from_dataset_uri(tmp_path):
    uri = str(tmp_path / "ds")
    hdfs_io.write_parquet(table(100), uri, rows_per_file=10)
    shares = [hdfs_io.shard_files(uri, 3, i) for i in range(3)]
    assert sum(len(s) for s in shares) == 10
    assert sum(hdfs_io.read_parquet(s).num_rows for s in shares) == 100


def test_iter_record_batches(tmp_path):
    uri = str(tmp_path / "ds")
    hdfs_io.write_parquet(table(250), uri, rows_per_file=100)
    files = hdfs_io.list_data_files(uri)
    batches = list(hdfs_io.iter_record_batches(files, ["x", "s"], batch_size=40))
    assert [b.num_rows for b in batches] == [40, 40, 20, 40, 40, 20, 40, 10]
    assert all(b.schema.names == ["x", "s"] for b in batches)
    assert pa.Table.from_batches(batches).column("x").to_pylist() == list(range(250))
    assert sum(b.num_rows for b in hdfs_io.iter_record_batches(uri)) == 250


def test_schema_mismatch_names_the_file(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(table(10), d / "part-0.parquet")
    other = table(10).set_column(0, "x", pa.array([str(i) for i in range(10)]))
    pq.write_table(other, d / "part-1.parquet")
    with pytest.raises(hdfs_io.SchemaMismatchError, match=r"part-1\.parquet.*x: string \(expected int64\)"):
        list(hdfs_io.iter_record_batches(str(d)))
    with pytest.raises(hdfs_io.SchemaMismatchError, match=r"part-1\.parquet"):
        hdfs_io.read_parquet(str(d))
    # only the selected columns must agree
    assert hdfs_io.read_parquet(str(d), columns=["y"]).num_rows == 20
    with pytest.raises(hdfs_io.SchemaMismatchError, match=r"part-0\.parquet.*no column"):
        hdfs_io.read_parquet(str(d), columns=["nope"])


def test_corrupt_parquet_names_the_file(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    pq.write_table(table(10), d / "part-0.parquet")
    (d / "part-1.parquet").write_bytes(b"this is not parquet at all" * 10)
    good = (d / "part-0.parquet").read_bytes()
    (d / "part-2.parquet").write_bytes(good[:4] + b"\0" * (len(good) - 12) + good[-8:])  # damaged pages
    for call in (lambda: hdfs_io.read_parquet([str(d / "part-0.parquet"), str(d / "part-1.parquet")]),
                 lambda: list(hdfs_io.iter_record_batches([str(d / "part-1.parquet")]))):
        with pytest.raises(hdfs_io.CorruptFileError, match=r"part-1\.parquet"):
            call()
    for call in (lambda: hdfs_io.read_parquet([str(d / "part-2.parquet")]),
                 lambda: list(hdfs_io.iter_record_batches([str(d / "part-2.parquet")]))):
        with pytest.raises(hdfs_io.CorruptFileError, match=r"part-2\.parquet"):
            call()


def test_iter_record_batches_memory_is_bounded_by_row_groups(tmp_path):
    rows, group = 400_000, 20_000
    path = str(tmp_path / "big.parquet")
    t = pa.table({"a": np.random.default_rng(0).standard_normal(rows), "b": np.arange(rows)})
    pq.write_table(t, path, row_group_size=group, compression="none")
    whole = t.nbytes
    del t
    base = pa.total_allocated_bytes()
    peak = 0
    n = 0
    for batch in hdfs_io.iter_record_batches([path], batch_size=4096):
        n += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
        del batch
    assert n == rows
    assert peak < whole / 5, f"peak {peak} bytes while streaming a {whole}-byte table"


# ----------------------------------------------------------------------------------- tf.data
def test_tf_dataset_batches(tmp_path):
    tf = pytest.importorskip("tensorflow")
    uri = str(tmp_path / "ds")
    t = table(250).append_column("emb", pa.array([[float(i), float(-i)] for i in range(250)], pa.list_(pa.float32(), 2)))
    hdfs_io.write_parquet(t, uri, rows_per_file=70)
    ds = hdfs_io.tf_dataset(hdfs_io.list_data_files(uri), ["x", "emb", "s"], label_column="y", batch_size=64)
    batches = list(ds)
    assert [int(b[1].shape[0]) for b in batches] == [64, 64, 64, 58]
    feats, label = batches[0]
    assert feats["x"].dtype == tf.int64 and feats["emb"].shape == (64, 2) and feats["s"].dtype == tf.string
    assert label.dtype == tf.float32
    xs = np.concatenate([b[0]["x"].numpy() for b in batches])
    np.testing.assert_array_equal(xs, np.arange(250))
    np.testing.assert_allclose(np.concatenate([b[1].numpy() for b in batches]), np.arange(250) / 2)
    assert batches[1][0]["s"][0].numpy() == b"r64"
    np.testing.assert_allclose(batches[0][0]["emb"][3].numpy(), [3.0, -3.0])
    # drop_remainder gives a static batch dimension; a second epoch re-reads
    ds2 = hdfs_io.tf_dataset(uri, ["x"], batch_size=100, drop_remainder=True)
    assert ds2.element_spec["x"].shape == (100,)
    assert [int(b["x"].shape[0]) for b in ds2] == [100, 100]
    assert [int(b["x"].shape[0]) for b in ds2] == [100, 100]


def test_tf_dataset_rejects_nulls_and_unknown_columns(tmp_path):
    pytest.importorskip("tensorflow")
    path = str(tmp_path / "n.parquet")
    pq.write_table(pa.table({"x": pa.array([1.0, None, 3.0]), "y": [1, 2, 3]}), path)
    with pytest.raises(Exception, match=r"null.*n\.parquet"):
        list(hdfs_io.tf_dataset([path], ["x"], batch_size=2))
    with pytest.raises(hdfs_io.SchemaMismatchError, match="no column"):
        hdfs_io.tf_dataset([path], ["zz"])


def test_rebatch_exact_sizes():
    batches = [pa.record_batch({"a": list(range(i, i + n))}) for i, n in [(0, 7), (7, 3), (10, 25), (35, 1)]]
    out = list(hdfs_io.rebatch(iter(batches), 10))
    assert [t.num_rows for t in out] == [10, 10, 10, 6]
    assert [v for t in out for v in t.column("a").to_pylist()] == list(range(36))
    assert [t.num_rows for t in hdfs_io.rebatch(iter(batches), 10, drop_remainder=True)] == [10, 10, 10]


# ----------------------------------------------------------------------------------- TFRecord
def test_tfrecord_roundtrip_and_tf_compatibility(tmp_path):
    tf = pytest.importorskip("tensorflow")
    records = [os.urandom(n) for n in (0, 1, 100, 70_000)]
    ours = str(tmp_path / "ours.tfrecord")
    assert hdfs_io.write_tfrecords(records, f"file://{ours}") == 4
    assert list(hdfs_io.read_tfrecords(ours)) == records
    assert [r.numpy() for r in tf.data.TFRecordDataset(ours)] == records
    theirs = str(tmp_path / "theirs.tfrecord.gz")
    with tf.io.TFRecordWriter(theirs, options="GZIP") as w:
        for r in records:
            w.write(r)
    assert list(hdfs_io.read_tfrecords(theirs, compression="GZIP")) == records
    gz = str(tmp_path / "ours.gz")
    example = tf.train.Example(features=tf.train.Features(feature={
        "v": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2]))}))
    hdfs_io.write_tfrecords([example], gz, compression="GZIP")
    (raw,) = [r.numpy() for r in tf.data.TFRecordDataset(gz, compression_type="GZIP")]
    assert tf.train.Example.FromString(raw) == example


def test_tfrecord_corruption_names_the_file(tmp_path):
    path = tmp_path / "r.tfrecord"
    hdfs_io.write_tfrecords([b"a" * 50, b"b" * 50], str(path))
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the first record's payload
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    with pytest.raises(hdfs_io.CorruptFileError, match=r"bad\.tfrecord.*checksum"):
        list(hdfs_io.read_tfrecords(str(bad)))
    assert len(list(hdfs_io.read_tfrecords(str(bad), verify=False))) == 2
    trunc = tmp_path / "trunc.tfrecord"
    trunc.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(hdfs_io.CorruptFileError, match=r"trunc\.tfrecord.*truncated"):
        list(hdfs_io.read_tfrecords(str(trunc)))


def test_tfrecord_failed_write_leaves_nothing(tmp_path):
    def records():
        yield b"ok"
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError):
        hdfs_io.write_tfrecords(records(), str(tmp_path / "x.tfrecord"))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------- unreachable services, timeouts
@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung NameNode / S3 endpoint)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    for c in conns:
        c.close()
    srv.close()


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_dead_namenode_fails_fast(closed_port):
    uri = f"hdfs://127.0.0.1:{closed_port}/data"
    t0 = time.monotonic()
    with pytest.raises(hdfs_io.StorageUnavailableError) as info:
        hdfs_io.ls(uri)
    assert time.monotonic() - t0 < 5
    assert isinstance(info.value, ConnectionError) and uri in str(info.value)


def test_hung_namenode_times_out(silent_server, monkeypatch):
    monkeypatch.setenv("HDFS_IO_TIMEOUT_S", "1.5")
    uri = f"hdfs://127.0.0.1:{silent_server}/data/x.parquet"
    for call in (lambda: hdfs_io.exists(uri), lambda: hdfs_io.read_parquet(uri)):
        t0 = time.monotonic()
        with pytest.raises(hdfs_io.StorageTimeoutError) as info:
            call()
        assert 1.4 < time.monotonic() - t0 < 6
        assert isinstance(info.value, ConnectionError) and isinstance(info.value, TimeoutError)
        assert uri in str(info.value) and "1.5 s" in str(info.value)


def _s3_env(monkeypatch, port):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-do-not-print")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    hdfs_io.reset()


def test_dead_s3_endpoint_fails_fast(closed_port, monkeypatch):
    _s3_env(monkeypatch, closed_port)
    uri = "s3a://bucket/data"
    for call in (lambda: hdfs_io.ls(uri), lambda: hdfs_io.delete(uri, recursive=True, missing_ok=True)):
        t0 = time.monotonic()
        with pytest.raises(hdfs_io.StorageUnavailableError) as info:
            call()
        assert time.monotonic() - t0 < 10
        assert uri in str(info.value) and "test-secret-do-not-print" not in str(info.value)


def test_hung_s3_endpoint_times_out(silent_server, monkeypatch):
    _s3_env(monkeypatch, silent_server)
    monkeypatch.setenv("HDFS_IO_TIMEOUT_S", "1.5")
    uri = "s3://bucket/data/part-0.parquet"
    for call in (lambda: hdfs_io.exists(uri), lambda: hdfs_io.read_parquet(uri), lambda: hdfs_io.open(uri)):
        t0 = time.monotonic()
        with pytest.raises(hdfs_io.StorageTimeoutError, match="1.5 s") as info:
            call()
        assert time.monotonic() - t0 < 6
        assert uri in str(info.value)


@pytest.fixture
def stalling_s3():
    """An HTTP server that answers HEAD like S3 but stalls every GET after a few bytes (a transfer
    hanging mid-stream). Stopped, with its handler threads released, at teardown."""
    import http.server
    import socketserver

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.send_header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            self.end_headers()

        def do_GET(self):
            self.send_response(206)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PAR1")
            self.wfile.flush()
            release.wait(60)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_stalled_s3_transfer_times_out(stalling_s3, monkeypatch):
    _s3_env(monkeypatch, stalling_s3)
    monkeypatch.setenv("HDFS_IO_TIMEOUT_S", "2")
    uri = "s3://bucket/data/part-0.parquet"
    calls = (lambda: hdfs_io.open(uri).read(), lambda: hdfs_io.read_parquet(uri),
             lambda: list(hdfs_io.iter_record_batches([uri])))
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(hdfs_io.StorageTimeoutError) as info:
            call()
        assert time.monotonic() - t0 < 8
        assert uri in str(info.value)


def test_timed_call_propagates_results_and_errors():
    from hdfs_io import _timeout

    assert _timeout.call("u", "op", lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        _timeout.call("u", "op", lambda: 1 / 0)
    with pytest.raises(hdfs_io.StorageTimeoutError, match="op u did not complete within 0.2 s"):
        _timeout.call("u", "op", time.sleep, 2, timeout=0.2)
