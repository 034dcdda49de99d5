"""The pseudo-cluster's Kafka broker (KRaft, one node) and the streaming scorer reading it, typed as a
user would: records produced with confluent-kafka, ``tfos-ctr stream-score --input
kafka://$TFOS_KAFKA_BOOTSTRAP/<topic>`` running while more arrive, stopped by its PID. Spark's Kafka
connector comes from the jar cache (``tfos-cluster fetch``) through the cluster's spark-defaults.conf."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

import cluster
import hdfs_io
from cluster.pseudo import kafka as kafka_client
from cluster.pseudo import manager
from cluster.processes import stop_tree
from tfos_jobs import scoring
from tfos_jobs import spark as tfos_spark
from tfos_jobs.export import export_dir
from test_cli_e2e import BIN, cli
from test_s3a_cluster import _small_export

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _broker_pid() -> int:
    rows = {r["service"]: r for r in manager.status()}
    assert "kafka" in rows and rows["kafka"]["alive"], rows.get("kafka", sorted(rows))
    return rows["kafka"]["pid"]


def test_broker_is_healthy_and_listens_on_loopback_only(pseudo_cluster):
    bootstrap = pseudo_cluster["kafka"]["bootstrap"]
    host, port = bootstrap.rsplit(":", 1)
    assert cluster.client_env(pseudo_cluster)["TFOS_KAFKA_BOOTSTRAP"] == bootstrap
    assert int(port) == pseudo_cluster["options"]["port_base"] + 27
    md = kafka_client.metadata(host, int(port), timeout=5)
    assert list(md.brokers.values()) == [(host, int(port))], md
    assert kafka_client.api_versions(host, int(port), timeout=5)[kafka_client.API_METADATA][1] >= 4
    proc = psutil.Process(_broker_pid())
    listening = sorted({(c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN})
    ctl = pseudo_cluster["options"]["port_base"] + 28
    assert listening == [("127.0.0.1", int(port)), ("127.0.0.1", ctl)], listening
    row = {r["service"]: r for r in manager.status()}["kafka"]
    assert row["healthy"] and row["port"] == int(port), row


def _create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                      request_timeout=30).values():
        future.result(timeout=60)


def _produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    """Every line as one record (keyed by its id); all acknowledged or fail."""
    from confluent_kafka import Producer
    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, "acks": "all", "enable.idempotence": True, "message.timeout.ms": 60000,
                         "linger.ms": 20})
    for line in lines:
        producer.produce(topic, value=line.encode(), key=line.split("\t", 1)[0].encode(),
                         on_delivery=lambda err, msg: err and errors.append(str(err)))
        producer.poll(0)
    left = producer.flush(90)
    assert left == 0 and not errors, (left, errors[:5])


def _committed_files(sink: Path) -> list[str]:
    """The files of a Spark file sink's committed micro-batches (its ``_spark_metadata`` log: a version
    line, then one JSON entry per file). A batch that had no rows (the broker still loading its
    coordinator, say) commits a log entry with no file."""
    files = []
    for log in sorted((sink / "_spark_metadata").iterdir()) if (sink / "_spark_metadata").is_dir() else []:
        if log.name.split(".")[0].isdigit():
            for line in log.read_text().splitlines()[1:]:
                entry = json.loads(line)
                if entry.get("action") == "add":
                    files.append(entry["path"].removeprefix("file://"))
    return sorted(set(files))


def _committed(sink: Path):
    """The rows of the committed files, as pandas; uncommitted files are not read."""
    files = _committed_files(sink)
    assert files, f"nothing committed in {sink}"
    return pq.ParquetDataset(files).read().to_pandas()


def _wait(what: str, done, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until ``done()``; fail with the scorer's log when it exits or the time is up."""
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"stream-score exited ({proc.returncode}) before {what}:\n" + \
            log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s:\n" + log.read_text()[-4000:]
        time.sleep(1)


def _committed_rows(sink: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in _committed_files(sink))


def test_stream_score_reads_kafka(pseudo_cluster, tmp_path):
    """Impressions as ``tfos-ctr generate-stream`` writes them go to a topic, part before the scorer
    starts and part while it runs; ``tfos-ctr stream-score --input kafka://...`` (as typed in a shell,
    a micro-batch a second) scores them and is stopped by its PID once they are all in: every impression
    has exactly one prediction, made by the export's version, and the malformed ones are quarantined."""
    env = cluster.client_env(pseudo_cluster)
    bootstrap = env["TFOS_KAFKA_BOOTSTRAP"]
    gen = json.loads(cli(pseudo_cluster, "tfos-ctr", "generate-stream", "--output", str(tmp_path / "gen"),
                         "--rows", "500", "--files", "1", "--rows-per-s", "1", "--malformed-fraction", "0.02",
                         "--seed", "5").stdout.strip().splitlines()[-1])
    impressions = Path(hdfs_io.resolve(str(tmp_path / "gen"))) / "impressions"
    lines = (impressions / "part-00000.tsv").read_text().splitlines()
    assert len(lines) == gen["rows"] and gen["malformed"] > 0, gen
    export = tmp_path / "export"
    _small_export(export)
    assert {Path(j).name for j in tfos_spark.spark_kafka_jars()} <= set(
        Path(j).name for j in pseudo_cluster["spark"]["defaults"]["spark.jars"].split(","))
    topic = f"impressions-{uuid.uuid4().hex[:8]}"
    pred, ckpt, log = tmp_path / "pred", tmp_path / "ckpt", tmp_path / "stream-score.log"
    quarantined = Path(f"{pred}.quarantine")
    _create_topic(bootstrap, topic)
    half = len(lines) * 3 // 5
    _produce(bootstrap, topic, lines[:half])
    argv = [str(BIN / "tfos-ctr"), "stream-score", "--export", str(export), "--input",
            f"kafka://{bootstrap}/{topic}", "--output", str(pred), "--checkpoint", str(ckpt),
            "--trigger", "1", "--max-files-per-trigger", "200", "--master", pseudo_cluster["spark"]["master"]]
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait("a first committed batch", lambda: _committed_rows(pred) > 0, proc, log)
        first = time.monotonic() - t0
        _produce(bootstrap, topic, lines[half:])          # while the query runs
        _wait("every record scored", lambda: _committed_rows(pred) + _committed_rows(quarantined)
              >= len(lines), proc, log)
        print(f"stream-score: first batch after {first:.1f}s, all {len(lines)} records after "
              f"{time.monotonic() - t0:.1f}s")
    finally:
        stop_tree(proc)
    assert proc.poll() is not None
    stream, quarantine = _committed(pred), _committed(quarantined)
    ids = [line.split("\t", 1)[0] for line in lines]
    assert stream["id"].is_unique, stream["id"][stream["id"].duplicated()].head()
    assert len(stream) == gen["well_formed"] and len(quarantine) == gen["malformed"], (
        len(stream), len(quarantine), gen)
    assert set(stream["id"]) <= set(ids)
    version = scoring.model_version(export_dir(str(export)))
    assert (stream["model_version"] == version).all(), (version, stream["model_version"].unique())
    assert stream["prediction"].between(0, 1).all()
    assert quarantine["source"].str.startswith(f"kafka:{topic}/").all(), quarantine["source"].head()
    commits = [n for n in (ckpt / "predictions" / "commits").iterdir() if n.name.isdigit()]
    assert len(commits) >= 3, sorted(n.name for n in commits)   # at most 200 records a batch
