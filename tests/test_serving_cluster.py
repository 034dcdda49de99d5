"""`tfos-serve` on exports kept on the pseudo-cluster's HDFS and S3 endpoint, typed as a user would (the
installed console script, with the environment of ``tfos-cluster env``): both are downloaded once into
the private cache and answer as the model does in process, and a version published on HDFS while the
server runs is swapped in."""
from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

import cluster
import hdfs_io
from test_cli_e2e import BIN
from test_serving import BUCKETS, Served, in_process, publish_version, raw_lines
from tfos_jobs.ctr import schema
from tfos_jobs.encoding import arrays

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def remote_exports(pseudo_cluster, cluster_env):
    """Fresh export directories on HDFS and on S3, deleted afterwards."""
    hdfs_io.reset()     # clients pick up the cluster's endpoint and keys
    run = f"serving-test-{uuid.uuid4().hex[:8]}"
    roots = {"hdfs": hdfs_io.join(pseudo_cluster["hdfs"]["uri"], "tmp", run),
             "s3": f"s3://{pseudo_cluster['s3']['bucket']}/{run}"}
    try:
        yield {kind: f"{root}/ctr" for kind, root in roots.items()}
    finally:
        for root in roots.values():
            hdfs_io.delete(root, recursive=True, missing_ok=True)
        hdfs_io.reset()


def served_version(server, name):
    code, body, _ = server.call("GET", f"/v1/models/{name}")
    assert code == 200, body
    return [s["version"] for s in body["model_version_status"] if s["state"] == "AVAILABLE"]


def test_serves_exports_from_hdfs_and_s3_and_swaps_in_a_new_hdfs_version(pseudo_cluster, remote_exports, tmp_path):
    for base in remote_exports.values():
        publish_version(base, seed=1)
    local = tmp_path / "v1"
    hdfs_io.download(f"{remote_exports['hdfs']}/1", str(local))
    lines = raw_lines(20, seed=5)
    expected = in_process(local, arrays.encode(lines, schema.encoding(BUCKETS, labeled=False)).features)
    cache = tmp_path / "cache"
    server = Served([str(BIN / "tfos-serve"), "--model", f"ctr={remote_exports['hdfs']}",
                     "--model", f"ctr_s3={remote_exports['s3']}", "--poll-s", "0.5", "--cache-dir", str(cache)],
                    tmp_path / "serve.log", env={**os.environ, **cluster.client_env(pseudo_cluster)})
    try:
        for name in ("ctr", "ctr_s3"):
            assert served_version(server, name) == ["1"], server.output()[-3000:]
            code, body, _ = server.call("POST", f"/v1/models/{name}/records:predict", {"records": lines})
            assert code == 200 and body["model_version"] == "1", body
            np.testing.assert_allclose(np.array(body["predictions"]), expected, rtol=1e-6)
        publish_version(remote_exports["hdfs"], seed=2)
        deadline = time.monotonic() + 120
        while "2" not in served_version(server, "ctr") and time.monotonic() < deadline:
            time.sleep(0.5)
        code, body, _ = server.call("POST", "/v1/models/ctr/records:predict", {"records": lines})
        assert code == 200 and body["model_version"] == "2", (body, server.output()[-3000:])
        assert not np.allclose(np.array(body["predictions"]), expected), "version 2 answered as version 1"
        assert served_version(server, "ctr_s3") == ["1"]
        assert "AWS_SECRET" not in server.output() and pseudo_cluster["s3"]["secret_key"] not in server.output()
    finally:
        assert server.stop() == 0, server.output()[-3000:]
    cached = sorted(p.name for p in cache.rglob("saved_model.pb"))
    assert len(cached) == 3, sorted(str(p) for p in cache.rglob("*"))
