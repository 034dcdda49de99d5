"""The registry's building block and the registry itself on the pseudo-cluster's HDFS and S3 endpoint:
of writers racing for one name exactly one wins, whole; racing trainings never share a version number."""
from __future__ import annotations

import threading
import uuid

import pytest

import hdfs_io
from tfos_jobs.registry import ModelRegistry

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(params=["hdfs", "s3"])
def remote(request, pseudo_cluster, cluster_env):
    hdfs_io.reset()     # clients pick up the cluster's endpoint and keys
    run = f"registry-test-{uuid.uuid4().hex[:8]}"
    base = (hdfs_io.join(pseudo_cluster["hdfs"]["uri"], "tmp", run) if request.param == "hdfs"
            else f"s3://{pseudo_cluster['s3']['bucket']}/{run}")
    try:
        yield base
    finally:
        hdfs_io.delete(base, recursive=True, missing_ok=True)
        hdfs_io.reset()


def race(n, fn):
    results, errors = [None] * n, []

    def one(i):
        try:
            results[i] = fn(i)
        except Exception as exc:   # noqa: BLE001 - reported by the caller
            errors.append(exc)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def test_create_new_has_one_winner_and_leaves_it_whole(remote):
    uri = hdfs_io.join(remote, "events", "0000000001.json")
    payloads = [(f"writer {i} " * 2000).encode() for i in range(8)]
    won = race(8, lambda i: hdfs_io.create_new(uri, payloads[i]))
    assert won.count(True) == 1, won
    with hdfs_io.open(uri, "rb") as handle:
        assert handle.read() == payloads[won.index(True)]
    assert [i.uri.rsplit("/", 1)[-1] for i in hdfs_io.ls(hdfs_io.join(remote, "events"))] == ["0000000001.json"]
    assert hdfs_io.create_new(uri, b"late") is False


def test_racing_writers_take_distinct_versions_and_aliases_move_in_order(remote):
    uri = hdfs_io.join(remote, "ctr")
    taken = race(4, lambda i: [ModelRegistry(uri).allocate() for _ in range(3)])
    assert sorted(n for mine in taken for n in mine) == list(range(1, 13)), taken
    registry = ModelRegistry(uri)
    for n in (1, 2):
        hdfs_io.mkdirs(registry.version_uri(n))
        with hdfs_io.open(hdfs_io.join(registry.version_uri(n), hdfs_io.SUCCESS), "wb"):
            pass
        registry.register(n, lineage={"n": n}, metrics={})
    registry.promote(1)
    registry.promote(2)
    registry.rollback(reason="test")
    state = ModelRegistry(uri).state()
    assert state.current_aliases() == {"champion": 1} and state.seq == 12 + 2 + 3, state
    assert [e["op"] for e in registry.history()][-3:] == ["alias", "alias", "alias"]
