"""``python -m cluster.probe [OUT_URI]``: which Python and packages the driver, the executors and a TF
node process (a child of the executor's Python worker, as ``tfos_jobs.executor.node`` starts it) really use.

``tfos-deploy submit cluster.probe hdfs:///tmp/probe.json`` checks a package on a cluster in a minute:
TensorFlow, TFoS and our code must import from the shipped environment and code zip, not from paths
that happen to exist on one machine. Prints ``TFOS_PROBE {json}`` and writes the JSON to OUT_URI.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

CHILD = ("import json, os, sys, tensorflow as tf, tensorflowonspark, tfos_jobs, hdfs_io\n"
         "print(json.dumps({'executable': sys.executable, 'prefix': sys.prefix, 'tf': tf.__version__,\n"
         "    'tf_file': tf.__file__, 'tfos_jobs': tfos_jobs.__file__, 'tensorflowonspark':\n"
         "    tensorflowonspark.__file__, 'hdfs_io': hdfs_io.__file__}))\n")


def describe() -> dict:
    import pyspark

    import tfos_jobs
    return {"host": socket.gethostname(), "cwd": os.getcwd(), "executable": sys.executable,
            "prefix": sys.prefix, "version": sys.version.split()[0], "tfos_jobs": tfos_jobs.__file__,
            "pyspark": pyspark.__file__}


def executor_report(_: object) -> dict:
    report = describe()
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if child.returncode != 0:
        report["tf_node_error"] = child.stdout[-2000:] + child.stderr[-4000:]
    else:
        report["tf_node"] = json.loads(child.stdout.strip().splitlines()[-1])
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import hdfs_io  # noqa: F401 - before spark.stop(): in client mode the --py-files zip goes with it
    from tfos_jobs.spark import spark_session
    spark = spark_session(app_name="tfos-probe")
    try:
        sc = spark.sparkContext
        n = int(sc.getConf().get("spark.executor.instances", "2"))
        executors = sc.parallelize(range(n), n).map(executor_report).collect()
        result = {"master": sc.master, "deploy_mode": sc.getConf().get("spark.submit.deployMode", "client"),
                  "app_id": sc.applicationId, "driver": describe(), "executors": executors}
    finally:
        spark.stop()
    print("TFOS_PROBE " + json.dumps(result, sort_keys=True), flush=True)
    if argv:
        with hdfs_io.open(argv[0], "wb") as fh:
            fh.write(json.dumps(result, indent=1, sort_keys=True).encode())
    failed = [e for e in executors if "tf_node_error" in e]
    if failed:
        print(f"TF could not start on {len(failed)} executor(s):\n{failed[0]['tf_node_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
