"""Fast checks of the pseudo-cluster package that start no service."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import cluster
from cluster.pseudo import config, jars, manager
from cluster.pseudo.errors import ClusterError
from cluster.pseudo.testing import describe


def _props(path):
    return {p.findtext("name"): p.findtext("value") for p in ET.parse(path).getroot()}


def test_conf_files_bind_loopback(tmp_path):
    lay = config.Layout(tmp_path)
    opts = config.Options(port_base=21000)
    config.write_conf(lay, opts, sys.executable)
    core = _props(lay.conf / "core-site.xml")
    hdfs = _props(lay.conf / "hdfs-site.xml")
    yarn = _props(lay.conf / "yarn-site.xml")
    assert core["fs.defaultFS"] == "hdfs://127.0.0.1:21000"
    assert hdfs["dfs.replication"] == "1"
    assert yarn["yarn.nodemanager.vmem-check-enabled"] == "false"
    assert yarn["yarn.nodemanager.pmem-check-enabled"] == "false"
    assert yarn["yarn.nodemanager.resource.memory-mb"] == "4096"
    assert yarn["yarn.scheduler.minimum-allocation-mb"] == "256"
    for props in (hdfs, yarn):
        for k, v in props.items():
            if k.endswith("address") and ":" in v:
                assert v.startswith("127.0.0.1:"), (k, v)
    defaults = (lay.spark_conf / "spark-defaults.conf").read_text()
    assert "spark.yarn.jars local:" in defaults


def test_ports_are_distinct():
    opts = config.Options(workers=config.MAX_WORKERS)
    ports = [opts.port(k) for k in config.OFFSETS]
    for i in range(opts.workers):
        ports += list(opts.worker_ports(i))
    assert len(ports) == len(set(ports))


@pytest.mark.parametrize("kw", [dict(workers=-1), dict(worker_memory="lots"),
                                dict(port_base=80), dict(bucket="No_Such")])
def test_bad_options_are_rejected(kw):
    with pytest.raises(ClusterError):
        config.Options(**kw).validate()


def test_connection_when_not_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOS_CLUSTER_HOME", str(tmp_path / "nothing"))
    with pytest.raises(ClusterError, match="not up"):
        cluster.connection()
    assert cluster.status() == []
    assert not cluster.is_up()
    assert cluster.down() == []


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="Java not found"):
        config.find_java()


def test_client_env():
    conn = {"hdfs": {"uri": "hdfs://127.0.0.1:1"}, "spark": {"master": "spark://127.0.0.1:2"},
            "s3": {"endpoint": "http://127.0.0.1:3", "bucket": "b", "access_key": "a",
                   "secret_key": "s", "region": "us-east-1"},
            "hadoop_conf_dir": "/c", "java_home": "/j", "home": "/h"}
    env = cluster.client_env(conn)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:3"
    assert env["AWS_ACCESS_KEY_ID"] == "a" and env["AWS_SECRET_ACCESS_KEY"] == "s"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["HADOOP_CONF_DIR"] == "/c" and env["JAVA_HOME"] == "/j"


def test_jar_fetch_is_idempotent():
    # The cache is filled by 'make hadoop-jars' / 'tfos-cluster fetch' (or the first 'up').
    lib = jars.fetch(quiet=True)
    assert jars.is_fetched()
    before = {p.name: p.stat().st_mtime for p in lib.glob("*.jar")}
    assert jars.fetch(quiet=True) == lib
    assert {p.name: p.stat().st_mtime for p in lib.glob("*.jar")} == before
    for a in jars.ARTIFACTS:
        assert (lib / f"{a}-{jars.HADOOP_VERSION}.jar").is_file()
    assert (jars.webapps_root() / "webapps" / "hdfs" / "index.html").is_file()


def test_cli_status_on_empty_home(tmp_path):
    env = {"TFOS_CLUSTER_HOME": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "cluster", "status", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, describe(res)
    assert json.loads(res.stdout) == [], describe(res)


def _fake_service(name, code, healthy=False, port=29990):
    return config.Service(name, "test", [sys.executable, "-c", code], {"PATH": "/usr/bin:/bin"},
                          port, [port], None, lambda: (healthy, "fake check"))


def test_up_names_the_failing_service_and_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOS_CLUSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config, "write_conf", lambda *a, **k: None)
    monkeypatch.setattr(manager, "_ensure_bucket", lambda opts: None)
    sleeper = _fake_service("sleeper", "import time; time.sleep(60)", port=29991)
    crasher = _fake_service("crasher", "import sys; print('boom'); sys.exit(3)", port=29992)
    monkeypatch.setattr(config, "build_services", lambda *a, **k: [sleeper, crasher])
    with pytest.raises(ClusterError) as e:
        cluster.up(timeout=30)
    msg = str(e.value)
    assert "crasher did not come up" in msg and "exited with code 3" in msg
    assert str(tmp_path / "home" / "logs" / "crasher.log") in msg and "boom" in msg
    assert not manager.any_alive()  # the sleeper it had started was stopped

    monkeypatch.setattr(config, "build_services", lambda *a, **k: [sleeper])
    with pytest.raises(ClusterError, match=r"sleeper did not come up: no healthy answer within 2s"):
        cluster.up(timeout=2)
    assert not manager.any_alive()


# ---------------------------------------------------------------------------------------------
# the Kafka broker's definition (no broker started)


def _kafka(tmp_path, port_base=21000):
    lay, opts = config.Layout(tmp_path / "home"), config.Options(port_base=port_base)
    config.write_conf(lay, opts, sys.executable)
    svcs = config.build_services(lay, opts, "/opt/jdk-17", sys.executable)
    return lay, opts, {s.name: s for s in svcs}["kafka"]


def test_kafka_broker_is_one_kraft_node_on_loopback(tmp_path):
    lay, opts, kafka = _kafka(tmp_path)
    assert (kafka.group, kafka.port, kafka.ports) == ("kafka", 21027, [21027, 21028])
    assert kafka.argv[0] == "/opt/jdk-17/bin/java"           # the Java the Hadoop daemons use
    assert "-Xmx256m" in kafka.argv and f"-Dtfos.cluster.home={lay.home}" in kafka.argv
    assert kafka.argv[-2:] == ["kafka.Kafka", str(lay.kafka_conf / "server.properties")]
    assert kafka.argv[kafka.argv.index("-cp") + 1] == f"{jars.kafka_lib_dir()}/*"
    props = dict(line.split("=", 1) for line in
                 (lay.kafka_conf / "server.properties").read_text().splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:21027,CONTROLLER://127.0.0.1:21028"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:21027"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:21028"
    assert props["log.dirs"] == str(lay.kafka_data) and str(lay.kafka_data).startswith(str(lay.home))
    assert props["offsets.topic.replication.factor"] == "1"
    assert (lay.kafka_conf / "log4j2.properties").is_file()
    assert f"-Dlog4j2.configurationFile={lay.kafka_conf / 'log4j2.properties'}" in kafka.argv


def test_kafka_storage_is_formatted_only_once(tmp_path):
    lay, _, kafka = _kafka(tmp_path)
    fmt = kafka.init_argv
    assert fmt[0] == "/opt/jdk-17/bin/java" and "kafka.tools.StorageTool" in fmt
    i = fmt.index("kafka.tools.StorageTool")
    assert fmt[i + 1] == "format" and fmt[fmt.index("--config") + 1] == kafka.argv[-1]
    cluster_id = fmt[fmt.index("--cluster-id") + 1]
    assert len(cluster_id) == 22 and cluster_id == config.kafka_cluster_id(lay)  # stable per home
    assert not kafka.initialized()
    lay.kafka_data.mkdir(parents=True)
    (lay.kafka_data / "meta.properties").write_text("node.id=1\n")
    assert kafka.initialized()


def test_kafka_cluster_id_never_reads_as_an_option(tmp_path):
    # CI once drew a home whose id began with '-': kafka-storage took it for a flag and refused.
    ids = [config.kafka_cluster_id(config.Layout(tmp_path / f"h{i}")) for i in range(2000)]
    starts = {i[0] for i in ids}
    assert "-" not in starts and "_" not in starts, sorted(starts)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_kafka_health_reports_a_closed_port_without_raising(tmp_path):
    _, _, kafka = _kafka(tmp_path, port_base=29700)
    ok, detail = kafka.health()
    assert not ok and "Error" in detail, detail


def test_kafka_bootstrap_in_connection_info_and_client_env(tmp_path):
    lay, opts, kafka = _kafka(tmp_path)
    conn = config.connection_info(lay, opts, "/opt/jdk-17", sys.executable, [kafka])
    assert conn["kafka"]["bootstrap"] == "127.0.0.1:21027"
    assert conn["services"]["kafka"]["port"] == 21027
    assert cluster.client_env(conn)["TFOS_KAFKA_BOOTSTRAP"] == "127.0.0.1:21027"
    del conn["kafka"]                       # a connection.json of an older cluster
    assert "TFOS_KAFKA_BOOTSTRAP" not in cluster.client_env(conn)


def test_up_runs_a_service_preparation_once_before_its_start(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOS_CLUSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config, "write_conf", lambda *a, **k: None)
    monkeypatch.setattr(manager, "_ensure_bucket", lambda opts: None)
    marker, count = tmp_path / "formatted", tmp_path / "count"
    svc = _fake_service("needs-init", f"import os, sys, time; sys.exit(3) if not os.path.exists({str(marker)!r}) "
                                      "else time.sleep(60)", healthy=True, port=29993)
    svc.init_argv = [sys.executable, "-c", f"import time; time.sleep(0.5); open({str(count)!r}, 'a').write('x');"
                                           f" open({str(marker)!r}, 'w').close()"]
    svc.initialized = marker.exists
    monkeypatch.setattr(config, "build_services", lambda *a, **k: [svc])
    try:
        cluster.up(timeout=30)
        assert count.read_text() == "x"
        cluster.down()
        cluster.up(timeout=30)              # formatted already: no second preparation
        assert count.read_text() == "x"
    finally:
        cluster.down()
    assert not manager.any_alive()

    marker.unlink()
    svc.init_argv = [sys.executable, "-c", "import sys; print('cannot format'); sys.exit(2)"]
    with pytest.raises(ClusterError) as e:
        cluster.up(timeout=30)
    assert "needs-init (preparation) did not come up" in str(e.value) and "cannot format" in str(e.value)
    assert str(tmp_path / "home" / "logs" / "needs-init-init.log") in str(e.value)
    assert not manager.any_alive()
