"""Online serving against its baselines, in one run (not a test; the last line is one JSON object).

Four ways to answer "predict one instance" with the CTR job's DCN at the job's default sizes
(untrained: the cost does not depend on the weights), each a separate process on this machine:
* ``ours``: ``tfos-serve`` (micro-batching, defaults), TF Serving's ``:predict`` with one instance;
* ``naive``: the same stack (Starlette on uvicorn, the same request parsing and model loading), the
  model called once per request on a thread;
* ``ceiling``: the same stack answering a constant after parsing the request: the HTTP ceiling;
* ``limit``: no HTTP: the model called in-process on batches of 64 instances (instances/s).
The load comes from one asyncio client process with ``c`` keep-alive connections, each sending its
next request when the last answer arrived, for ``--seconds`` per point, after a warm-up.
``swap_failed_requests``: requests that failed while a new version was published and swapped in
under load (concurrency 8). ``batch_sizes``: the instances per model call ``ours`` formed at each
concurrency (from its ``/metrics``). ``batch_timeout_0``: ``ours`` again with ``--batch-timeout-ms 0``
(a batch takes what is queued and never waits). Usage: python benchmarks/serving.py [--seconds 8]
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONCURRENCY = (1, 8, 64)
BUCKETS = 10_000


def publish(base, seed):
    import tensorflow as tf
    from tfos_jobs.ctr import schema
    from tfos_jobs.ctr.model import ModelConfig, build_model
    from tfos_jobs.export import publish_export
    tf.keras.utils.set_random_seed(seed)
    model = build_model(ModelConfig(hash_buckets=BUCKETS).validate())
    dtypes = {n: ("int64" if n in schema.CATEGORICAL else "float32") for n in schema.FEATURES}
    return publish_export(base, model, dtypes, {}, kind="ctr-export", version="auto",
                          files={"ctr.json": {"hash_buckets": BUCKETS}})


def one_instance():
    from tfos_jobs.ctr import schema
    from tfos_jobs.encoding import arrays
    rng = np.random.default_rng(0)
    line = "\t".join([str(v) for v in rng.integers(0, 500, 13)] + [format(int(v), "x") for v in rng.integers(0, 1 << 30, 26)])
    features = arrays.encode([line], schema.encoding(BUCKETS, labeled=False)).features
    return {name: values[0].item() for name, values in features.items()}


# ------------------------------------------------------------------- the two baseline servers


def baseline_app(kind, export_dir):
    """``naive`` or ``ceiling``: the same stack and request parsing as tfos-serve, no batching."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from tfos_jobs.serving import requests as bodies
    from tfos_jobs.serving.models import load_version
    version = load_version(export_dir, "")

    async def predict(request: Request):
        try:
            columns, rows, layout = bodies.model_columns(bodies.parse_json(await request.body()), version.inputs, 10_000)
        except bodies.BadRequest as exc:
            return Response(bodies.dumps({"error": str(exc)}), status_code=400, media_type="application/json")
        if kind == "ceiling":
            outputs = {"prediction": np.full((rows, 1), 0.5, dtype=np.float32)}
        else:
            outputs = await run_in_threadpool(version.predict, columns)
        return Response(bodies.dumps(bodies.predict_response(outputs, layout)), media_type="application/json")

    async def healthz(request):
        return Response(b'{"status":"ok"}', media_type="application/json")
    return Starlette(routes=[Route("/v1/models/ctr:predict", predict, methods=["POST"]), Route("/healthz", healthz)])


def run_baseline(kind, export_dir, port):
    import uvicorn
    uvicorn.run(baseline_app(kind, export_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------ load


async def _request(reader, writer, payload):
    writer.write(payload)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    body = await reader.readexactly(length)
    return status, body


async def load(port, path, body, concurrency, seconds, on_answer=None):
    """``concurrency`` keep-alive connections, each one request at a time: (answers, latencies, errors)."""
    payload = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies, errors = [], []
    deadline = time.perf_counter() + seconds

    async def user():
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status, answer = await asyncio.wait_for(_request(reader, writer, payload), 30)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                    errors.append(repr(exc))
                    writer.close()
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                    continue
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"{status} {answer[:200]!r}")
                elif on_answer:
                    on_answer(answer)
        finally:
            writer.close()
    await asyncio.gather(*[user() for _ in range(concurrency)])
    return latencies, errors


def measure(port, body, seconds, concurrency=CONCURRENCY):
    out = {}
    for c in concurrency:
        asyncio.run(load(port, "/v1/models/ctr:predict", body, c, 1.0))       # warm-up
        latencies, errors = asyncio.run(load(port, "/v1/models/ctr:predict", body, c, seconds))
        if errors:
            raise SystemExit(f"port {port}, concurrency {c}: {len(errors)} failed requests, first: {errors[0]}")
        out[c] = {"rps": round(len(latencies) / seconds, 1), "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
                  "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2)}
    return out


# --------------------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, log_path):
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([*argv, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise SystemExit(f"{argv} did not come up: {open(log_path).read()[-2000:]}")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def batch_histogram(port):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    count = float(re.search(r'tfos_serve_batch_size_count\{model="ctr"\} (\S+)', text).group(1))
    total = float(re.search(r'tfos_serve_batch_size_sum\{model="ctr"\} (\S+)', text).group(1))
    return count, total


def in_process_limit(export_dir, instance, seconds):
    from tfos_jobs.serving.models import load_version
    version = load_version(export_dir, "")
    columns = {k: np.full(64, v, dtype=version.inputs[k].dtype) for k, v in instance.items()}
    for _ in range(20):
        version.predict(columns)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        version.predict(columns)
        done += 64
    return done / (time.perf_counter() - started)


def swap_under_load(port, base, body):
    versions = []

    def on_answer(answer):
        versions.append(json.loads(answer).get("model_version"))

    async def scenario():
        task = asyncio.ensure_future(load(port, "/v1/models/ctr:predict", body, 8, 25.0, on_answer))
        await asyncio.sleep(2)
        await asyncio.to_thread(publish, base, 2)
        return await task
    latencies, errors = asyncio.run(scenario())
    return {"requests": len(latencies), "failed": len(errors), "versions_seen": sorted(set(v for v in versions if v))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--serve", choices=["naive", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return run_baseline(args.serve, args.export, args.port)
    root = tempfile.mkdtemp(prefix="tfos-bench-serve-")
    procs = []
    try:
        base = os.path.join(root, "ctr")
        first = publish(base, 1)
        body = json.dumps({"instances": [one_instance()]}).encode()
        results, batches = {}, {}
        ours, port = start([sys.executable, "-m", "tfos_jobs.serving", "--model", f"ctr={base}", "--no-access-log",
                            "--poll-s", "1"], os.path.join(root, "ours.log"))
        procs.append(ours)
        for c in CONCURRENCY:
            before = batch_histogram(port)
            results.setdefault("ours", {}).update(measure(port, body, args.seconds, (c,)))
            after = batch_histogram(port)
            batches[c] = round((after[1] - before[1]) / max(1.0, after[0] - before[0]), 1)
        swap = swap_under_load(port, base, body)
        stop(ours)
        # the same server without waiting for company: what a lone client gains, what load loses
        eager, eport = start([sys.executable, "-m", "tfos_jobs.serving", "--model", f"ctr={base}", "--no-access-log",
                              "--batch-timeout-ms", "0"], os.path.join(root, "eager.log"))
        procs.append(eager)
        results["no_wait"] = measure(eport, body, args.seconds)
        stop(eager)
        for kind in ("naive", "ceiling"):
            proc, kport = start([sys.executable, os.path.abspath(__file__), "--serve", kind, "--export", first],
                                os.path.join(root, f"{kind}.log"))
            procs.append(proc)
            results[kind] = measure(kport, body, args.seconds)
            stop(proc)
        limit = in_process_limit(first, json.loads(body)["instances"][0], args.seconds)
        rps = {str(c): results["ours"][c]["rps"] for c in CONCURRENCY}
        print(json.dumps({
            "model": "ctr dcn, job defaults, hash_buckets 10000", "request": ":predict, one instance",
            "seconds_per_point": args.seconds,
            "rps": rps, "p50_ms": {str(c): results["ours"][c]["p50_ms"] for c in CONCURRENCY},
            "p99_ms": {str(c): results["ours"][c]["p99_ms"] for c in CONCURRENCY},
            "naive": {str(c): results["naive"][c] for c in CONCURRENCY},
            "batch_timeout_0": {str(c): results["no_wait"][c] for c in CONCURRENCY},
            "ceiling": {str(c): results["ceiling"][c] for c in CONCURRENCY},
            "limit_instances_per_s": round(limit, 1),
            "vs_naive_rps_64": round(results["ours"][64]["rps"] / results["naive"][64]["rps"], 2),
            "vs_http_ceiling_rps_64": round(results["ours"][64]["rps"] / results["ceiling"][64]["rps"], 2),
            "vs_limit_rps_64": round(results["ours"][64]["rps"] / limit, 3),
            "mean_batch_size": {str(c): batches[c] for c in CONCURRENCY},
            "swap": swap, "swap_failed_requests": swap["failed"],
        }, sort_keys=True))
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
