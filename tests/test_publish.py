"""The publish protocol (:mod:`hdfs_io.publishing`) under injected faults, on local disk and on a real
S3 endpoint (a moto server started here), and on the pseudo-cluster's HDFS (marked ``cluster``).

Every fault test publishes two versions first, then publishes a third with an exception injected at
one store call (a data write, ``_SUCCESS``, the pointer, a delete of the cleanup), and checks that a
reader of the URI sees one complete version (old or new, never neither, never a mix), byte for byte,
and that the next publish succeeds and leaves only the current and the previous version.

The invariant checks come first and use only calls the old protocol had (``read_parquet``,
``is_published``), so the sweeps also run against the old code (c394a37), where the S3 ones fail.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import hdfs_io
from hdfs_io import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "publish-tests"
NFILES = 4


# ------------------------------------------------------------------------------------ services
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_s3():
    """A real S3 endpoint over HTTP: moto's server, started and stopped (by its PID) here."""
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    cmd = [exe, "-H", "127.0.0.1", "-p", str(port)] if os.path.exists(exe) else \
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None, f"moto server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "moto server did not listen within 30 s"
            time.sleep(0.1)
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id="test-key", aws_secret_access_key="test-secret")
        client.create_bucket(Bucket=BUCKET)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


from test_hdfs_io import _isolated_env  # noqa: E402,F401  (autouse: no cluster/AWS settings leak in)


def _s3_root(request, monkeypatch) -> str:
    port = request.getfixturevalue("moto_s3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    hdfs_io.reset()
    return f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}-{os.urandom(4).hex()}"


def _hdfs_root(request, monkeypatch) -> str:
    conn = request.getfixturevalue("pseudo_cluster")
    request.getfixturevalue("cluster_env")
    hdfs_io.reset()
    return hdfs_io.join(conn["hdfs"]["uri"], "tmp", f"publish-test-{os.urandom(5).hex()}")


SCHEMES = ["file", "s3", pytest.param("hdfs", marks=pytest.mark.cluster)]


@pytest.fixture(params=SCHEMES)
def root(request, monkeypatch, tmp_path):
    if request.param == "file":
        yield f"file://{tmp_path}/out"
        return
    base = (_s3_root if request.param == "s3" else _hdfs_root)(request, monkeypatch)
    yield base
    hdfs_io.delete(base, recursive=True, missing_ok=True)


# ------------------------------------------------------------------------------------ data sets
def table(version: int, rows: int = 400) -> pa.Table:
    ids = np.arange(rows, dtype=np.int64) + version * 1_000_000
    return pa.table({"id": ids, "v": np.full(rows, version, dtype=np.int32), "s": [f"v{version}-{i}" for i in range(rows)]})


def local_dataset(tmp_path, version: int, files: int = NFILES, rows: int = 400) -> str:
    d = tmp_path / f"src-v{version}-{os.urandom(3).hex()}"
    d.mkdir()
    t = table(version, rows)
    step = -(-rows // files)
    for i in range(files):
        pq.write_table(t.slice(i * step, step), d / f"part-{i:05d}.parquet")
    (d / "_meta.json").write_text(json.dumps({"version": version}))
    return str(d)


def content(uri: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file of the version a reader resolves at ``uri``."""
    data = hdfs_io.resolve(uri)
    out = {}
    for rel, _ in hdfs_io.walk_files(data):
        with hdfs_io.open(hdfs_io.join(data, rel), "rb") as f:
            out[rel] = f.read()
    return out


def versions(uri: str) -> list[str]:
    return sorted(e.name for e in hdfs_io.ls(uri) if e.name.startswith("_v-"))


def entries(uri: str) -> list[str]:
    return sorted(e.name for e in hdfs_io.ls(uri))


def read_version(uri: str) -> int:
    """Which version a reader of ``uri`` sees; fails on a mix, an empty or an unreadable data set."""
    got = hdfs_io.read_parquet(uri)
    seen = sorted(set(got.column("v").to_pylist()))
    assert len(seen) == 1, f"reader of {uri} saw a mix of versions {seen}"
    v = seen[0]
    assert got.sort_by("id").equals(table(v).sort_by("id")), f"version {v} at {uri} is incomplete: {got.num_rows} rows"
    return v


# ------------------------------------------------------------------------------------ fault injection
class Injected(OSError):
    pass


class _FsProxy:
    """Stands in for ``store.fs``: counts (and may fail) the writes that reach the store."""

    def __init__(self, real, faults: "Faults"):
        self._real = real
        self._faults = faults

    def __getattr__(self, name):
        return getattr(self._real, name)

    def open_output_stream(self, path, *args, **kwargs):
        self._faults.write(path, "before")
        stream = self._real.open_output_stream(path, *args, **kwargs)
        return _AfterClose(stream, self._faults, path)

    def copy_file(self, src, dst):
        self._faults.write(dst, "before")
        self._real.copy_file(src, dst)
        self._faults.write(dst, "after")


class _AfterClose:
    def __init__(self, inner, faults: "Faults", path: str):
        self._inner, self._faults, self._path = inner, faults, path

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._inner.close()
        if exc_type is None:
            self._faults.write(self._path, "after")

    def close(self):
        self._inner.close()
        self._faults.write(self._path, "after")


class Faults:
    """Fail one store call of a publish.

    ``point``: ``("write", n)`` the n-th write (data, ``_SUCCESS``, pointer, in order) fails before it
    happens; ``("write-after", n)`` it happens and then reports an error (a lost reply);
    ``("delete", n)`` the n-th delete fails; or a named step: ``data-first``, ``data-mid``,
    ``success``, ``pointer``, ``pointer-lost-reply``, ``cleanup``."""

    def __init__(self, monkeypatch, uri: str, point):
        self.store, self.loc = backends.resolve(uri)
        self.base = self.loc.path.rstrip("/") + "/"
        self.point = point
        self.writes: list[str] = []  # what each write was, in order
        self.deletes = 0
        self.fired = None
        self.switched = False
        monkeypatch.setattr(self.store, "fs", _FsProxy(self.store.fs, self))
        if self.store.caps.atomic_rename:  # _SUCCESS and the pointer: temp file + store.replace
            real_replace = self.store.replace

            def replace(tmp, loc):
                self.write(loc.path, "before")
                real_replace(tmp, loc)
                self.write(loc.path, "after")

            monkeypatch.setattr(self.store, "replace", replace)
        for name in ("delete_file", "delete_tree", "delete_paths"):
            real = getattr(self.store, name)
            monkeypatch.setattr(self.store, name, self._deleting(real))

    def what(self, path: str) -> str:
        rel = path[len(self.base):] if path.startswith(self.base) else None
        if rel is None:
            return "outside"  # the old protocol's temporary sibling
        if rel == "_CURRENT":
            return "pointer"
        if rel.endswith("/_SUCCESS") or rel == "_SUCCESS":
            return "success"
        return "data"

    def _fire(self, where: str):
        self.fired = where
        raise Injected(f"injected fault: {where}")

    def write(self, path: str, when: str) -> None:
        what = self.what(path)
        if when == "before":
            self.writes.append(what)
        n = len(self.writes)
        kind, arg = (self.point if isinstance(self.point, tuple) else (self.point, None))
        if when == "after" and what == "pointer":
            self.switched = True
        if self.fired:
            return
        if when == "before":
            if kind == "write" and n == arg:
                self._fire(f"before write #{n} ({what})")
            if (kind == "data-first" and what == "data" and self.writes.count("data") == 1) or \
                    (kind == "data-mid" and what == "data" and self.writes.count("data") == 3) or \
                    (kind == "success" and what == "success") or (kind == "pointer" and what == "pointer"):
                self._fire(f"{kind} ({path})")
        else:
            if kind == "write-after" and n == arg:
                self._fire(f"after write #{n} ({what}): reply lost")
            if kind == "pointer-lost-reply" and what == "pointer":
                self._fire(f"pointer written, reply lost ({path})")

    def _deleting(self, real):
        def delete(*args, **kwargs):
            self.deletes += 1
            kind, arg = (self.point if isinstance(self.point, tuple) else (self.point, None))
            if not self.fired and ((kind == "delete" and self.deletes == arg) or (kind == "cleanup" and self.switched)):
                self._fire(f"delete #{self.deletes} ({args[-1]!r:.120})")
            return real(*args, **kwargs)
        return delete


def _publish_two(tmp_path, uri: str) -> dict[str, bytes]:
    hdfs_io.publish_dir(local_dataset(tmp_path, 0), uri, kind="test-data")
    hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri, overwrite=True, kind="test-data")
    assert read_version(uri) == 1
    return content(uri)


def _check_after_fault(uri: str, before: dict[str, bytes], new_bytes_src: str, point, raised) -> int:
    """The invariant: one complete version is readable; if the old one, byte for byte."""
    assert hdfs_io.is_published(uri), f"{uri} is no longer published after fault {point} (raised {raised!r})"
    v = read_version(uri)
    assert v in (1, 2), f"after fault {point} a reader sees version {v}"
    if v == 1:
        assert content(uri) == before, f"after fault {point} the old version changed: {sorted(content(uri))}"
        assert raised is not None, f"fault {point}: the publish kept the old version but reported success"
    else:
        with open(os.path.join(new_bytes_src, "_meta.json"), "rb") as f:
            assert content(uri)["_meta.json"] == f.read()
    return v


def _next_publish_cleans(tmp_path, uri: str) -> None:
    hdfs_io.publish_dir(local_dataset(tmp_path, 3), uri, overwrite=True, kind="test-data")
    assert read_version(uri) == 3 and hdfs_io.published_kind(uri) == "test-data"
    _only_current_and_previous(uri)


def _only_current_and_previous(uri: str) -> None:
    info = hdfs_io.published_info(uri)
    kept = versions(uri)
    assert kept == sorted([info.version, info.previous]), f"versions left {kept}, pointer {info}"
    assert entries(uri) == sorted(["_CURRENT", *kept]), f"leftovers in {uri}: {entries(uri)}"


NAMED = ["data-first", "data-mid", "success", "pointer", "pointer-lost-reply", "cleanup"]


@pytest.mark.parametrize("point", NAMED)
def test_fault_at_each_step_keeps_a_complete_version(root, tmp_path, monkeypatch, point, caplog):
    uri = root
    before = _publish_two(tmp_path, uri)
    old_versions = versions(uri)
    src = local_dataset(tmp_path, 2)
    with monkeypatch.context() as mp:
        faults = Faults(mp, uri, point)
        raised = None
        with caplog.at_level(logging.WARNING, logger="hdfs_io.publishing"):
            try:
                hdfs_io.publish_dir(src, uri, overwrite=True, kind="test-data")
            except Injected as exc:
                raised = exc
        assert faults.fired, f"fault {point} never fired; writes seen: {faults.writes}, deletes {faults.deletes}"
    v = _check_after_fault(uri, before, src, point, raised)
    if point in ("pointer-lost-reply", "cleanup"):
        # the pointer switched: the publish succeeded, cleanup problems are only logged
        assert raised is None and v == 2, f"fault {point}: raised {raised!r}, reader sees v{v}"
        if point == "cleanup":
            assert any("could not delete" in r.getMessage() for r in caplog.records), caplog.text
    else:
        assert isinstance(raised, Injected) and v == 1, f"fault {point}: raised {raised!r}, reader sees v{v}"
        assert versions(uri) == old_versions, f"fault {point}: the failed version was left: {versions(uri)}"
    _next_publish_cleans(tmp_path, uri)


def _sweep(root, tmp_path, monkeypatch, kind_of_fault: str, upto: int) -> list[str]:
    """Fail the n-th write (or delete) of a publish, for every n, each time over a fresh two-version
    output; returns what each fault hit."""
    hits, uris = [], []
    for n in range(1, upto + 1):
        uri = f"{root}/sweep-{n}"
        before = _publish_two(tmp_path, uri)
        src = local_dataset(tmp_path, 2)
        with monkeypatch.context() as mp:
            faults = Faults(mp, uri, (kind_of_fault, n))
            raised = None
            try:
                hdfs_io.publish_dir(src, uri, overwrite=True, kind="test-data")
            except Injected as exc:
                raised = exc
        hits.append(faults.fired or "-")
        _check_after_fault(uri, before, src, (kind_of_fault, n), raised)
        hdfs_io.publish_dir(local_dataset(tmp_path, 3), uri, overwrite=True, kind="test-data")
        assert read_version(uri) == 3, f"the publish after fault {(kind_of_fault, n)} did not take"
        uris.append(uri)
    for uri in uris:  # the layout last: the checks above also hold for the old protocol
        _only_current_and_previous(uri)
    return hits


def test_error_at_every_write_keeps_a_complete_version(root, tmp_path, monkeypatch):
    # writes of one publish here: NFILES + meta.json, _SUCCESS, pointer (the old S3 protocol: twice as many)
    hits = _sweep(root, tmp_path, monkeypatch, "write", 2 * (NFILES + 2) + 1)
    assert any("pointer" in h for h in hits) and any("success" in h for h in hits), hits


def test_lost_reply_at_every_write_keeps_a_complete_version(root, tmp_path, monkeypatch):
    hits = _sweep(root, tmp_path, monkeypatch, "write-after", NFILES + 3)
    assert any("pointer" in h for h in hits), hits


def test_error_at_every_delete_keeps_a_complete_version(root, tmp_path, monkeypatch):
    hits = _sweep(root, tmp_path, monkeypatch, "delete", 3)
    assert hits[0] != "-", hits


# ------------------------------------------------------------------------------------ readers
def test_readers_during_publishes_see_whole_versions(root, tmp_path):
    uri = root
    srcs = [local_dataset(tmp_path, v) for v in (1, 2)]
    hdfs_io.publish_dir(srcs[0], uri)
    seen, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(read_version(uri))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for i in range(6):
            hdfs_io.publish_dir(srcs[(i + 1) % 2], uri, overwrite=True)
            time.sleep(0.15)  # a read spans at most one switch (the previous version is kept for it)
    finally:
        stop.set()
        t.join(60)
    assert not errors, f"a reader failed during publishes: {errors[:3]} (after {len(seen)} good reads)"
    assert len(seen) >= 3 and set(seen) <= {1, 2}, f"reads saw versions {seen}"


def test_resolve_layouts_and_errors(root, tmp_path):
    uri = root
    with pytest.raises(FileNotFoundError):
        hdfs_io.resolve(uri)
    hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri, kind="prep", metadata={"rows": 400})
    data = hdfs_io.resolve(uri)
    assert data.startswith(uri.rstrip("/") + "/_v-") and hdfs_io.exists(hdfs_io.join(data, "_SUCCESS")), data
    info = hdfs_io.published_info(uri)
    assert (info.kind, info.metadata, info.previous, info.legacy) == ("prep", {"rows": 400}, None, False), info
    assert hdfs_io.resolve(data) == data  # a version directory is itself complete
    # paths inside the published URI read through the pointer (old callers: open(join(U, "x")))
    with hdfs_io.open(hdfs_io.join(uri, "_meta.json"), "r") as f:
        assert json.load(f) == {"version": 1}
    assert hdfs_io.info(hdfs_io.join(uri, "part-00000.parquet")).size > 0
    # a data set that is not published
    bare = f"{uri}-bare"
    hdfs_io.mkdirs(bare)
    with hdfs_io.open(hdfs_io.join(bare, "x.bin"), "wb") as f:
        f.write(b"x")
    with pytest.raises(hdfs_io.NotPublishedError, match="not published"):
        hdfs_io.resolve(bare)
    assert not hdfs_io.is_published(bare)
    hdfs_io.delete(bare, recursive=True)


def test_download_of_a_published_uri_gives_the_current_version(root, tmp_path):
    uri = root
    hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri)
    hdfs_io.publish_dir(local_dataset(tmp_path, 2), uri, overwrite=True)
    out = tmp_path / "dl"
    hdfs_io.download(uri, str(out))
    assert sorted(os.listdir(out)) == sorted(["_SUCCESS", "_meta.json"] + [f"part-{i:05d}.parquet" for i in range(NFILES)])
    assert json.loads((out / "_meta.json").read_text()) == {"version": 2}


def test_legacy_layout_is_read_and_replaced(root, tmp_path):
    uri = root
    src = local_dataset(tmp_path, 1)
    hdfs_io.copy(src, uri)  # the layout written before this protocol: data and _SUCCESS in uri itself
    with hdfs_io.open(hdfs_io.join(uri, "_SUCCESS"), "wb"):
        pass
    assert hdfs_io.resolve(uri) == backends.resolve(uri)[1].uri
    assert hdfs_io.is_published(uri) and hdfs_io.published_kind(uri) is None and read_version(uri) == 1
    with pytest.raises(FileExistsError):
        hdfs_io.publish_dir(local_dataset(tmp_path, 2), uri)
    hdfs_io.publish_dir(local_dataset(tmp_path, 2), uri, overwrite=True, kind="prep")  # legacy: kind unknown, allowed
    assert read_version(uri) == 2 and hdfs_io.published_kind(uri) == "prep"
    assert entries(uri) == ["_CURRENT", *versions(uri)] and len(versions(uri)) == 1, entries(uri)


def test_kind_and_overwrite_refusals(root, tmp_path):
    uri = root
    hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri, kind="ctr-prep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hdfs_io.publish_dir(local_dataset(tmp_path, 2), uri)
    with pytest.raises(hdfs_io.WrongKindError, match="'ctr-prep'.*'ctr-export'") as info:
        with hdfs_io.publish(uri, overwrite=True, kind="ctr-export"):
            pytest.fail("publish should refuse before the writer runs")
    assert isinstance(info.value, FileExistsError)
    with pytest.raises(hdfs_io.WrongKindError):
        hdfs_io.write_parquet(table(2), uri, overwrite=True, kind="ctr-export")
    assert read_version(uri) == 1 and hdfs_io.published_kind(uri) == "ctr-prep"
    hdfs_io.write_parquet(table(2), uri, overwrite=True, kind="ctr-prep")
    assert read_version(uri) == 2


def test_crashed_first_publish_does_not_block_the_next(root, tmp_path, monkeypatch):
    uri = root
    with monkeypatch.context() as mp:
        Faults(mp, uri, "pointer")
        mp.setattr(hdfs_io.fs, "delete", lambda *a, **k: None)  # a kill: nothing is tidied up
        with pytest.raises(Injected):
            hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri)
    assert not hdfs_io.is_published(uri) and len(versions(uri)) == 1, entries(uri)
    hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri)  # overwrite=False: debris is not an output
    assert read_version(uri) == 1 and entries(uri) == ["_CURRENT", *versions(uri)] and len(versions(uri)) == 1


def test_readers_without_the_protocol_see_no_data_at_the_uri(root, tmp_path):
    """pyarrow given the published URI itself finds no data files (all of it is under ``_``-names),
    so it cannot read a mix; given ``resolve(uri)`` it reads the complete version."""
    uri = root
    hdfs_io.publish_dir(local_dataset(tmp_path, 1), uri)
    hdfs_io.publish_dir(local_dataset(tmp_path, 2), uri, overwrite=True)
    fs, path = hdfs_io.filesystem(uri)
    ds = pads.dataset(path, filesystem=fs, format="parquet")
    assert ds.files == [] and ds.to_table().num_rows == 0, ds.files
    fs, path = hdfs_io.filesystem(hdfs_io.resolve(uri))
    got = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    assert got.sort_by("id").equals(table(2).sort_by("id"))



def _model_version_dir(tmp_path, tag: str) -> str:
    """A local directory in TF Serving's layout (what a numbered export publishes)."""
    d = tmp_path / f"model-{tag}-{os.urandom(3).hex()}"
    (d / "variables").mkdir(parents=True)
    (d / "variables" / "variables.index").write_bytes(tag.encode() * 10)
    (d / "saved_model.pb").write_bytes(b"pb-" + tag.encode())
    (d / "metrics.json").write_text(json.dumps({"tag": tag}))
    return str(d)


def test_numbered_versions_are_write_once_and_a_crashed_one_is_passed_over(root, tmp_path, monkeypatch):
    """``publish_once`` (``--version auto``): each number is written once; a version cut off while
    being written has no ``_SUCCESS`` (and, on S3, no ``saved_model.pb`` either: it is written last
    but ``_SUCCESS``), readers pass over it and the next number goes beyond it."""
    from tfos_jobs.export import export_dir, versions as numbered
    from tfos_jobs.registry import ModelRegistry
    first = hdfs_io.publish_once(_model_version_dir(tmp_path, "a"), hdfs_io.join(root, "1"), last=("saved_model.pb",))
    with pytest.raises(FileExistsError):
        hdfs_io.publish_once(_model_version_dir(tmp_path, "b"), first, last=("saved_model.pb",))
    assert content(first)["saved_model.pb"] == b"pb-a"
    written = []
    real_open = hdfs_io.fs.open

    def open_then_fail_at_the_second_file(uri, mode="rb", *a, **k):
        if "w" in mode:
            written.append(uri.rsplit("/", 1)[-1])
            if len(written) == 2:
                raise Injected(uri)
        return real_open(uri, mode, *a, **k)

    real_upload = hdfs_io.fs.upload

    def upload_then_fail(local, uri, *a, **k):              # rename stores: cut off inside the hidden copy
        real_upload(local, uri, *a, **k)
        raise Injected(uri)

    atomic = backends.resolve(root)[0].caps.atomic_rename
    with monkeypatch.context() as mp:
        if atomic:
            mp.setattr(hdfs_io.fs, "upload", upload_then_fail)
        else:
            mp.setattr(hdfs_io.fs, "open", open_then_fail_at_the_second_file)
        mp.setattr(hdfs_io.fs, "delete", lambda *a, **k: None)     # a kill: nothing is tidied up
        with pytest.raises(Injected):
            hdfs_io.publish_once(_model_version_dir(tmp_path, "c"), hdfs_io.join(root, "2"), last=("saved_model.pb",))
    assert numbered(root) in ({1: True, 2: False}, {1: True}), numbered(root)
    if not atomic:
        assert "saved_model.pb" not in written + entries(hdfs_io.join(root, "2")), written   # 3 files: it is last
    allocated = ModelRegistry(root).allocate()      # the registry goes past a number present on storage
    assert export_dir(root) == first and allocated == (3 if 2 in numbered(root) else 2)
    third = hdfs_io.publish_once(_model_version_dir(tmp_path, "d"), hdfs_io.join(root, str(allocated)),
                                 last=("saved_model.pb",))
    assert export_dir(root) == third and content(third)["saved_model.pb"] == b"pb-d"


# ------------------------------------------------------------------------------------ SIGKILL
CHILD = r"""
import os, sys, time
sys.path.insert(0, {root!r})
import hdfs_io, hdfs_io.fs as f
real = f._copy_one
def slow(*a):
    time.sleep(0.01)
    return real(*a)
f._copy_one = slow
srcs, uri = {srcs!r}, {uri!r}
i = 0
while True:
    hdfs_io.publish_dir(srcs[i % 2], uri, overwrite=True)
    print("published", i % 2 + 1, flush=True)
    i += 1
"""


STEPPER = r"""
import sys, time
sys.path.insert(0, {root!r})
import hdfs_io
from hdfs_io import backends
src, uri = {src!r}, {uri!r}
store = backends.resolve(uri)[0]

def step(name, fn):
    def run(*args, **kwargs):
        print("step", name, args[-1] if args else "", flush=True)
        time.sleep(0.03)  # the parent kills here, before the call
        return fn(*args, **kwargs)
    return run

class Fs:
    def __init__(self, real):
        self.real = real
    def __getattr__(self, name):
        attr = getattr(self.real, name)
        return step(name, attr) if name in ("copy_file", "move", "create_dir", "delete_dir", "delete_file",
                                            "open_output_stream") else attr

store.fs = Fs(store.fs)
for name in ("replace", "delete_tree", "delete_file", "delete_paths"):
    setattr(store, name, step(name, getattr(store, name)))
hdfs_io.publish_dir(src, uri, overwrite=True)
print("done", flush=True)
"""


def test_sigkill_before_every_store_call_keeps_a_complete_version(tmp_path):
    """A child publishes version 2 over version 1 and is SIGKILLed just before its k-th store call,
    for every k: after each kill a reader sees version 1 or 2, complete."""
    uri = f"file://{tmp_path}/out"
    srcs = [local_dataset(tmp_path, v) for v in (1, 2)]
    hdfs_io.publish_dir(srcs[0], uri)
    seen, k = [], 0
    while True:
        k += 1
        child = subprocess.Popen([sys.executable, "-c", STEPPER.format(root=ROOT, src=srcs[k % 2], uri=uri)],
                                 stdout=subprocess.PIPE, text=True)
        steps, finished = [], False
        try:
            for line in child.stdout:
                if line.startswith("done"):
                    finished = True
                    break
                if not line.startswith("step "):
                    continue
                steps.append(line.split()[1])
                if len(steps) == k:
                    break
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
        if finished:
            break
        assert hdfs_io.is_published(uri), f"SIGKILL before {steps[-1]} (call {k}) left nothing published"
        seen.append((k, steps[-1], read_version(uri)))
        assert k < 40, f"a publish made more than 40 store calls: {steps}"
    assert len(seen) >= 4, seen
    hdfs_io.publish_dir(srcs[0], uri, overwrite=True)
    assert read_version(uri) == 1
    _only_current_and_previous(uri)


def test_sigkill_at_random_points_keeps_a_complete_version(tmp_path):
    uri = f"file://{tmp_path}/out"
    srcs = [local_dataset(tmp_path, v, files=24, rows=24 * 20_000) for v in (1, 2)]
    expect = {v: pq.read_table(srcs[v - 1]).sort_by("id") for v in (1, 2)}
    hdfs_io.publish_dir(srcs[0], uri)
    rng = random.Random(18)
    script = CHILD.format(root=ROOT, srcs=srcs, uri=uri)
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().startswith("published"), "child never published"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
        assert hdfs_io.is_published(uri), f"nothing published after a SIGKILL: {entries(uri)}"
        got = hdfs_io.read_parquet(uri).sort_by("id")
        v = got.column("v")[0].as_py()
        assert got.equals(expect[v]), f"after a SIGKILL a reader sees {got.num_rows} rows (v{v})"
    hdfs_io.publish_dir(srcs[0], uri, overwrite=True)
    assert hdfs_io.read_parquet(uri).sort_by("id").equals(expect[1])
    _only_current_and_previous(uri)
