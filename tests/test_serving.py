"""Online serving: `tfos-serve` as a user starts it, hit over real HTTP.

The export is the CTR job's real model (small sizes, untrained): serving does not depend on the weights,
only on the signature and the encoding; predictions are compared with the in-process model and with
Spark's batch scoring of the same raw lines.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cluster.processes import stop_tree
from tfos_jobs.ctr import schema
from tfos_jobs.encoding import arrays
from tfos_jobs.serving import requests as bodies
from tfos_jobs.serving.batcher import Batcher, Overloaded
from tfos_jobs.serving.config import BatchingConfig, ModelSource, ServerConfig, TlsConfig

BUCKETS = 500
SERVE = [sys.executable, "-m", "tfos_jobs.serving"]   # what the tfos-serve console script runs


def publish_version(base, seed):
    """A new numbered version of the CTR model under ``base`` (``base/<n>``)."""
    import tensorflow as tf
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.export import publish_export
    tf.keras.utils.set_random_seed(seed)
    model = build_model(ModelConfig(embedding_dim=2, hidden=(8,), cross_layers=1, hash_buckets=BUCKETS).validate())
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    return publish_export(str(base), model, dtypes, {}, kind="ctr-export", version="auto",
                          files={"ctr.json": {"hash_buckets": BUCKETS}})


def raw_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ints = [str(int(v)) if rng.random() > 0.2 else "" for v in rng.integers(-5, 5000, 13)]
        cats = [format(int(v), "x") if rng.random() > 0.1 else "" for v in rng.integers(0, 1 << 30, 26)]
        lines.append("\t".join(ints + cats))
    return lines


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running ``tfos-serve`` process and a small HTTP client for it."""

    def __init__(self, argv, log_path, token=None, env=None, context=None):
        self.port = free_port()
        self.token, self.context = token, context
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([*argv, "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"tfos-serve did not come up; its output:\n{self.output()[-4000:]}", pytrace=False)

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as handle:
            return handle.read()

    def call(self, method, path, body=None, headers=None, timeout=30):
        if self.context is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.context)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            sent = dict(headers or {})
            if self.token and "Authorization" not in sent:
                sent["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            ctype = response.getheader("Content-Type", "")
            return response.status, (json.loads(raw) if "json" in ctype else raw.decode()), dict(response.getheaders())
        finally:
            conn.close()

    def stop(self):
        """SIGTERM (a graceful drain), then whatever is left by PID; the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            stop_tree(self.proc)
            self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "ctr"
    publish_version(base, seed=1)
    return base


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    server = Served([*SERVE, "--model", f"ctr={exports}", "--max-request-mb", "1", "--poll-s", "0.5"], log)
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"tfos-serve exited {code} on SIGTERM:\n{server.output()[-3000:]}"


def in_process(export_dir, columns):
    import tensorflow as tf
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    return serve(**{k: tf.constant(v) for k, v in columns.items()})["prediction"].numpy()


@pytest.mark.slow
def test_status_and_metadata_speak_tf_serving(served):
    code, body, _ = served.call("GET", "/v1/models/ctr")
    assert code == 200 and body["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}], body
    code, body, _ = served.call("GET", "/v1/models/ctr/metadata")
    inputs = body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert code == 200 and set(inputs) == set(schema.FEATURES), body
    assert inputs["C1"]["dtype"] == "DT_INT64" and inputs["I1"]["dtype"] == "DT_FLOAT", inputs["C1"]
    assert served.call("GET", "/readyz")[1] == {"ready": True, "models": {"ctr": "1"}}


@pytest.mark.slow
def test_predict_rows_and_columns_equal_the_model_in_process(served, exports):
    encoded = arrays.encode(raw_lines(7), schema.encoding(BUCKETS, labeled=False)).features
    expected = in_process(exports / "1", encoded)
    instances = [{k: v[i].item() for k, v in encoded.items()} for i in range(7)]
    code, rows, _ = served.call("POST", "/v1/models/ctr:predict", {"instances": instances})
    assert code == 200 and rows["model_version"] == "1", rows
    np.testing.assert_allclose(np.array(rows["predictions"]), expected, rtol=1e-6)
    code, cols, _ = served.call("POST", "/v1/models/ctr/versions/1:predict",
                                {"inputs": {k: v.tolist() for k, v in encoded.items()}})
    assert code == 200, cols
    np.testing.assert_allclose(np.array(cols["outputs"]), expected, rtol=1e-6)
    # KServe's Open Inference Protocol v2
    tensors = [{"name": k, "shape": [7], "datatype": "INT64" if v.dtype == np.int64 else "FP32", "data": v.tolist()}
               for k, v in encoded.items()]
    code, v2, _ = served.call("POST", "/v2/models/ctr/infer", {"inputs": tensors})
    assert code == 200 and v2["model_version"] == "1" and v2["outputs"][0]["shape"] == [7, 1], v2
    np.testing.assert_allclose(np.array(v2["outputs"][0]["data"]), expected[:, 0], rtol=1e-6)
    assert served.call("GET", "/v2/models/ctr/ready")[1] == {"name": "ctr", "ready": True}
    code, bad, _ = served.call("POST", "/v2/models/ctr/infer", {"inputs": [dict(tensors[0], datatype="FP64")]})
    assert code == 400 and "datatype must be" in bad["error"], bad


@pytest.mark.slow
def test_raw_records_score_as_spark_batch_scoring_does(served, exports, local_spark):
    from tfos_jobs import scoring
    from tfos_jobs.ctr.prep import parse
    lines = raw_lines(50, seed=4)
    df = local_spark.createDataFrame([(i, line) for i, line in enumerate(lines)], "i int, value string")
    batch = scoring.score_dataframe(parse(df, BUCKETS, labeled=False, carry=("i",)), str(exports / "1"),
                                    schema.FEATURES, keep=["i"]).toPandas().sort_values("i")
    code, body, _ = served.call("POST", "/v1/models/ctr/records:predict", {"records": lines})
    assert code == 200, body
    np.testing.assert_allclose(np.array(body["predictions"])[:, 0], batch["prediction"].to_numpy(), rtol=1e-6)
    fields = [line.split("\t") for line in lines[:3]]
    code, by_fields, _ = served.call("POST", "/v1/models/ctr/records:predict", {"fields": fields})
    assert code == 200 and by_fields["predictions"] == body["predictions"][:3], by_fields


@pytest.mark.slow
@pytest.mark.parametrize("path, body, code, message", [
    ("/v1/models/ctr:predict", {"instances": [{"I1": 1.0}]}, 400, "instances[0]: missing input"),
    ("/v1/models/ctr:predict", {"inputs": {"I1": [1.0]}}, 400, "inputs: missing input"),
    ("/v1/models/ctr:predict", {"instances": []}, 400, "'instances' must be a non-empty list"),
    ("/v1/models/ctr:predict", {"instances": [1], "inputs": {}}, 400, "give either 'instances'"),
    ("/v1/models/ctr:predict", b"{not json", 400, "not JSON"),
    ("/v1/models/ctr/records:predict", {"records": ["1\t2"]}, 400,
     "records[0]: field_count: expected 39 tab-separated fields, found 2"),
    ("/v1/models/ctr/records:predict", {"records": ["x" + "\t" * 38]}, 400, "records[0]: I1: I1 is not an integer: 'x'"),
    ("/v1/models/ctr/records:predict", {"records": [7]}, 400, "records[0] must be a string"),
    ("/v1/models/nope:predict", {"instances": [1]}, 404, "model 'nope' is not served here"),
    ("/v1/models/ctr/versions/9:predict", {"instances": [1]}, 404, "version '9' is not loaded"),
    ("/v1/models/ctr:predict", b"[" + b"1," * 600_000 + b"1]", 413, "over 1048576 bytes"),
])
def test_bad_requests_get_a_clear_error_never_a_500(served, path, body, code, message):
    got, answer, _ = served.call("POST", path, body)
    assert got == code and message in answer["error"], (got, answer)


@pytest.mark.slow
def test_a_wrong_type_names_the_instance_and_input(served):
    instance = {n: 0 for n in schema.CATEGORICAL} | {n: 0.0 for n in schema.DENSE_FEATURES}
    bad = [instance, dict(instance, C3="abc")]
    code, answer, _ = served.call("POST", "/v1/models/ctr:predict", {"instances": bad})
    assert code == 400 and answer["error"].startswith("instances[1]: input 'C3' must be an integer"), answer
    code, answer, _ = served.call("POST", "/v1/models/ctr:predict", {"instances": [dict(instance, C3=1.5)]})
    assert code == 400 and "input 'C3' must be an integer, got 1.5" in answer["error"], answer


@pytest.mark.slow
def test_metrics_count_requests_and_batch_sizes(served):
    served.call("POST", "/v1/models/ctr/records:predict", {"records": raw_lines(3)})
    code, text, _ = served.call("GET", "/metrics")
    assert code == 200 and 'tfos_serve_requests_total{code="200",endpoint="records:predict",model="ctr"}' in text, text[:2000]
    assert 'tfos_serve_batch_size_count{model="ctr"}' in text and 'tfos_serve_model_version{model="ctr",version="1"} 1.0' in text


@pytest.mark.slow
def test_a_new_version_is_swapped_in_under_load_and_a_broken_one_is_not(served, exports):
    record = {"records": raw_lines(2, seed=9)}
    results, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                code, body, _ = served.call("POST", "/v1/models/ctr/records:predict", record, timeout=30)
                results.append((code, body.get("model_version") if code == 200 else body))
            except OSError as exc:
                results.append((None, repr(exc)))
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        publish_version(exports, seed=2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(v == "2" for _, v in results[-20:]):
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [r for r in results if r[0] != 200]
    versions = [v for c, v in results if c == 200]
    assert not failed and "1" in versions and versions[-1] == "2", (failed[:5], len(results), versions[-5:],
                                                                     served.output()[-2000:])
    # A version whose SavedModel is corrupt is refused; version 2 keeps serving.
    broken = exports / "3"
    shutil.copytree(exports / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    deadline = time.monotonic() + 60
    status = []
    while time.monotonic() < deadline and not any(s["version"] == "3" for s in status):
        time.sleep(0.5)
        status = served.call("GET", "/v1/models/ctr")[1]["model_version_status"]
    assert [s for s in status if s["version"] == "3"][0]["state"] == "END", status
    code, body, _ = served.call("POST", "/v1/models/ctr/records:predict", record)
    assert code == 200 and body["model_version"] == "2", body


@pytest.mark.slow
def test_beyond_loopback_a_token_is_required(tmp_path):
    exports = tmp_path / "ctr"
    publish_version(exports, seed=3)
    (exports / "2").mkdir()                  # a newest version that cannot load: version 1 serves
    (exports / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    (exports / "2" / "_SUCCESS").write_text("")
    done = subprocess.run([*SERVE, "--model", f"ctr={exports}", "--host", "0.0.0.0"], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "TFOS_SERVE_TOKEN"})
    assert done.returncode == 2 and "give a bearer token" in done.stderr, (done.returncode, done.stderr[-2000:])
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-32-characters-ok\n")
    token_file.chmod(0o644)
    done = subprocess.run([*SERVE, "--model", f"ctr={exports}", "--token-file", str(token_file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "readable by others" in done.stderr, done.stderr[-2000:]
    token_file.chmod(0o600)
    server = Served([*SERVE, "--model", f"ctr={exports}", "--token-file", str(token_file)], tmp_path / "log",
                    token="s3cret-token-of-32-characters-ok")
    try:
        code, body, _ = server.call("GET", "/v1/models/ctr")
        assert code == 200 and [(s["version"], s["state"]) for s in body["model_version_status"]] == [
            ("1", "AVAILABLE"), ("2", "END")], body
        code, body, headers = server.call("GET", "/v1/models/ctr", headers={"Authorization": "Bearer wrong"})
        assert code == 401 and headers.get("www-authenticate") == "Bearer", (code, body)
        assert server.call("POST", "/v1/models/ctr:predict", b"{", headers={"Authorization": ""})[0] == 401
    finally:
        assert server.stop() == 0
    assert "s3cret" not in server.output()


@pytest.mark.slow
@pytest.mark.slow
def test_a_registry_alias_is_followed_through_promotion_and_rollback(tmp_path):
    from tfos_jobs.registry import ModelRegistry
    base = tmp_path / "registry" / "ctr"
    publish_version(base, seed=1)
    publish_version(base, seed=2)
    done = subprocess.run([*SERVE, "--model", f"ctr={base}@champion"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "alias 'champion' is not set" in done.stderr, done.stderr[-2000:]
    registry = ModelRegistry(str(base))
    registry.promote(1)
    server = Served([*SERVE, "--model", f"ctr={base}@champion", "--poll-s", "0.3"], tmp_path / "log")

    def answered_by():
        code, body, _ = server.call("POST", "/v1/models/ctr/records:predict", {"records": raw_lines(1)})
        assert code == 200, body
        return body["model_version"]

    def wait_for(version):
        deadline = time.monotonic() + 60
        while answered_by() != version and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answered_by() == version, server.output()[-3000:]
    try:
        assert answered_by() == "1"                     # the champion, not the newest version
        registry.promote(2)
        wait_for("2")
        registry.rollback()
        wait_for("1")
    finally:
        assert server.stop() == 0, server.output()[-3000:]


@pytest.mark.slow
def test_sigterm_drains_a_request_in_flight_and_every_request_is_logged(tmp_path):
    """A batch that waits 3 s for company is in flight when SIGTERM comes: it is answered, then the
    server exits 0; the access log has one JSON line per request."""
    exports = tmp_path / "ctr"
    publish_version(exports, seed=5)
    server = Served([*SERVE, "--model", f"ctr={exports}", "--batch-timeout-ms", "3000", "--drain-s", "20"],
                    tmp_path / "log")
    answers = []
    try:
        assert server.call("GET", "/v1/models/ctr")[0] == 200
        caller = threading.Thread(target=lambda: answers.append(
            server.call("POST", "/v1/models/ctr/records:predict", {"records": raw_lines(1)})))
        caller.start()
        time.sleep(1.0)
        assert caller.is_alive(), answers     # the request waits in its batch
        server.proc.send_signal(signal.SIGTERM)
        caller.join(30)
    finally:
        code = server.stop()
    assert code == 0, server.output()[-3000:]
    assert [a[0] for a in answers] == [200] and len(answers[0][1]["predictions"]) == 1, (answers, server.output()[-3000:])
    logged = [json.loads(line) for line in server.output().splitlines() if line.startswith('{"method"')]
    assert [(e["method"], e["path"], e["code"]) for e in logged if e["path"] != "/healthz"] == [
        ("GET", "/v1/models/ctr", 200), ("POST", "/v1/models/ctr/records:predict", 200)], server.output()[-3000:]
    assert all(e["ms"] >= 0 and e["client"] == "127.0.0.1" for e in logged), logged
    assert [e["ms"] for e in logged if e["method"] == "POST"][0] >= 900, logged


def make_pki(root):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl; also a client
    certificate from another CA. Paths by name."""
    def run(*argv):
        subprocess.run(["openssl", *argv], cwd=root, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ca, extra in (("server", "ca", ["-extfile", "san.cnf"]), ("client", "ca", []),
                            ("stranger", "other-ca", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", *extra)
        (root / f"{name}.key").chmod(0o600)
    return {p.stem + p.suffix: str(p) for p in root.iterdir()}


def client_context(pki, name=None):
    context = ssl.create_default_context(cafile=pki["ca.pem"])
    if name:
        context.load_cert_chain(pki[f"{name}.pem"], pki[f"{name}.key"])
    return context


@pytest.mark.slow
def test_mutual_tls_lets_in_only_clients_with_a_certificate_of_its_ca(tmp_path):
    exports = tmp_path / "ctr"
    publish_version(exports, seed=4)
    pki = make_pki(tmp_path)
    tls = ["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"], "--tls-client-ca", pki["ca.pem"]]
    os.chmod(pki["server.key"], 0o644)
    done = subprocess.run([*SERVE, "--model", f"ctr={exports}", *tls], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--tls-key" in done.stderr and "readable by others" in done.stderr, done.stderr
    os.chmod(pki["server.key"], 0o600)
    server = Served([*SERVE, "--model", f"ctr={exports}", *tls], tmp_path / "log",
                    context=client_context(pki, "client"))
    try:
        code, body, _ = server.call("POST", "/v1/models/ctr/records:predict", {"records": raw_lines(2)})
        assert code == 200 and len(body["predictions"]) == 2, (code, body)
        announced = [line for line in server.output().splitlines() if line.startswith('{"serving"')]
        assert announced and json.loads(announced[0])["serving"].startswith("https://127.0.0.1:"), server.output()
        for refused in (client_context(pki), client_context(pki, "stranger")):
            server.context = refused
            with pytest.raises((ssl.SSLError, ConnectionError)):
                server.call("GET", "/v1/models/ctr")
    finally:
        assert server.stop() == 0, server.output()[-3000:]


@pytest.mark.slow
def test_survey_respondents_are_answered_from_their_raw_answers(local_spark, tmp_path):
    from tfos_jobs.export import publish_export
    from tfos_jobs.survey import arrays as survey_arrays
    from tfos_jobs.survey import prep, synthetic
    from tfos_jobs.survey import schema as survey_schema
    from tfos_jobs.survey.model import build_survey_model
    table, generated = synthetic.synthetic_survey(rows=300, questions=12, targets=2, seed=4)
    csv_uri = synthetic.write_csv(table, str(tmp_path / "survey.csv"))
    plan = prep.run_prep(local_spark, survey_schema.parse_spec(json.dumps(generated)), csv_uri, str(tmp_path / "prep"),
                         files=1)
    model = build_survey_model(plan, hidden=(8,), embedding_dim=2, dropout=0.0)
    publish_export(str(tmp_path / "survey"), model, prep.feature_inputs(plan), {}, version="auto",
                   files={prep.PLAN_FILE: plan})
    rows = [dict(zip(table.column_names, values)) for values in zip(*table.to_pydict().values())][:6]
    rows[1] = {k: v for k, v in rows[1].items() if k != plan["features"][0]["column"]}   # a question not asked
    server = Served([*SERVE, "--model", f"survey={tmp_path / 'survey'}"], tmp_path / "serve.log")
    try:
        code, body, _ = server.call("POST", "/v1/models/survey/records:predict", {"respondents": rows})
        assert code == 200 and len(body["predictions"]) == 6, body
        code, bad, _ = server.call("POST", "/v1/models/survey/records:predict", {"respondents": [{"q0001": [1]}]})
        assert code == 400 and "respondents[0]: the answer to 'q0001' must be text" in bad["error"], bad
    finally:
        assert server.stop() == 0, server.output()[-3000:]
    import tensorflow as tf
    serve = tf.saved_model.load(str(tmp_path / "survey" / "1")).signatures["serving_default"]
    expected = serve(**{k: tf.constant(v) for k, v in survey_arrays.encode(rows, plan).items()})
    for name, values in expected.items():
        got = np.array([p[name] for p in body["predictions"]])
        np.testing.assert_allclose(got, values.numpy(), rtol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------ units


def test_the_batcher_joins_requests_and_refuses_beyond_its_queue():
    sizes, release = [], threading.Event()

    def run(version, columns):
        release.wait(10)
        return {"y": columns["x"] * 2}

    async def scenario():
        batcher = Batcher(BatchingConfig(max_batch_size=4, batch_timeout_ms=50, batch_threads=1, max_queued=8),
                          run=run, observe=sizes.append)
        batcher.start()
        first = [asyncio.ensure_future(batcher.submit("v", {"x": np.array([i])}, 1)) for i in range(4)]
        await asyncio.sleep(0.2)          # one batch of 4 running (blocked)
        first += [asyncio.ensure_future(batcher.submit("v", {"x": np.array([i])}, 1)) for i in range(4, 12)]
        await asyncio.sleep(0.2)          # 8 more queued: the limit
        with pytest.raises(Overloaded):
            await batcher.submit("v", {"x": np.array([99])}, 1)
        release.set()
        answers = await asyncio.gather(*first)
        await batcher.stop()
        return answers
    answers = asyncio.run(scenario())
    assert [a["y"].tolist() for a in answers] == [[2 * i] for i in range(12)]
    assert sizes == [4, 4, 4], sizes


def test_a_batch_never_mixes_versions():
    seen = []

    async def scenario():
        batcher = Batcher(BatchingConfig(max_batch_size=64, batch_timeout_ms=20, batch_threads=1, max_queued=64),
                          run=lambda v, c: seen.append((v, len(c["x"]))) or {"y": c["x"]})
        batcher.start()
        await asyncio.gather(*[batcher.submit(v, {"x": np.array([1])}, 1) for v in ("a", "a", "b", "b", "a")])
        await batcher.stop()
    asyncio.run(scenario())
    assert seen == [("a", 2), ("b", 2), ("a", 1)], seen


def test_config_refuses_what_would_be_unsafe_or_meaningless():
    source = (ModelSource("ctr", "file:///x"),)
    with pytest.raises(ValueError, match="give a bearer token"):
        ServerConfig(source, host="0.0.0.0")
    assert ModelSource.parse("ctr=hdfs://nn/reg/ctr@champion") == ModelSource("ctr", "hdfs://nn/reg/ctr", "champion")
    assert ModelSource.parse("ctr=s3://b/x@y/ctr").alias == ""
    with pytest.raises(ValueError, match="alias '9x'"):
        ModelSource.parse("ctr=file:///x@9x")
    with pytest.raises(ValueError, match="--tls-key /nonexistent: no such file"):
        TlsConfig(__file__, "/nonexistent")
    with pytest.raises(ValueError, match="at least 16"):
        ServerConfig(source, token="short")
    assert ServerConfig(source, host="::1").host == "::1"
    with pytest.raises(ValueError, match="letters, digits"):
        ModelSource.parse("bad name=file:///x")
    with pytest.raises(ValueError, match="max_queued"):
        BatchingConfig(max_batch_size=64, max_queued=8)
    assert "x" * 20 not in repr(ServerConfig(source, token="x" * 20))


def test_request_bodies_become_columns_of_the_models_dtypes():
    from tfos_jobs.serving.models import TensorInfo
    inputs = {"a": TensorInfo(np.dtype("int64"), ()), "b": TensorInfo(np.dtype("float32"), ())}
    columns, rows, layout = bodies.model_columns({"instances": [{"a": 1, "b": 2}, {"a": 3, "b": 4.5}]}, inputs, 10)
    assert rows == 2 and layout == "row" and columns["a"].dtype == np.int64 and columns["b"].tolist() == [2.0, 4.5]
    with pytest.raises(bodies.BadRequest, match=r"instances\[0\]: input 'a' must be an integer, got true"):
        bodies.model_columns({"instances": [{"a": True, "b": 1}]}, inputs, 10)
    with pytest.raises(bodies.BadRequest, match="3 instances in one request; the limit is 2"):
        bodies.model_columns({"inputs": {"a": [1, 2, 3], "b": [1, 2, 3]}}, inputs, 2)
    with pytest.raises(bodies.BadRequest, match="value outside int64"):
        bodies.model_columns({"inputs": {"a": [1 << 63], "b": [1]}}, inputs, 2)
    assert bodies.predict_response({"p": np.array([[0.5]])}, "row") == {"predictions": np.array([[0.5]])}
