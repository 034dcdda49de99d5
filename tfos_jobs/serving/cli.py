"""``tfos-serve``: serve model exports over HTTP until SIGTERM/SIGINT, then drain and exit 0.

    tfos-serve --model ctr=hdfs://nn/models/ctr [--model survey=s3://b/survey] [--port 8501]

Prints one JSON line once it listens (``{"serving": URL, "models": {name: version}}``). Bound
beyond 127.0.0.1 it needs a bearer token (``--token-file``, not readable by others, or
``$TFOS_SERVE_TOKEN``; never printed) or mutual TLS (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import sys

from tfos_jobs.cli import JobParser, non_negative_float, positive_float, positive_int
from tfos_jobs.serving.config import BatchingConfig, ModelSource, ServerConfig, TlsConfig

PROG = "tfos-serve"
TOKEN_ENV = "TFOS_SERVE_TOKEN"


def model_source(text: str) -> ModelSource:
    try:
        return ModelSource.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--model", type=model_source, action="append", required=True, metavar="NAME=URI",
                   help="a served name and its export URI: numbered versions (URI/<n>/) or one export; repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8501, help="port (default: %(default)s, TF Serving's REST port)")
    p.add_argument("--token-file", help="file holding the bearer token clients must send (mode 0600)")
    p.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", default="", help="the certificate's private key (PEM, mode 0600)")
    p.add_argument("--tls-client-ca", default="",
                   help="mutual TLS: only clients with a certificate signed by this CA (PEM) get through the handshake")
    p.add_argument("--max-batch-size", type=positive_int, default=64, help="instances per model call (default: 64)")
    p.add_argument("--batch-timeout-ms", type=non_negative_float, default=2.0,
                   help="how long a batch waits for company after its first request (default: 2)")
    p.add_argument("--batch-threads", type=positive_int, default=2, help="model calls at once (default: 2)")
    p.add_argument("--max-queued", type=positive_int, default=4096,
                   help="queued instances beyond which requests get 503 (default: 4096)")
    p.add_argument("--max-request-mb", type=positive_float, default=4.0, help="request body limit (default: 4)")
    p.add_argument("--poll-s", type=positive_float, default=10.0, help="look for a new version this often (default: 10)")
    p.add_argument("--cache-dir", default="", help="local copies of remote exports (default: private per user)")
    p.add_argument("--cache-versions", type=positive_int, default=3, help="cached copies kept per model (default: 3)")
    p.add_argument("--drain-s", type=non_negative_float, default=30.0,
                   help="on SIGTERM, how long in-flight requests get to finish (default: 30)")
    p.add_argument("--no-access-log", action="store_true", help="no JSON line per request on stderr")
    return p


def read_token(path: str | None) -> str | None:
    if path:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"--token-file {path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
        with open(path) as handle:
            return handle.read().strip() or None
    return os.environ.get(TOKEN_ENV) or None


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        models=tuple(args.model), host=args.host, port=args.port, token=read_token(args.token_file),
        batching=BatchingConfig(max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
                                batch_threads=args.batch_threads, max_queued=args.max_queued),
        max_request_bytes=int(args.max_request_mb * (1 << 20)), poll_s=args.poll_s, cache_dir=args.cache_dir,
        cache_versions=args.cache_versions, drain_s=args.drain_s, tls=tls_from(args))


def tls_from(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    return TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)


def tls_options(tls: TlsConfig | None) -> dict:
    """uvicorn's arguments for ``tls``: client certificates required when it is mutual."""
    if tls is None:
        return {}
    import ssl
    options = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.mutual:
        options.update(ssl_ca_certs=tls.client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.no_access_log:
        logging.getLogger("tfos_jobs.serving.access").setLevel(logging.WARNING)
    try:
        config = config_from(args)
        from tfos_jobs.serving.app import Server   # TensorFlow and Starlette: after the flags are checked
        server = Server(config)
        versions = server.load_all()
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return run(server, versions)


def run(server, versions: dict) -> int:
    import uvicorn
    config = server.config
    uv = uvicorn.Server(uvicorn.Config(server.asgi, host=config.host, port=config.port, log_level="warning",
                                       access_log=False, lifespan="on", timeout_graceful_shutdown=config.drain_s,
                                       limit_concurrency=config.batching.max_queued + 64,
                                       **tls_options(config.tls)))
    original = uv.startup

    async def announce(sockets=None):
        await original(sockets=sockets)
        if uv.started:
            print(json.dumps({"serving": config.url, "models": versions}), flush=True)
    uv.startup = announce
    # uvicorn drains on SIGTERM/SIGINT, restores the handlers it found and raises the signal again: with
    # these (doing nothing) in place, the drained server returns here and exits 0 instead of dying of it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uv.run()
    return 0 if uv.started else 1


if __name__ == "__main__":
    sys.exit(main())
