"""The model registry on storage (local disk here; HDFS and S3 in test_registry_cluster.py): version
numbers taken once under racing writers, aliases with rollback, lineage, retention, and `tfos-registry`
as a user types it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hdfs_io
from tfos_jobs.registry import CHAMPION, ModelRegistry, RegistryError

BIN = Path(sys.executable).parent


def publish_fake(registry: ModelRegistry, tmp_path: Path, tag: str, metrics: dict | None = None) -> int:
    """A version as `train --version auto` makes one, with a stand-in for the SavedModel."""
    local = tmp_path / f"export-{tag}"
    local.mkdir(parents=True)
    (local / "saved_model.pb").write_text(tag)
    number = registry.allocate()
    hdfs_io.publish_once(str(local), registry.version_uri(number), last=("saved_model.pb",))
    registry.register(number, lineage={"tag": tag}, metrics=metrics or {"auc": 0.5})
    return number


def test_versions_aliases_and_rollback(tmp_path):
    registry = ModelRegistry(f"file://{tmp_path}/reg/ctr", by="tester")
    assert [publish_fake(registry, tmp_path, t) for t in "abc"] == [1, 2, 3]
    state = registry.state()
    assert state.ready() == [1, 2, 3] and state.versions[2]["lineage"] == {"tag": "b"}, state
    with pytest.raises(RegistryError, match="alias 'champion' is not set"):
        registry.resolve(CHAMPION)
    registry.promote(1, reason="first")
    registry.promote(2)
    event = registry.promote("latest")
    assert (event["version"], event["previous"], event["by"]) == (3, 2, "tester"), event
    registry.promote(CHAMPION, alias="stable")             # an alias may name another alias's version
    assert registry.state().current_aliases() == {"champion": 3, "stable": 3}
    assert registry.rollback(reason="bad")["version"] == 2
    assert registry.rollback()["version"] == 1
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback()
    with pytest.raises(RegistryError, match="version 9 is not a registered, ready version"):
        registry.promote(9)
    with pytest.raises(RegistryError, match="alias 'bad name'"):
        registry.promote(1, alias="bad name")
    ops = [(e["seq"], e["op"]) for e in registry.history()]
    assert ops[:6] == [(1, "allocate"), (2, "register"), (3, "allocate"), (4, "register"), (5, "allocate"),
                       (6, "register")] and len(ops) == 12, ops
    pointer = json.loads((tmp_path / "reg/ctr/_registry/state.json").read_text())
    assert pointer["seq"] == 12 and pointer["aliases"] == {"champion": 1, "stable": 3}, pointer


def test_racing_writers_never_share_a_number_or_an_event(tmp_path):
    registry_uri = f"file://{tmp_path}/reg/ctr"
    taken, errors = [], []

    def take():
        try:
            registry = ModelRegistry(registry_uri)
            for _ in range(5):
                taken.append(registry.allocate())
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(taken) == list(range(1, 41)), (errors, sorted(taken))
    events = sorted(os.listdir(tmp_path / "reg/ctr/_registry/events"))
    assert events == [f"{n:010d}.json" for n in range(1, 41)], events     # no gap, no stray temporary file


def test_readers_catch_up_past_a_stale_pointer(tmp_path):
    registry = ModelRegistry(f"file://{tmp_path}/reg/ctr")
    publish_fake(registry, tmp_path, "a")
    stale = (tmp_path / "reg/ctr/_registry/state.json").read_text()
    publish_fake(registry, tmp_path, "b")
    registry.promote(2)
    (tmp_path / "reg/ctr/_registry/state.json").write_text(stale)    # a writer died before its pointer
    assert registry.state().current_aliases() == {"champion": 2} and registry.state().seq == 5


def test_a_registry_adopts_versions_published_before_it(tmp_path):
    base = tmp_path / "reg/ctr"
    for n in (1, 2):
        (base / str(n)).mkdir(parents=True)
        (base / str(n) / "_SUCCESS").write_text("")
    (base / "3").mkdir()                                   # a crashed version: never ready, never reused
    registry = ModelRegistry(str(base))
    assert registry.allocate() == 4
    state = registry.state()
    assert state.ready() == [1, 2] and state.versions[4]["state"] == "allocated", state
    with pytest.raises(RegistryError, match="not a complete export"):
        registry.register(4, lineage={}, metrics={})


def test_retention_keeps_the_last_the_aliased_and_the_rollback_targets(tmp_path):
    registry = ModelRegistry(f"file://{tmp_path}/reg/ctr")
    for tag in "abcdef":
        publish_fake(registry, tmp_path, tag)
    registry.promote(1)
    registry.promote(2)
    registry.promote(3, alias="challenger")
    assert registry.retention(2) == [4]
    registry.unalias("challenger")
    assert registry.retention(2) == [3, 4]
    assert registry.retain(2) == [3, 4]
    assert sorted(os.listdir(tmp_path / "reg/ctr")) == ["1", "2", "5", "6", "_registry"]
    assert registry.rollback()["version"] == 1              # the rollback target was kept
    with pytest.raises(RegistryError, match="is not a registered, ready version"):
        registry.promote(3)
    assert registry.retain(2) == [2]                        # 1 is champion now, with no rollback target left


def test_publish_export_registers_the_version_with_its_lineage(tmp_path):
    import keras
    from tfos_jobs.export import publish_export, read_export_file
    inputs = {"x": keras.Input(shape=(), name="x")}
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Reshape((1,))(inputs["x"])))
    base = str(tmp_path / "reg" / "toy")
    uri = publish_export(base, model, {"x": "float32"}, {"auc": 0.7}, version="auto",
                         lineage={"data": {"prep": "hdfs://nn/prep"}, "training": {"loop": {"epochs": 2}}})
    assert uri == os.path.join(base, "1")
    record = ModelRegistry(base).state().versions[1]
    assert record["state"] == "ready" and record["metrics"] == {"auc": 0.7}, record
    assert record["lineage"]["data"] == {"prep": "hdfs://nn/prep"} and "tfos_jobs" in record["lineage"]["code"]
    assert read_export_file(uri, "lineage.json") == record["lineage"]


def registry_cli(*argv, ok=True):
    done = subprocess.run([str(BIN / "tfos-registry"), *argv], capture_output=True, text=True, timeout=120)
    shown = f"tfos-registry {' '.join(argv)} -> {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert (done.returncode == 0) == ok, shown
    return (json.loads(done.stdout) if ok else done.stderr), shown


def test_the_command_line(tmp_path):
    root = tmp_path / "reg"
    registry = ModelRegistry(str(root / "ctr"))
    for tag in "abc":
        publish_fake(registry, tmp_path, tag, metrics={"auc": 0.6 + 0.1 * "abc".index(tag)})
    (root / "not-a-model").mkdir()
    promoted, shown = registry_cli("promote", str(root / "ctr"), "2", "--reason", "better auc")
    assert promoted["op"] == "alias" and promoted["version"] == 2 and promoted["reason"] == "better auc", shown
    registry_cli("promote", str(root / "ctr"), "latest")
    listed, shown = registry_cli("list", str(root))
    assert listed["models"] == {"ctr": {"uri": str(root / "ctr"), "aliases": {"champion": 3}, "latest": 3,
                                        "ready": 3}}, shown
    back, shown = registry_cli("rollback", str(root / "ctr"))
    assert back["version"] == 2 and back["rollback"] is True, shown
    details, shown = registry_cli("show", str(root / "ctr"), "--history")
    assert details["aliases"] == {"champion": 2} and details["versions"]["3"]["metrics"] == {"auc": 0.8}, shown
    assert [e["op"] for e in details["history"]][-3:] == ["alias", "alias", "alias"], shown
    dry, shown = registry_cli("retain", str(root / "ctr"), "--keep-last", "1")
    assert dry == {"model": str(root / "ctr"), "would_delete": [1], "apply": False}, shown
    assert (root / "ctr" / "1").exists()
    done, shown = registry_cli("retain", str(root / "ctr"), "--keep-last", "1", "--apply")
    assert done["deleted"] == [1] and not (root / "ctr" / "1").exists(), shown
    error, shown = registry_cli("promote", str(root / "ctr"), "7", ok=False)
    assert error.count("\n") == 1 and "version 7 is not a registered, ready version" in error, shown
    error, shown = registry_cli("show", str(root / "not-a-model"), ok=False)
    assert "is not a registered model" in error, shown
