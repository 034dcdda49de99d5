"""Lifecycle of a private pseudo-cluster (own state dir and port block): a taken port gives a
clear error, data survives down/up, ``down`` leaves no process and no bound port, ``--wipe``."""
from __future__ import annotations

import socket
import time

import psutil
import pytest

import cluster
from cluster.pseudo import config, manager
from cluster.pseudo.errors import ClusterError
from cluster.pseudo.testing import bounded as with_timeout

pytestmark = pytest.mark.cluster

PORT_BASE = 20600  # away from the default block (19800) used by the session cluster



@pytest.fixture
def private_home(tmp_path, monkeypatch):
    home = tmp_path / "cluster"
    monkeypatch.setenv("TFOS_CLUSTER_HOME", str(home))
    monkeypatch.setenv("TFOS_CLUSTER_PORT_BASE", str(PORT_BASE))
    try:
        yield home
    finally:
        # Whatever happened in the test, stop every process of this private cluster.
        manager.down()


def _pids_and_ports():
    rows = cluster.status()
    return ({r["pid"] for r in rows if r["pid"]},
            {p for e in manager._load_state(manager._layout())["services"].values()
             for p in e["ports"]})


def test_port_taken_gives_clear_error(private_home):
    opts = config.Options(port_base=PORT_BASE)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        s.bind(("127.0.0.1", opts.port("rm.web")))
        s.listen(1)
        with pytest.raises(ClusterError) as e:
            cluster.up(workers=1)
    msg = str(e.value)
    assert f"port {opts.port('rm.web')} (resourcemanager)" in msg and "already in use" in msg
    assert not manager.any_alive()


def test_lifecycle_data_survives_and_down_leaves_nothing(private_home):
    t0 = time.monotonic()
    conn = cluster.up(workers=1)
    cold = time.monotonic() - t0
    assert conn["home"] == str(private_home)
    assert conn["hdfs"]["uri"] == f"hdfs://127.0.0.1:{PORT_BASE}"
    pids, ports = _pids_and_ports()
    assert len(pids) == 8  # NN, DN, RM, NM, master, 1 worker, S3, Kafka
    meta = private_home / "data" / "kafka" / "meta.properties"   # Kafka's storage, formatted once
    formatted = meta.stat().st_mtime_ns
    print(f"cold up {cold:.1f}s, idle RSS {manager.rss_total() / 2**30:.2f} GiB")

    # A second up is harmless: same processes.
    assert cluster.up()["hdfs"] == conn["hdfs"]
    assert _pids_and_ports()[0] == pids
    # ... but asking for another shape while up is refused clearly.
    with pytest.raises(ClusterError, match="already up"):
        cluster.up(workers=3)

    from hdfs_native import Client
    client = Client(conn["hdfs"]["uri"])

    def write():
        with client.create("/keep/me.txt") as f:
            f.write(b"persisted\n")
    with_timeout(write)

    stopped = cluster.down()
    assert {s["pid"] for s in stopped} == pids
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    for port in ports:
        assert manager.port_free(port), f"port {port} still bound after down"
    assert not manager._leftovers(manager._layout())
    with pytest.raises(ClusterError, match="not up"):
        cluster.connection()
    assert all(not r["alive"] for r in cluster.status())

    # Data survives down/up (the NameNode is not formatted again).
    conn2 = cluster.up(workers=1)
    assert conn2["hdfs"] == conn["hdfs"]
    client = Client(conn2["hdfs"]["uri"])

    def read():
        with client.read("/keep/me.txt") as r:
            return r.read()
    assert with_timeout(read) == b"persisted\n"
    assert meta.stat().st_mtime_ns == formatted      # not formatted again

    # down --wipe removes the data: the next up starts from an empty file system.
    cluster.down(wipe=True)
    assert not (private_home / "data").exists()
    assert not (private_home / "connection.json").exists()
