"""Local files are private and not trusted blindly (issue #17): per-user 0700 directories, refused when
another user could have planted them, removed when the job ends; the scoring cache loads only the
bytes it downloaded itself."""
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import types

import pytest

import hdfs_io
from tfos_jobs import scoring
from tfos_jobs.config import RunConfig, TrainConfig
from tfos_jobs.executor import node as executor_node

FOREIGN_UID = 54321   # another local user (the tests chown to it when they can)


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _assert_private(path):
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode), f"{path} is not a directory"
    assert info.st_uid == os.geteuid(), f"{path} is owned by uid {info.st_uid}, not by us ({os.geteuid()})"
    assert _mode(path) == 0o700, f"{path} has mode {_mode(path):04o}, expected 0700"


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """TMPDIR (and tempfile's cached default) pointing at a fresh directory of this test."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return base


def _foreign(path):
    """Make ``path`` (recursively) belong to another user: chown when we can (root), else pretend
    with os.lstat (what the checks read)."""
    try:
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(top, name), FOREIGN_UID, FOREIGN_UID)
        os.lchown(path, FOREIGN_UID, FOREIGN_UID)
        return None
    except PermissionError:
        return str(path)


def _fake_foreign_lstat(monkeypatch, path):
    """Without the right to chown: ``os.lstat`` reports the files now under ``path`` as another user's
    (known by inode and change time: a directory made later may reuse an inode)."""
    real = os.lstat

    def ident(info):
        return info.st_dev, info.st_ino, info.st_ctime_ns

    planted = {ident(real(path))}
    for top, dirs, files in os.walk(path):
        planted |= {ident(real(os.path.join(top, name))) for name in dirs + files}

    def lstat(target, *args, **kwargs):
        info = real(target, *args, **kwargs)
        if ident(info) in planted:
            fields = list(info)
            fields[stat.ST_UID] = FOREIGN_UID
            return os.stat_result(fields)
        return info

    monkeypatch.setattr(os, "lstat", lstat)


# ------------------------------------------------------------------------------ the directories


def test_default_local_root_is_private_per_user_not_shared_tmp(tmpdir_env):
    from tfos_jobs import localdirs
    assert RunConfig().local_root != "/tmp/tfos_jobs", "local_root still defaults to the shared /tmp/tfos_jobs"
    root = localdirs.scratch_root(RunConfig().local_root)
    assert root == os.path.join(str(tmpdir_env), f"tfos-{os.geteuid()}"), \
        f"default scratch root {root} is not $TMPDIR/tfos-<uid>"
    made = localdirs.ensure_dirs(root, "run1", "chief-0")
    for path in (root, os.path.dirname(made), made):
        _assert_private(path)


def test_directories_are_0700_whatever_the_umask(tmpdir_env):
    from tfos_jobs import localdirs
    old = os.umask(0)
    try:
        made = localdirs.ensure_dirs(localdirs.user_root(), "run2")
    finally:
        os.umask(old)
    _assert_private(made)


def test_a_world_writable_precreated_root_is_refused(tmpdir_env):
    from tfos_jobs import localdirs
    planted = tmpdir_env / f"tfos-{os.geteuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.raises(localdirs.UnsafeLocalDir, match="mode is 0777"):
        localdirs.ensure_dirs(localdirs.user_root(), "run3")
    assert not (planted / "run3").exists(), "a run directory was created inside a world-writable root"


def test_a_foreign_owned_precreated_root_is_refused(tmpdir_env, monkeypatch):
    from tfos_jobs import localdirs
    planted = tmpdir_env / f"tfos-{os.geteuid()}"
    planted.mkdir(mode=0o700)
    pretend = _foreign(planted)
    if pretend:
        _fake_foreign_lstat(monkeypatch, pretend)
    with pytest.raises(localdirs.UnsafeLocalDir, match=f"owned by uid {FOREIGN_UID}"):
        localdirs.ensure_dirs(localdirs.user_root(), "run4")


def test_a_symlinked_root_is_refused(tmpdir_env, tmp_path):
    from tfos_jobs import localdirs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, tmpdir_env / f"tfos-{os.geteuid()}")
    with pytest.raises(localdirs.UnsafeLocalDir, match="symlink"):
        localdirs.ensure_dirs(localdirs.user_root(), "run5")


def test_a_user_given_root_is_created_0700_and_checked(tmp_path):
    from tfos_jobs import localdirs
    given = tmp_path / "mine" / "scratch"
    made = localdirs.ensure_dirs(str(given), "run6", user_given=True)
    _assert_private(str(given))
    _assert_private(made)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(localdirs.UnsafeLocalDir, match="writable by group or others"):
        localdirs.ensure_dirs(str(shared), "run6", user_given=True)


# ------------------------------------------------------------------------------ node_main's workdir


def _spec(**run):
    return types.SimpleNamespace(config=TrainConfig(strategy="mwms", num_workers=2, run_id="run-node", **run))


def _ctx(job_name="chief", index=0):
    return types.SimpleNamespace(job_name=job_name, task_index=index,
                                 cluster_spec={"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]})


def _fake_tf_child(monkeypatch, code, seen):
    """Run a small stand-in for ``python -m tfos_jobs.tfnode <node.pkl>``: it records what it sees of
    its directories, writes a log and exits with ``code``."""
    report = os.path.join(os.path.dirname(os.environ["TMPDIR"]), "child.json")
    monkeypatch.setenv("TFOS_TEST_CHILD_REPORT", report)   # the child inherits node_main's environment
    script = (
        "import json, os, stat, sys\n"
        "path = sys.argv[1]\n"
        "info = os.stat(os.path.dirname(path))\n"
        "json.dump({'exists': os.path.isfile(path), 'mode': stat.S_IMODE(info.st_mode), 'uid': info.st_uid},"
        " open(os.environ['TFOS_TEST_CHILD_REPORT'], 'w'))\n"
        "print('line ' * 50 + 'THE-LAST-WORDS')\n"
        f"sys.exit({code})\n")
    seen["report"] = report
    real_popen = executor_node.subprocess.Popen

    def popen(argv, **kwargs):
        assert argv[1:3] == ["-m", "tfos_jobs.tfnode"], argv
        seen["argv"] = argv
        return real_popen([sys.executable, "-c", script, argv[3]], **kwargs)

    monkeypatch.setattr(executor_node.subprocess, "Popen", popen)
    monkeypatch.setattr(executor_node, "_stop_tfos_manager", lambda: None)


@pytest.mark.parametrize("code", [0, 3], ids=["success", "failure"])
def test_node_workdir_is_private_and_removed_when_the_node_ends(tmpdir_env, monkeypatch, code):
    seen, logs = {}, []
    _fake_tf_child(monkeypatch, code, seen)
    real_tail = executor_node._tail

    def tail(path, *args):   # the log is read before the directory goes
        logs.append(real_tail(path, *args))
        return logs[-1]

    monkeypatch.setattr(executor_node, "_tail", tail)
    spec = _spec()
    if code:
        with pytest.raises(RuntimeError, match="exited with code 3") as failed:
            executor_node.node_main(spec, None, _ctx())
        assert "THE-LAST-WORDS" in str(failed.value), f"the error lost the log tail: {failed.value}"
    else:
        executor_node.node_main(spec, None, _ctx())
    node_pkl = seen["argv"][3]
    with open(seen["report"]) as handle:
        child = json.load(handle)
    assert child["exists"], f"the TF child did not find {node_pkl}"
    assert child["mode"] == 0o700 and child["uid"] == os.geteuid(), \
        f"while the TF child ran, its workdir had mode {child['mode']:04o} and uid {child['uid']}"
    workdir = os.path.dirname(node_pkl)
    assert not os.path.exists(workdir), f"node workdir {workdir} was left behind (exit code {code})"
    user_root = os.path.join(str(tmpdir_env), f"tfos-{os.geteuid()}")
    assert node_pkl.startswith(user_root + os.sep), f"node.pkl {node_pkl} is not under the private root {user_root}"
    assert "tfos-chief0-" in node_pkl, f"{node_pkl}: the node's directory lost its tfos-<role><index>- name"
    run_dir = os.path.join(user_root, "run-node")
    assert not os.path.exists(run_dir), f"the run's scratch {run_dir} was left behind: {os.listdir(run_dir)}"
    assert os.path.isdir(user_root), "the per-user root itself stays (other jobs may use it)"
    _assert_private(user_root)


def test_a_planted_local_root_stops_the_node_before_it_writes_node_pkl(tmpdir_env, monkeypatch):
    from tfos_jobs import localdirs
    planted = tmpdir_env / f"tfos-{os.geteuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    seen = {}
    _fake_tf_child(monkeypatch, 0, seen)
    with pytest.raises(localdirs.UnsafeLocalDir):
        executor_node.node_main(_spec(), None, _ctx())
    assert "argv" not in seen, "a TF process was started from a directory others can write"
    assert os.listdir(planted) == [], f"files were written into the planted root: {os.listdir(planted)}"


def test_a_ps_workers_stage_and_scratch_are_removed_but_not_another_nodes(tmpdir_env, tmp_path, monkeypatch):
    root = tmp_path / "given-root"
    spec = types.SimpleNamespace(config=TrainConfig(strategy="ps", num_workers=2, num_ps=1, run_id="run-ps",
                                                    local_root=str(root)))
    other = root / "run-ps" / "stage" / "worker-1"   # worker 1 of the same run on this host, still running
    for level in (root, root / "run-ps", root / "run-ps" / "stage", other):
        level.mkdir(mode=0o700)
        level.chmod(0o700)
    (other / "part-0.tfrecord").write_bytes(b"x")
    seen = {}
    _fake_tf_child(monkeypatch, 0, seen)
    executor_node.node_main(spec, None, _ctx("worker", 0))   # TFoS worker 0 is ps:0
    executor_node.node_main(spec, None, _ctx("worker", 1))   # TFoS worker 1 is TF worker:0
    assert "given-root" in seen["argv"][3], "the node workdir did not follow the given local_root"
    assert (other / "part-0.tfrecord").exists(), "a node removed another node's staged data"
    assert not (root / "run-ps" / "stage" / "worker-0").exists(), "the PS worker's stage dir was left behind"
    assert not (root / "run-ps" / "worker-0").exists(), "the PS worker's scratch was left behind"
    assert not (root / "run-ps" / "ps-0").exists(), "the ps task's scratch was left behind"
    assert _mode(root) == 0o700, f"the given root was created with mode {_mode(root):04o}"


# ------------------------------------------------------------------------------ the scoring cache

REAL_W, PLANTED_W = 2.0, -7.0


def _write_export(path, weight):
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(weight)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"prediction": x * self.w}

    module = Serving()
    os.makedirs(path)
    tf.saved_model.save(module, os.path.join(path, scoring.SAVED_MODEL), signatures={"serving_default": module.serve})
    with open(os.path.join(path, scoring.METRICS_FILE), "w") as handle:
        json.dump({"w": weight}, handle)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return _write_export(str(root / "real"), REAL_W), _write_export(str(root / "planted"), PLANTED_W)


@pytest.fixture
def remote(exports, monkeypatch):
    """A remote export (``hdfs://`` URI) whose download copies the real export and is counted."""
    real, _ = exports
    calls = []

    def download(uri, local_dir):
        assert uri == "hdfs://nn/models/export", uri
        calls.append(local_dir)
        shutil.copytree(real, local_dir, dirs_exist_ok=True)

    monkeypatch.setattr(hdfs_io, "download", download)
    monkeypatch.setattr(scoring, "_LOADED", {})
    return "hdfs://nn/models/export", calls


def _predict(serve):
    import tensorflow as tf
    return float(serve(x=tf.constant([1.0], tf.float32))["prediction"].numpy()[0])


def _plant(exports, key_dir, how):
    """Another user's copy of a different model at the cache path of the key, with a forged
    completion marker and manifest (hashes of the planted files, so only ownership/mode betray it)."""
    _, planted = exports
    shutil.copytree(planted, key_dir)
    open(os.path.join(key_dir, "_COMPLETE"), "w").close()
    files = {}
    for top, _, names in os.walk(key_dir):
        for name in names:
            path = os.path.join(top, name)
            files[os.path.relpath(path, key_dir)] = scoring.hashlib.sha256(open(path, "rb").read()).hexdigest()
    with open(os.path.join(key_dir, "_MANIFEST.json"), "w") as handle:
        json.dump({"export_key": "k1", "files": files}, handle)
    if how == "world-writable":
        os.chmod(key_dir, 0o777)
        return None
    if how == "foreign-owned":
        return _foreign(key_dir)
    os.remove(os.path.join(key_dir, "_MANIFEST.json"))   # "marker-only": an old-style cache entry
    return None


@pytest.mark.parametrize("how", ["foreign-owned", "world-writable", "marker-only"])
def test_scoring_cache_does_not_load_a_planted_model(exports, remote, tmp_path, monkeypatch, caplog, how):
    uri, downloads = remote
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    key_dir = str(cache / "k1")
    pretend = _plant(exports, key_dir, how)
    if pretend:
        _fake_foreign_lstat(monkeypatch, pretend)
    with caplog.at_level(logging.WARNING, logger="tfos_jobs"):
        serve = scoring.load_model(uri, "k1", str(cache))
    assert _predict(serve) == REAL_W, \
        f"the planted model ({how}) was loaded: f(1) = {_predict(serve)}, the real model gives {REAL_W}"
    assert len(downloads) == 1, f"a planted cache entry ({how}) was trusted instead of downloading: {downloads}"
    assert key_dir in caplog.text, f"no warning named the untrusted cache path {key_dir}: {caplog.text!r}"
    _assert_private(key_dir)


def test_scoring_cache_is_reused_when_verified_and_redownloaded_when_tampered(remote, tmp_path, caplog, exports):
    uri, downloads = remote
    cache = str(tmp_path / "cache")
    assert _predict(scoring.load_model(uri, "k1", cache)) == REAL_W
    assert len(downloads) == 1
    scoring._LOADED.clear()
    assert _predict(scoring.load_model(uri, "k1", cache)) == REAL_W
    assert len(downloads) == 1, "an intact, verified cache entry was downloaded again"

    # another model's graph and weights swapped in under the same names (as an attacker with write access would)
    _, planted = exports
    key_dir = os.path.join(cache, "k1")
    shutil.copytree(os.path.join(planted, scoring.SAVED_MODEL), os.path.join(key_dir, scoring.SAVED_MODEL),
                    dirs_exist_ok=True)
    scoring._LOADED.clear()
    with caplog.at_level(logging.WARNING, logger="tfos_jobs"):
        serve = scoring.load_model(uri, "k1", cache)
    assert _predict(serve) == REAL_W, f"tampered cached bytes were loaded: f(1) = {_predict(serve)}"
    assert len(downloads) == 2, "a tampered cache entry was not downloaded again"
    assert key_dir in caplog.text, f"no warning named {key_dir}: {caplog.text!r}"

    # an extra file in a verified entry is a mismatch too
    open(os.path.join(key_dir, scoring.SAVED_MODEL, "extra.pb"), "wb").close()
    scoring._LOADED.clear()
    scoring.load_model(uri, "k1", cache)
    assert len(downloads) == 3, "an extra file in the cache entry went unnoticed"
    assert not os.path.exists(os.path.join(key_dir, scoring.SAVED_MODEL, "extra.pb"))
    _assert_private(cache)
    _assert_private(key_dir)


def test_scoring_default_cache_is_under_the_private_root(remote, tmpdir_env):
    uri, downloads = remote
    assert scoring.DEFAULT_CACHE != "/tmp/tfos_scoring", "the scoring cache still defaults to the shared /tmp"
    scoring.load_model(uri, "k1")
    root = os.path.join(str(tmpdir_env), f"tfos-{os.geteuid()}")
    assert downloads and downloads[0].startswith(root + os.sep), \
        f"the default cache downloaded to {downloads} (expected under {root})"
    _assert_private(root)
    _assert_private(os.path.dirname(downloads[0]))


def test_scoring_refuses_a_cache_root_others_can_write(remote, tmp_path):
    from tfos_jobs import localdirs
    uri, downloads = remote
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(localdirs.UnsafeLocalDir):
        scoring.load_model(uri, "k1", str(cache))
    assert not downloads, "a download went into a cache directory others can write"
