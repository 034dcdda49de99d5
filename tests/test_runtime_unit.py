"""Fast tests of the runtime's pieces, no Spark or TF cluster."""
import threading
import time

import pytest

from tfos_jobs.wire.control import ControlClient, ControlServer, DriverUnreachable
from tfos_jobs.executor.node import assign_role, tf_roles
from tfos_jobs.config import TrainConfig
from tfos_jobs.driver.trainer import _watch

SPEC = {"chief": ["h:1"], "worker": ["h:2", "h:3", "h:4"]}


def test_ps_roles_take_the_first_tfos_workers():
    assert tf_roles("ps", 1, SPEC) == {"chief": ["h:1"], "ps": ["h:2"], "worker": ["h:3", "h:4"]}
    assert [assign_role("ps", 1, "worker", i) for i in range(3)] == [("ps", 0), ("worker", 0), ("worker", 1)]
    assert assign_role("ps", 1, "chief", 0) == ("chief", 0)


def test_mwms_roles_keep_the_tfos_template():
    assert tf_roles("mwms", 0, SPEC) == SPEC
    assert assign_role("mwms", 0, "worker", 2) == ("worker", 2)


@pytest.mark.parametrize("options, message", [
    ({"strategy": "horovod"}, "strategy"),
    ({"strategy": "ps", "num_ps": 0}, "num_ps"),
    ({"num_workers": 0}, "num_workers"),
    ({"stall_timeout_s": 0}, "stall_timeout_s"),
])
def test_bad_config_is_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options).validate()


def test_node_counts():
    assert TrainConfig(strategy="mwms", num_workers=2).num_nodes == 2
    assert TrainConfig(strategy="ps", num_workers=2, num_ps=1).num_nodes == 4


def test_control_round_trip_and_stop():
    with ControlServer() as server:
        server.expect_ready(1)
        client = ControlClient(server.address, server.secret, "worker:0")
        assert client.send("poll") == {"stop": False, "all_ready": False}
        client.send("ready")
        assert client.send("poll")["all_ready"] is True
        client.send("progress", step=3, loss=0.5)
        events = [server.events.get(timeout=1) for _ in range(2)]
        assert [e["op"] for e in events] == ["ready", "progress"] and events[1]["step"] == 3
        threading.Timer(0.3, server.request_stop).start()
        assert client.wait_for("stop", poll_s=0.05, deadline_s=5) is True


def test_control_rejects_a_wrong_secret():
    with ControlServer() as server:
        with pytest.raises(DriverUnreachable):
            ControlClient(server.address, "ab" * 32, "worker:0").send("poll")
        assert server.events.empty()


def test_node_gives_up_on_a_vanished_driver():
    with ControlServer() as server:
        address, secret = server.address, server.secret
    client = ControlClient(address, secret, "ps:0")
    started = time.monotonic()
    assert client.wait_for("stop", poll_s=0.05, orphan_timeout_s=0.5) is False
    assert time.monotonic() - started < 5


def test_messages_of_an_earlier_attempt_are_dropped_and_told_to_stop():
    with ControlServer() as server:
        server.reset(attempt=2)
        stale = ControlClient(server.address, server.secret, "chief:0", attempt=1)
        assert stale.send("failed", error="peer lost", peer_lost=True)["stop"] is True
        current = ControlClient(server.address, server.secret, "chief:0", attempt=2)
        assert current.send("poll")["stop"] is False
        current.send("progress", step=1, loss=0.1)
        assert server.events.get(timeout=1)["op"] == "progress"
        assert server.events.empty()


class _Spec:
    def __init__(self, **options):
        self.config = TrainConfig(**options)


def _watch_events(events, stall_timeout_s, **kw):
    """Run the driver's watch loop on ``events`` sent by a real control client; returns its outcome."""
    with ControlServer() as server:
        client = ControlClient(server.address, server.secret, "chief:0")
        for op, fields in events:
            client.send(op, **fields)
        timings = {"reserved": time.monotonic()}
        return _watch(_Spec(stall_timeout_s=stall_timeout_s, **kw), server, {}, timings)


def test_training_that_stops_reporting_is_a_lost_cluster_not_a_hang():
    begun = time.monotonic()
    outcome = _watch_events([("progress", {"step": 40, "loss": 0.5})], stall_timeout_s=0.5)
    assert "after step 40" in outcome["lost"] and "stuck" in outcome["lost"]
    assert time.monotonic() - begun < 5


def test_evaluation_after_the_last_step_is_not_a_stall():
    status = {}
    with ControlServer() as server:
        client = ControlClient(server.address, server.secret, "chief:0")
        client.send("progress", step=10, loss=0.5)
        client.send("finishing")
        threading.Timer(1.5, lambda: (client.send("done", result={"steps": 10}), status.update(finished=True))).start()
        outcome = _watch(_Spec(stall_timeout_s=0.5), server, status, {"reserved": time.monotonic()})
    assert outcome == {"result": {"steps": 10, "nodes": ["chief:0"]}}


def test_a_slow_first_step_is_not_failed_by_the_start_timeout():
    """The start watch ends when every node has started its TF process, not at the first progress report."""
    status = {}
    with ControlServer() as server:
        client = ControlClient(server.address, server.secret, "chief:0")
        client.send("started")

        def slow_first_steps():
            client.send("progress", step=1, loss=0.5)
            client.send("finishing")
            client.send("done", result={"steps": 1})
            status.update(finished=True)
        threading.Timer(1.5, slow_first_steps).start()
        outcome = _watch(_Spec(num_workers=1, start_timeout_s=0.5, stall_timeout_s=5), server, status,
                         {"reserved": time.monotonic()})
    assert outcome == {"result": {"steps": 1, "nodes": ["chief:0"]}}, outcome


def test_a_node_that_never_starts_times_out_naming_who_started():
    with ControlServer() as server:
        ControlClient(server.address, server.secret, "chief:0").send("started")
        with pytest.raises(TimeoutError, match=r"1 of 2 TF node\(s\) did not start within 0 s \(started: \['chief:0'\]\)"):
            _watch(_Spec(num_workers=2, start_timeout_s=0.3), server, {}, {"reserved": time.monotonic()})


def test_a_stall_before_the_first_step_loses_the_attempt():
    outcome = _watch_events([("started", {})], stall_timeout_s=0.5, num_workers=1)
    assert "before the first step" in outcome["lost"], outcome


def test_an_export_that_never_ends_is_bounded():
    with ControlServer() as server:
        client = ControlClient(server.address, server.secret, "chief:0")
        for op in ("started", "finishing"):
            client.send(op)
        with pytest.raises(TimeoutError, match="evaluation and export did not end within 0 s"):
            _watch(_Spec(num_workers=1, finish_timeout_s=0.4), server, {}, {"reserved": time.monotonic()})
