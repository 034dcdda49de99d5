"""The HTTP application (Starlette on uvicorn): TF Serving's REST API, a raw-record endpoint per
model, health, readiness and Prometheus metrics.

    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature
    POST /v1/models/<name>[/versions/<v>]:predict    {"instances": [...]} or {"inputs": {...}}
    POST /v1/models/<name>/records:predict           raw records: {"records": ["<line>", ...]} or {"fields": [[...]]}
                                                     (CTR), {"respondents": [{question: answer}, ...]} (survey)
    GET  /healthz  /readyz  /metrics
    KServe Open Inference Protocol v2: GET /v2/health/live, /v2/health/ready, /v2/models/<name>[/ready],
    POST /v2/models/<name>[/versions/<v>]/infer

Every answer is JSON (errors ``{"error": "..."}``); a bearer token, when configured, is checked on
every path but ``/healthz`` before anything else is read.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tfos_jobs.serving import requests as bodies
from tfos_jobs.serving.batcher import Batcher, Overloaded
from tfos_jobs.serving.config import ServerConfig
from tfos_jobs.serving.models import ServedModel

log = logging.getLogger("tfos_jobs.serving")
access_log = logging.getLogger("tfos_jobs.serving.access")
OPEN_PATHS = ("/healthz", "/v2/health/live")
_MODEL_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                         r"(?P<action>/metadata|/records:predict|:predict)?")
_V2_PATH = re.compile(r"(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")
_DTYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int64": "DT_INT64", "int32": "DT_INT32",
           "bool": "DT_BOOL", "object": "DT_STRING", "bytes": "DT_STRING"}


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("tfos_serve_requests", "Requests by model, endpoint and status code",
                                ["model", "endpoint", "code"], registry=self.registry)
        self.latency = Histogram("tfos_serve_request_seconds", "Request latency", ["model", "endpoint"],
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5), registry=self.registry)
        self.batch_size = Histogram("tfos_serve_batch_size", "Instances per model call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)
        self.version = Gauge("tfos_serve_model_version", "1 for the version each model serves",
                             ["model", "version"], registry=self.registry)


class Server:
    """The models, their batchers and the application, for one :class:`ServerConfig`."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self.models = {s.name: ServedModel(s, config.cache_dir, config.cache_versions) for s in config.models}
        self.batchers: dict[str, Batcher] = {}
        self.app = Starlette(routes=[
            Route("/healthz", self.healthz), Route("/readyz", self.readyz), Route("/metrics", self.prometheus),
            Route("/v1/models/{rest:path}", self.v1, methods=["GET", "POST"]),
            Route("/v2/health/live", self.healthz), Route("/v2/health/ready", self.readyz),
            Route("/v2/models/{rest:path}", self.v2, methods=["GET", "POST"]),
        ], lifespan=self.lifespan)
        self.asgi = _BearerAuth(self.app, config.token)

    def load_all(self) -> dict[str, str]:
        """Load every model's current version (blocking; before serving). A model with none fails."""
        for name, model in self.models.items():
            model.refresh()
            if model.current is None:
                why = "; ".join(f"{v}: {e}" for v, e in model.failed.items()) or "no version"
                raise RuntimeError(f"model {name}: nothing to serve from {model.source.uri}: {why}")
            self.metrics.version.labels(name, model.current.version).set(1)
        return {name: model.current.version for name, model in self.models.items()}

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        for name, model in self.models.items():
            self.batchers[name] = Batcher(self.config.batching, run=lambda version, columns: version.predict(columns),
                                          observe=self.metrics.batch_size.labels(name).observe)
            self.batchers[name].start()
        poller = asyncio.create_task(self._poll())
        try:
            yield
        finally:
            poller.cancel()
            for batcher in self.batchers.values():
                await batcher.stop()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            for name, model in self.models.items():
                old = model.current.version if model.current else None
                try:
                    swapped = await asyncio.to_thread(model.refresh)
                except Exception as exc:   # noqa: BLE001 - storage unreachable: keep serving, look again later
                    log.warning("model %s: could not look for a new version: %s", name, exc)
                    continue
                if swapped:
                    if old:
                        self.metrics.version.remove(name, old)
                    self.metrics.version.labels(name, model.current.version).set(1)

    # ------------------------------------------------------------------------------- endpoints

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready = {name: m.current.version if m.current else None for name, m in self.models.items()}
        return _json({"ready": all(ready.values()), "models": ready}, 200 if all(ready.values()) else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def v1(self, request: Request) -> Response:
        match = _MODEL_PATH.fullmatch(request.path_params["rest"])
        endpoint = (match["action"] or "status").lstrip("/:") if match else "?"
        return await self._timed(request, match["name"] if match else "?", endpoint, self._v1(request, match))

    async def v2(self, request: Request) -> Response:
        match = _V2_PATH.fullmatch(request.path_params["rest"])
        endpoint = "v2 " + (match["action"] or "/metadata").lstrip("/") if match else "?"
        return await self._timed(request, match["name"] if match else "?", endpoint, self._v2(request, match))

    async def _timed(self, request: Request, name: str, endpoint: str, handler) -> Response:
        """Await ``handler``; count, time and log its answer."""
        started = time.perf_counter()
        try:
            response, extra = await handler
        except _Answer as answer:
            response, extra = _json({"error": answer.message}, answer.code, answer.headers), {"error": answer.message[:200]}
        except Exception as exc:   # noqa: BLE001 - a bug or a model failure: logged here, one line to the client
            log.exception("%s %s failed", request.method, request.url.path)
            response, extra = _json({"error": f"internal error ({type(exc).__name__}); see the server log"}, 500), {}
        code = response.status_code
        seconds = time.perf_counter() - started
        known = name if name in self.models else "?"
        self.metrics.requests.labels(known, endpoint, str(code)).inc()
        self.metrics.latency.labels(known, endpoint).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({"method": request.method, "path": request.url.path, "code": code,
                                        "ms": round(seconds * 1000, 2), "client": request.client.host
                                        if request.client else None, **extra}))
        return response

    async def _v1(self, request: Request, match: Any) -> tuple[Response, dict]:
        if match is None:
            raise _Answer(404, f"no such endpoint: {request.url.path}")
        model = self._model(match["name"])
        action = match["action"]
        if request.method == "GET":
            if action in ("/records:predict", ":predict"):
                raise _Answer(405, f"{action} takes POST")
            if action is None:
                states = [s for s in model.status() if match["version"] in (None, s["version"])]
                if not states:
                    raise _Answer(404, f"model {model.source.name} has no version {match['version']!r}")
                return _json({"model_version_status": states}), {"model": model.source.name}
            version = self._version(model, match["version"])
            return _json(_metadata(model.source.name, version)), {"model": model.source.name}
        if action not in ("/records:predict", ":predict"):
            raise _Answer(405, f"{request.url.path} takes GET")
        version = self._version(model, match["version"])
        try:
            body = bodies.parse_json(await self._body(request))
            if action == ":predict":
                columns, rows, layout = bodies.model_columns(body, version.inputs, self.config.max_instances)
            else:
                if version.encoding is None:
                    raise bodies.BadRequest(f"model {model.source.name} version {version.version} has no "
                                            "raw-record encoding (its job defines none yet): use :predict")
                columns, rows = version.encoding.columns(body, self.config.max_instances)
                layout = "row"
        except bodies.BadRequest as exc:
            raise _Answer(400, str(exc)) from None
        outputs = await self._predict(model, version, columns, rows)
        answer = bodies.predict_response(outputs, layout)
        answer["model_version"] = version.version
        return (Response(bodies.dumps(answer), media_type="application/json"),
                {"model": model.source.name, "version": version.version, "instances": rows})

    async def _v2(self, request: Request, match: Any) -> tuple[Response, dict]:
        if match is None:
            raise _Answer(404, f"no such endpoint: {request.url.path}")
        model = self._model(match["name"])
        version = self._version(model, match["version"])
        action, extra = match["action"], {"model": model.source.name, "version": version.version}
        if request.method == "GET":
            if action == "/ready":
                return _json({"name": model.source.name, "ready": True}), extra
            if action is None:
                return _json({"name": model.source.name, "versions": sorted(model.loaded),
                              "platform": "tensorflow_savedmodel", "inputs": _v2_tensors(version.inputs),
                              "outputs": _v2_tensors(version.outputs)}), extra
            raise _Answer(405, f"{request.url.path} takes POST")
        if action != "/infer":
            raise _Answer(405, f"{request.url.path} takes GET")
        try:
            columns, rows = bodies.v2_columns(bodies.parse_json(await self._body(request)), version.inputs,
                                              self.config.max_instances)
        except bodies.BadRequest as exc:
            raise _Answer(400, str(exc)) from None
        outputs = await self._predict(model, version, columns, rows)
        answer = bodies.v2_response(model.source.name, version.version, outputs)
        return Response(bodies.dumps(answer), media_type="application/json"), {**extra, "instances": rows}

    async def _predict(self, model: ServedModel, version: Any, columns: dict, rows: int) -> dict:
        try:
            return await self.batchers[model.source.name].submit(version, columns, rows)
        except Overloaded as exc:
            raise _Answer(503, f"overloaded: {exc}; retry", {"Retry-After": "1"}) from None

    def _model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None or model.current is None:
            raise _Answer(404, f"model {name!r} is not served here (served: {sorted(self.models)})")
        return model

    def _version(self, model: ServedModel, wanted: str | None):
        version = model.current if wanted is None else model.loaded.get(wanted)
        if version is None:
            raise _Answer(404, f"model {model.source.name} version {wanted!r} is not loaded "
                               f"(loaded: {sorted(model.loaded)})")
        return version

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _Answer(413, f"the request body is over {limit} bytes")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Answer(413, f"the request body is over {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise _Answer(400, "the client went away mid-request") from None
        return b"".join(chunks)


class _Answer(Exception):
    def __init__(self, code: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


def _json(value: Any, code: int = 200, headers: dict | None = None) -> Response:
    return Response(bodies.dumps(value), status_code=code, media_type="application/json", headers=headers)


def _metadata(name: str, version) -> dict:
    """TF Serving's ``GetModelMetadata`` answer for ``serving_default``."""
    def tensors(infos):
        return {n: {"dtype": _DTYPES.get(i.dtype.name, "DT_INVALID"), "name": n,
                    "tensor_shape": {"dim": [{"size": "-1", "name": ""}]
                                     + [{"size": str(d if d is not None else -1), "name": ""} for d in i.shape],
                                     "unknown_rank": False}}
                for n, i in infos.items()}
    signature = {"inputs": tensors(version.inputs), "outputs": tensors(version.outputs),
                 "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": name, "signature_name": "", "version": version.version},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            "raw_records": None if version.encoding is None else version.encoding.describe()}


def _v2_tensors(infos: dict) -> list[dict]:
    return [{"name": n, "datatype": bodies.V2_NAMES.get(i.dtype.name, "BYTES"),
             "shape": [-1] + [d if d is not None else -1 for d in i.shape]} for n, i in infos.items()]


class _BearerAuth:
    """ASGI wrapper: ``Authorization: Bearer <token>`` on every path but :data:`OPEN_PATHS`, compared
    in constant time, before the application reads anything."""

    def __init__(self, app, token: str | None):
        self.app, self.expected = app, (b"Bearer " + token.encode()) if token else None

    async def __call__(self, scope, receive, send):
        if self.expected and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error":"missing or wrong bearer token"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
