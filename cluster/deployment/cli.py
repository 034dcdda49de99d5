"""Ship the toolkit to YARN and submit its jobs with spark-submit (``tfos-deploy``).

``tfos-deploy package`` builds (and uploads) the package (:mod:`cluster.deployment.package`),
``tfos-deploy submit`` runs a job module with it, watched (:mod:`cluster.deployment.submit`), and
``tfos-deploy emr`` writes EMR-style artefacts and can run their steps (:mod:`cluster.deployment.emr`).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import threading
import time
import uuid

from tfos_jobs.cli import JobParser, bounded_number, positive_int

from ..redaction import redact, redact_argv, redact_text, sensitive
from . import emr
from .package import REPO, build_code_and_entry, package, read_manifest, upload
from .resources import DeployError, Resources, refuse_credentials
from .submit import spark_submit_path, submit, submit_argv
from .yarn import loopback_conf


def _positive_seconds(text: str) -> float:
    return bounded_number(text, float, "a positive number of seconds", lambda v: v > 0)


def _conf_pair(text: str) -> tuple[str, str]:
    """``--conf KEY=VALUE`` as spark-submit takes it; a pair without ``=`` is a typo, caught before any work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        shown = "an argument without '='" if sensitive(text) else repr(text)   # a secret typed without its key
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {shown}")
    return key.strip(), value


def _storage_uri(text: str) -> str:
    """A storage URI flag: one with credentials in it is refused before it is used or shown."""
    try:
        refuse_credentials([text])
    except DeployError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _res_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tf-nodes", type=positive_int, default=2, help="executors, one TF node each (default: 2)")
    p.add_argument("--executor-memory", default="1g")
    p.add_argument("--executor-memory-overhead", default="2g", help="for the Python worker and TF process")
    p.add_argument("--driver-memory", default="1g")
    p.add_argument("--driver-memory-overhead", default="1g")


def _res(args: argparse.Namespace) -> Resources:
    return Resources(args.tf_nodes, args.executor_memory, args.executor_memory_overhead,
                     args.driver_memory, args.driver_memory_overhead)


def build_parser() -> JobParser:
    parser = JobParser(prog="tfos-deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("package", help="build the packed environment (cached), code zip and entry script")
    p.add_argument("--out", default=str(REPO / "work" / "deploy"))
    p.add_argument("--node-python", help="absolute path of Python 3.%d on the nodes (default: this machine's)"
                   % sys.version_info.minor)
    p.add_argument("--compression", choices=["none", "gzip"], default="none")
    p.add_argument("--force", action="store_true", help="rebuild the environment even if cached")
    p.add_argument("--upload", metavar="URI", type=_storage_uri,
                   help="copy the files under this hdfs:// or s3:// directory")

    p = sub.add_parser("submit", help="spark-submit a job module with the package, watched")
    p.add_argument("--master", default="yarn")
    p.add_argument("--deploy-mode", choices=["client", "cluster"],
                   help="default: cluster on YARN, client on other masters (Python needs it there)")
    p.add_argument("--package-dir", default=None, type=_storage_uri, help="where the package files are (a local "
                   "dir or an uploaded URI); default: build/reuse under work/deploy")
    p.add_argument("--accept-timeout", type=_positive_seconds, default=120)
    p.add_argument("--timeout", type=_positive_seconds, default=3600,
                   help="seconds spark-submit may run (default: %(default)s; none with --long-running)")
    p.add_argument("--long-running", action="store_true",
                   help="a job that runs until stopped (a streaming query): no --timeout; SIGTERM/SIGINT stop it "
                        "gracefully (its queries end at a micro-batch boundary) and exit 0")
    p.add_argument("--conf", type=_conf_pair, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dry-run", action="store_true", help="print the spark-submit command only")
    _res_args(p)
    p.add_argument("module", help="e.g. tfos_jobs.ctr or tfos_jobs.survey")
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("emr", help="EMR-style artefacts (bootstrap, steps, configurations) from a config")
    p.add_argument("config", help="YAML or JSON config (see README)")
    p.add_argument("--out", default=str(REPO / "work" / "emr"))
    p.add_argument("--run", action="store_true", help="also run the steps here (pseudo-cluster YARN)")
    p.add_argument("--upload", action="store_true", help="package and upload to the config's code_uri")
    return parser


def _package_uris(pkg_dir: str | None, with_env: bool = True) -> dict:
    """The package's URIs: from the manifest an upload wrote, or built/reused locally. Off YARN
    (``with_env=False``) the environment archive is neither built nor shipped."""
    if pkg_dir and "://" in pkg_dir and not pkg_dir.startswith("file:"):
        return read_manifest(pkg_dir)
    if not with_env:
        code_zip, entry = build_code_and_entry(pkg_dir)
        return {"env_archive": None, "code_zip": str(code_zip), "entry": str(entry)}
    pkg = package(pkg_dir, log=lambda m: print(m, file=sys.stderr))
    return {"env_archive": pkg.env_archive, "code_zip": pkg.code_zip, "entry": pkg.entry}


def _package(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    pkg = package(args.out, args.node_python, args.compression, args.force,
                  log=lambda m: print(m, file=sys.stderr))
    result = pkg.as_dict()
    if args.upload:
        result["uploaded"] = upload(pkg, args.upload)
    result["total_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(redact(result), indent=1))
    return 0


def _submit(args: argparse.Namespace) -> int:
    job_args = [a for a in args.args if a != "--"]
    refuse_credentials(job_args, "job argument")   # they would show in YARN and in process listings
    on_yarn = args.master.startswith("yarn")
    uris = _package_uris(args.package_dir, with_env=on_yarn)
    res = _res(args)
    extra = loopback_conf() if on_yarn else {}
    extra.update(args.conf)
    tag = f"tfos-{uuid.uuid4().hex[:12]}"
    cmd = submit_argv(args.module, job_args, env_uri=uris["env_archive"],
                      code_uri=uris["code_zip"], entry_uri=uris["entry"], master=args.master,
                      deploy_mode=args.deploy_mode or ("cluster" if on_yarn else "client"),
                      res=res, tag=tag, extra_conf=extra, spark_submit=spark_submit_path())
    if args.dry_run:
        print(shlex.join(redact_argv(cmd)))   # what runs keeps the real values
        return 0
    stop = _stop_on_signals() if args.long_running else None
    sub = submit(cmd, timeout=math.inf if args.long_running else args.timeout, accept_timeout=args.accept_timeout,
                 res=res, check=False, stop=stop)
    sys.stdout.write(sub.output)
    stopped = bool(stop and stop.is_set())
    print(json.dumps({"app_id": sub.app_id, "state": sub.state, "final_status": sub.final_status,
                      "returncode": sub.returncode, "wall_s": sub.wall_s, "stopped": stopped}), file=sys.stderr)
    if stopped:   # asked to end: a YARN application we killed is the expected end, not a failure
        return 0 if sub.returncode == 0 or sub.final_status == "KILLED" else 1
    return 0 if sub.returncode == 0 and sub.final_status in (None, "SUCCEEDED") else 1


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: how a long-running submission is asked to end."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


COMMANDS = {"package": _package, "submit": _submit, "emr": emr.main_emr}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        return command(args)
    except DeployError as exc:
        # worded like argparse's own errors, exit 2 like them: bad input or a cluster that cannot run it
        print(f"tfos-deploy: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
