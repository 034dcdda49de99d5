"""``tfos-cluster up | down | status | env | fetch``."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from . import jars, manager
from .errors import ClusterError


def _table(rows: list[dict]) -> str:
    cols = [("SERVICE", "service"), ("PID", "pid"), ("PORT", "port"), ("RSS MB", "rss_mb"),
            ("HEALTH", "health"), ("UI", "ui"), ("DETAIL", "detail")]
    data = []
    for r in rows:
        r = dict(r, health="ok" if r["healthy"] else ("DOWN" if not r["alive"] else "UNHEALTHY"))
        data.append([("" if r.get(k) is None else str(r.get(k))) for _, k in cols])
    widths = [max(len(h), *(len(d[i]) for d in data)) if data else len(h)
              for i, (h, _) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(d, widths)) for d in data]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tfos-cluster", description=(
        "Local pseudo-cluster on 127.0.0.1: HDFS (NameNode, DataNode), YARN (ResourceManager, "
        "NodeManager), Spark standalone (master + workers) and an S3 endpoint (moto)."))
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start every service and wait until healthy")
    p_up.add_argument("--workers", type=int, help="Spark standalone workers (default 2)")
    p_up.add_argument("--worker-cores", type=int, help="cores per Spark worker (default 1)")
    p_up.add_argument("--worker-memory", help="memory per Spark worker, e.g. 1g (default 1g)")
    p_up.add_argument("--port-base", type=int,
                      help="first port of the block the cluster uses (default 19800, or "
                           "TFOS_CLUSTER_PORT_BASE)")
    p_up.add_argument("--bucket", help="S3 bucket to create (default tfos)")
    p_up.add_argument("--timeout", type=float, default=240, help="seconds to wait for health")
    p_up.add_argument("--wipe", action="store_true", help="delete all data before starting")
    p_up.add_argument("--json", action="store_true", help="print the connection info as JSON")
    p_down = sub.add_parser("down", help="stop every service (by PID) and verify")
    p_down.add_argument("--wipe", action="store_true", help="also delete HDFS data, logs, state")
    p_st = sub.add_parser("status", help="list services, PIDs, ports, UIs and health")
    p_st.add_argument("--json", action="store_true")
    sub.add_parser("env", help="print 'export' lines for clients (eval \"$(tfos-cluster env)\")")
    sub.add_parser("fetch", help="fetch and cache the jars: Hadoop daemons, Kafka broker, and Spark's "
                                 "Kafka connector and s3a:// (hadoop-aws, AWS SDK modules) (idempotent)")
    return ap


def _up(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    conn = manager.up(workers=a.workers, worker_cores=a.worker_cores,
                      worker_memory=a.worker_memory, port_base=a.port_base,
                      bucket=a.bucket, timeout=a.timeout, wipe=a.wipe,
                      verbose=not a.json)
    if a.json:
        print(json.dumps(conn, indent=2))
        return 0
    print(_table(manager.status()))
    print(f"\nup in {time.monotonic() - t0:.1f}s; resident memory "
          f"{manager.rss_total() / 2**30:.2f} GiB")
    print(f"HDFS   {conn['hdfs']['uri']}   YARN RM {conn['yarn']['resourcemanager']}"
          f"   Spark {conn['spark']['master']}   S3 {conn['s3']['endpoint']}"
          f" (bucket {conn['s3']['bucket']})   Kafka {conn['kafka']['bootstrap']}")
    print(f"HADOOP_CONF_DIR={conn['hadoop_conf_dir']}")
    return 0


def _down(a: argparse.Namespace) -> int:
    manager.down(wipe=a.wipe, verbose=True)
    return 0


def _status(a: argparse.Namespace) -> int:
    """Exit 3 unless every service is healthy, so that scripts can wait on it."""
    rows = manager.status()
    if a.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("pseudo-cluster: never started here "
              f"({manager.config.cluster_home()})")
    else:
        print(_table(rows))
        if any(r["alive"] for r in rows):
            print(f"\nresident memory {manager.rss_total() / 2**30:.2f} GiB")
    return 0 if rows and all(r["healthy"] for r in rows) else 3


def _env(a: argparse.Namespace) -> int:
    for k, v in manager.client_env().items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def _fetch(a: argparse.Namespace) -> int:
    jars.fetch()
    for b in jars.BUNDLES:
        print(f"{b.lib()} ({jars.cache_size(b) / 2**20:.1f} MiB)")
    return 0


COMMANDS = {"up": _up, "down": _down, "status": _status, "env": _env, "fetch": _fetch}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return COMMANDS[a.cmd](a)
    except ClusterError as e:
        print(f"tfos-cluster {a.cmd}: {e}", file=sys.stderr)
        return 2
