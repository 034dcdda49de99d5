"""Attacks on the runtime's network ends, each against the real server classes the driver and the TF
nodes run (and one against a real training job): every test here fails on the code before issue #17."""
import contextlib
import json
import logging
import os
import pickle
import socket
import struct
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import hdfs_io
from tfos_jobs import compat
from tfos_jobs.driver import trainer
from tfos_jobs.driver.reservation import MAX_MESSAGE, ReservationServer
from tfos_jobs.task import ParquetSource
from tfos_jobs.tfnode.feed import FeedReceiver
from tfos_jobs.toy import CATEGORICAL, NUMERIC, DemoCTRTask, synthetic_ctr
from tfos_jobs.wire import auth
from tfos_jobs.wire.control import ControlClient, ControlServer, DriverUnreachable
from tfos_jobs.wire.feed import FeedSpec, request

MARKER = "/tmp/tfos-security-test-pwned-%d" % os.getpid()


class RunsACommand:
    """A pickle that runs a shell command when loaded by an unrestricted unpickler."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _connect(address):
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _framed(obj):
    data = pickle.dumps(obj)
    return struct.pack(">I", len(data)) + data


def _read_framed(sock):
    prefix = sock.recv(4)
    if len(prefix) < 4:
        return None
    (size,) = struct.unpack(">I", prefix)
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return pickle.loads(data)   # test side: the reply comes from our own server


def _node_meta(executor_id, job, index, host="127.0.0.1"):
    return {"executor_id": executor_id, "host": host, "job_name": job, "task_index": index, "port": 4000 + executor_id,
            "tb_pid": 0, "tb_port": 0, "addr": "/tmp/mgr", "authkey": b"secret-manager-key"}


@contextlib.contextmanager
def formation(hosts=("127.0.0.1",)):
    claims = {0: 4000, 1: 4001}     # the ports the nodes claimed over the control channel
    server = ReservationServer("127.0.0.1", {"chief": [0], "worker": [1]}, lambda: set(hosts), claims.get,
                               deadline_s=30).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ cluster formation (TFoS protocol)

def test_malicious_pickle_to_cluster_formation_runs_nothing():
    with contextlib.suppress(FileNotFoundError):
        os.remove(MARKER)
    with formation() as server, _connect(server.address) as sock:
        sock.sendall(_framed({"type": "REG", "data": RunsACommand()}))
        reply = sock.recv(100)
        time.sleep(0.5)
        assert not os.path.exists(MARKER), "the pickle ran a command on the driver"
        assert reply == b"", f"the connection should be dropped, got {reply!r}"
        assert server.rejected == 1 and server.nodes() == []


def test_cluster_formation_binds_the_given_address_not_every_interface():
    with formation() as server:
        assert server.address.startswith("127.0.0.1:"), server.address


def test_tfos_client_forms_the_cluster_and_no_authkey_leaves_the_driver():
    from tensorflowonspark import reservation
    with formation() as server:
        client = reservation.Client(server.host_port)     # TFoS's own client, as on the executors
        assert client.get_reservations() == []
        assert client.register(_node_meta(0, "chief", 0)) == "OK"
        assert client.register(_node_meta(1, "worker", 0)) == "OK"
        info = client.await_reservations()
        client.close()
        assert [n["executor_id"] for n in info] == [0, 1], info
        assert all("authkey" not in n for n in info), f"QINFO handed out manager authkeys: {info}"


@pytest.mark.parametrize("meta, why", [
    (_node_meta(0, "chief", 0, host="10.9.9.9"), None),        # host field may differ (TFoS's own guess)
    (_node_meta(5, "worker", 4), "not a node of this cluster"),
    (_node_meta(1, "chief", 0), "not a node of this cluster"),
    (dict(_node_meta(0, "chief", 0), port="80"), "'port' is str"),
    (dict(_node_meta(0, "chief", 0), port=4999), "not the one its node claimed"),   # a racing impostor
])
def test_registrations_are_checked_against_the_cluster_template(meta, why, caplog):
    from tensorflowonspark import reservation
    with formation() as server:
        client = reservation.Client(server.host_port)
        reply = client.register(meta)
        client.close()
        if why is None:
            assert reply == "OK" and len(server.nodes()) == 1
        else:
            assert reply == "ERR" and server.nodes() == [], (reply, server.nodes())
            assert why in caplog.text, caplog.text


def test_registration_from_a_host_without_executors_is_refused_and_stop_is_ignored(caplog):
    from tensorflowonspark import reservation
    with formation(hosts={"10.1.2.3"}) as server:
        client = reservation.Client(server.host_port)
        assert client.register(_node_meta(0, "chief", 0)) == "ERR"
        assert client.request_stop() == "ERR"
        assert client._request("QUERY") is False
        client.close()
        assert server.nodes() == []
    assert "runs none of this application's executors" in caplog.text, caplog.text


def test_a_second_registration_of_a_node_is_refused():
    from tensorflowonspark import reservation
    with formation() as server:
        client = reservation.Client(server.host_port)
        assert client.register(_node_meta(0, "chief", 0)) == "OK"
        assert client.register(dict(_node_meta(0, "chief", 0), port=6666)) == "ERR"
        client.close()
        assert [n["port"] for n in server.nodes()] == [4000], server.nodes()


def test_a_4_gib_length_prefix_is_refused_before_reading():
    with formation() as server, _connect(server.address) as sock:
        sock.sendall(struct.pack(">I", 0xFFFFFFF0) + b"x" * 1000)
        sock.settimeout(5)
        assert sock.recv(10) == b"", "the server should close at once"
        assert server.rejected == 1
        assert MAX_MESSAGE < 1 << 20


def test_a_half_sent_message_does_not_block_other_clients():
    from tensorflowonspark import reservation
    with formation() as server, _connect(server.address) as stuck:
        stuck.sendall(struct.pack(">I", 100) + b"abc")       # and never the rest
        client = reservation.Client(server.host_port)
        start = time.monotonic()
        assert client.register(_node_meta(0, "chief", 0)) == "OK"
        client.close()
        assert time.monotonic() - start < 2


# ------------------------------------------------------------------------------------------ control channel

def test_forged_done_failed_and_poll_without_the_secret_are_rejected():
    with ControlServer() as server:
        server.reset(1)
        for op, fields in (("done", {"result": {"nodes": ["chief:0"]}}), ("failed", {"error": "x", "peer_lost": False}),
                           ("poll", {})):
            with pytest.raises(DriverUnreachable):
                ControlClient(server.address, "ab" * 32, "chief:0", 1).send(op, **fields)
        # the old protocol's form: a token in a plain JSON line
        with _connect(server.address) as sock:
            sock.recv(200)
            sock.sendall(json.dumps({"op": "done", "node": "chief:0", "attempt": 1, "token": "guess",
                                     "result": {}}).encode() + b"\n")
            assert sock.recv(200) == b""
        assert server.events.empty(), "a forged event reached the driver"
        assert server.rejected == 4


def test_a_sniffed_request_replayed_on_a_new_connection_is_rejected():
    with ControlServer() as server:
        secret = server.secret
        with _connect(server.address) as sock:                    # the genuine node, observed on the wire
            hello = sock.makefile("rb").readline()
            line, _, _ = auth.request_line(secret, hello, {"op": "done", "node": "chief:0", "attempt": None,
                                                           "result": {}})
            sock.sendall(line)
            assert sock.makefile("rb").readline()
        assert server.events.get(timeout=2)["op"] == "done"
        with _connect(server.address) as sock:                    # the observer replays it
            sock.makefile("rb").readline()
            sock.sendall(line)
            assert sock.recv(100) == b""
        assert server.events.empty(), "the replayed message was accepted"


def test_a_forged_reply_is_not_believed_by_the_node():
    """A fake driver (no secret) answering ``stop``: the node's client refuses the reply."""
    def fake_driver(listener):
        conn, _ = listener.accept()
        with conn:
            conn.sendall(auth.hello_line("00" * 16))
            conn.makefile("rb").readline()
            conn.sendall(json.dumps({"body": json.dumps({"stop": True}), "mac": "0" * 64}).encode() + b"\n")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=fake_driver, args=(listener,), daemon=True).start()
        client = ControlClient("127.0.0.1:%d" % listener.getsockname()[1], auth.new_secret(), "ps:0")
        with pytest.raises(DriverUnreachable, match="reply MAC does not match"):
            client.send("poll")


def _rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_a_100_mb_line_is_cut_off_at_the_bound_without_growing_the_driver():
    with ControlServer() as server:
        before = _rss_mb()
        chunk = b"x" * (1 << 20)
        sent = 0
        with _connect(server.address) as sock:
            with contextlib.suppress(OSError):
                for _ in range(100):
                    sock.sendall(chunk)
                    sent += len(chunk)
        grew = _rss_mb() - before
        assert sent < 100 * len(chunk), "the server kept reading past its bound"
        assert grew < 20, f"the driver grew by {grew:.0f} MB reading an unbounded line (sent {sent >> 20} MB)"
        assert server.rejected == 1 and server.events.empty()


@pytest.mark.parametrize("msg, why", [
    ({"op": "shutdown", "node": "chief:0", "attempt": None}, "unknown op"),
    ({"op": "done", "node": "chief:0", "attempt": None}, "'result' is missing"),
    ({"op": "progress", "node": "chief:0", "attempt": None, "step": "7", "loss": 1.0}, "'step' is str"),
    ({"op": "failed", "node": ["chief:0"], "attempt": None, "error": "x", "peer_lost": False}, "'node' is list"),
])
def test_malformed_messages_are_rejected_not_crashing_the_handler(msg, why):
    with ControlServer() as server:
        reply = auth.request(server.address, server.secret, msg)
        assert why in reply.get("error", ""), reply
        assert ControlClient(server.address, server.secret, "chief:0").send("poll") == {"stop": False,
                                                                                       "all_ready": False}
        assert server.events.empty()


def test_a_json_list_is_rejected():
    with ControlServer() as server, _connect(server.address) as sock:
        rfile = sock.makefile("rb")
        hello = json.loads(rfile.readline())
        body = "[1, 2]"
        mac = auth._mac(server.secret, b"request", hello["nonce"].encode(), b"c" * 32, body.encode())
        sock.sendall(json.dumps({"nonce": "c" * 32, "body": body, "mac": mac}).encode() + b"\n")
        assert rfile.readline() == b""
        assert server.rejected == 1


def test_tfos_authkey_log_line_is_redacted(caplog):
    compat.hide_authkeys()
    logger = logging.getLogger("tensorflowonspark.TFSparkNode")
    with caplog.at_level(logging.INFO, logger="tensorflowonspark.TFSparkNode"):
        logger.info("TFSparkNode.reserve: {0}".format(_node_meta(0, "chief", 0)))
    assert "secret-manager-key" not in caplog.text, caplog.text
    assert "'authkey': '<redacted>'" in caplog.text, caplog.text


# ---------------------------------------------------------------------------------------------------- the feed

@contextlib.contextmanager
def feed_receiver():
    secret = auth.new_secret()
    with auth.RequestServer("127.0.0.1", secret, lambda msg: {"ok": True}, name="coordinator") as coordinator:
        spec = FeedSpec(features=("x",), labels=("label",), dtypes={"x": "float32", "label": "float32"},
                        num_workers=1, batch_size=10, coordinator=coordinator.address, secret=secret,
                        max_batches_in_flight=64, stall_timeout_s=20)
        recv = FeedReceiver(spec, 0, host="127.0.0.1").register()
        try:
            yield spec, recv
        finally:
            recv.close()


def _rows(n):
    x = np.arange(n, dtype=np.float32)
    return pa.record_batch({"x": x, "label": x % 2})


def test_a_feed_sender_without_the_secret_is_refused():
    from tfos_jobs.executor.feed import _Link
    with feed_receiver() as (spec, recv):
        with pytest.raises(ConnectionError):
            link = _Link(0, recv.address, auth.new_secret(), 0, 0, spec.arrow_schema(), 5)
            link.write(_rows(10))
            link.end()
            link.ack()
        end = request(recv.address, spec.secret, {"kind": "end", "epoch": 0, "expected": {}})
        assert end == {"ok": True, "rows": 0}, end
        assert recv.rejected == 1


def test_a_forged_stream_is_detected_by_the_exactly_once_check():
    """A sender that knows the header but not the secret cannot make its stream count: here it rides a
    genuine handshake and then swaps the stream, so the trailer's MAC cannot match."""
    with feed_receiver() as (spec, recv):
        with auth.Session(recv.address, spec.secret, timeout=10) as session:
            assert session.request({"kind": "data", "epoch": 0, "partition": 3}) == {"ok": True}
            wfile = session.sock.makefile("wb")
            writer = pa.ipc.new_stream(wfile, spec.arrow_schema())   # bytes outside the MAC
            writer.write_batch(_rows(10))
            writer.close()
            wfile.write(auth.json_line({"rows": 10, "mac": "0" * 64}))
            wfile.flush()
            session.sock.settimeout(3)
            assert session.rfile.readline() == b"", "the receiver acknowledged a forged stream"
        end = request(recv.address, spec.secret, {"kind": "end", "epoch": 0, "expected": {"3": 10}})
        assert "exactly-once check failed" in end.get("error", "") and "incomplete [3]" in end["error"], end


def test_a_duplicate_claim_cannot_replace_a_partition_without_the_secret():
    """The old ``{"dup": n}`` hole: a forged sender went first so that the genuine one was told "dup"."""
    from tfos_jobs.executor.feed import _Link
    with feed_receiver() as (spec, recv):
        with contextlib.suppress(ConnectionError):
            _Link(0, recv.address, auth.new_secret(), 0, 0, spec.arrow_schema(), 5)
        link = _Link(0, recv.address, spec.secret, 0, 0, spec.arrow_schema(), 5)
        assert link.dup is None, "the genuine sender was told its partition was delivered already"
        link.write(_rows(10))
        link.end()
        assert link.ack() == 10
        link.close()


# ---------------------------------------------------------------------------------------- a real training job

@pytest.mark.slow
def test_500_idle_connections_do_not_stop_a_real_training_job(local_spark, tmp_path, monkeypatch):
    """While the job runs, an attacker holds 500 idle connections to the control port and 500 to the
    cluster-formation port; training still finishes."""
    held = []

    def flood(address, count=500):
        for _ in range(count):
            with contextlib.suppress(OSError):
                held.append(_connect(address))

    class FloodedControl(ControlServer):
        def __enter__(self):
            server = super().__enter__()
            flood(self.address)
            return server

    class FloodedFormation(ReservationServer):
        def start(self):
            server = super().start()
            flood(self.address)
            return server
    monkeypatch.setattr(trainer, "ControlServer", FloodedControl)
    monkeypatch.setattr(trainer, "ReservationServer", FloodedFormation)
    root, valid = str(tmp_path / "data"), str(tmp_path / "valid")
    hdfs_io.write_parquet(synthetic_ctr(4_000, seed=1), root, rows_per_file=2_000)
    hdfs_io.write_parquet(synthetic_ctr(500, seed=2), valid)
    try:
        result = trainer.fit(local_spark.sparkContext, DemoCTRTask(valid), ParquetSource(root, NUMERIC + CATEGORICAL, "label"),
                             strategy="mwms", num_workers=2, model_dir=str(tmp_path / "model"), batch_size=64,
                             steps=20, start_timeout_s=120)
    finally:
        for sock in held:
            sock.close()
    assert len(held) >= 900, f"the attack opened only {len(held)} connections"
    assert result.steps == 20 and sorted(result.nodes) == ["chief:0", "worker:0"], result
    print("timings with 1000 idle connections:", result.timings)
