"""Start, check and stop the pseudo-cluster's processes."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import psutil

from ..processes import STOP_TIMEOUT, terminate, with_descendants
from ..redaction import redact_argv
from . import config, jars
from .config import HOST, Layout, Options, Service
from .errors import ClusterError

FIRST_WAVE = {"nodemanager", "datanode"}


# ---------------------------------------------------------------------------------------------
# state


def _layout() -> Layout:
    return Layout(config.cluster_home())


@contextlib.contextmanager
def _locked(lay: Layout, timeout: float = 600):
    lay.home.mkdir(parents=True, exist_ok=True)
    with open(lay.lock, "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"another tfos-cluster command holds {lay.lock}")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_state(lay: Layout) -> dict:
    try:
        return json.loads(lay.state.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"services": {}}


def _save_state(lay: Layout, state: dict) -> None:
    lay.home.mkdir(parents=True, exist_ok=True)
    tmp = lay.state.with_name("state.json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(lay.state)


def _process(entry: dict) -> psutil.Process | None:
    """The live process recorded in ``entry`` (same PID *and* start time), else None."""
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["create_time"]) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)
            return None
        return proc
    except (psutil.Error, KeyError, TypeError):
        return None


def _sayer(lay: Layout, verbose: bool):
    """Progress messages: printed when verbose, always appended to logs/tfos-cluster.log."""
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)
        try:
            lay.logs.mkdir(parents=True, exist_ok=True)
            with open(lay.logs / "tfos-cluster.log", "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] "
                         f"+{time.monotonic() - t0:6.1f}s {msg}\n")
        except OSError:
            pass
    return say


# ---------------------------------------------------------------------------------------------
# ports


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _port_owner(port: int) -> str:
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                try:
                    name = psutil.Process(c.pid).name()
                except psutil.Error:
                    name = "?"
                return f"PID {c.pid} ({name})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def _check_ports(svcs: list[Service]) -> None:
    taken = [(s.name, port) for s in svcs for port in s.ports if not port_free(port)]
    if taken:
        lines = [f"  port {port} ({name}) is already in use by {_port_owner(port)}"
                 for name, port in taken]
        raise ClusterError(
            "cannot start the pseudo-cluster: ports on 127.0.0.1 are taken:\n" + "\n".join(lines)
            + "\nStop whatever holds them, or choose other ports with --port-base / "
              "TFOS_CLUSTER_PORT_BASE.")


# ---------------------------------------------------------------------------------------------
# processes


def _launch(lay: Layout, argv: list[str], env: dict, name: str) -> subprocess.Popen:
    lay.logs.mkdir(parents=True, exist_ok=True)
    cwd = lay.run / name
    cwd.mkdir(parents=True, exist_ok=True)
    with open(lay.log(name), "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} tfos-cluster starts {name}: "
                  f"{' '.join(redact_argv(argv))}\n".encode())
        log.flush()
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                start_new_session=True, close_fds=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _leftovers(lay: Layout) -> list[psutil.Process]:
    """Processes that belong to this cluster although no longer in the state file: JVMs carrying
    our ``-Dtfos.cluster.home`` marker, and processes running inside its run/ or data/ dirs
    (the S3 server, Spark executors, YARN containers)."""
    marker = f"-Dtfos.cluster.home={lay.home}"
    roots = (str(lay.run) + os.sep, str(lay.data) + os.sep)
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if p.pid in me:
            continue
        try:
            cmd = p.info.get("cmdline") or []
            cwd = (p.info.get("cwd") or "") + os.sep
            if marker in cmd or cwd.startswith(roots):
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        except psutil.Error:
            continue
    return found


# ---------------------------------------------------------------------------------------------
# public operations


def _options(state: dict, running: bool, overrides: dict) -> Options:
    if running and state.get("options"):
        base = Options(**state["options"])
        changed = {k: v for k, v in overrides.items()
                   if v is not None and getattr(base, k) != v}
        if changed:
            running = ", ".join(f"{k}={getattr(base, k)!r}" for k in changed)
            wanted = ", ".join(f"{k}={v!r}" for k, v in changed.items())
            raise ClusterError(f"the pseudo-cluster is already up with {running}; run "
                               f"'tfos-cluster down' before starting it with {wanted}")
        return base
    kw = {k: v for k, v in overrides.items() if v is not None}
    kw.setdefault("port_base", config.default_port_base())
    return Options(**kw).validate()


def up(workers: int | None = None, worker_cores: int | None = None,
       worker_memory: str | None = None, port_base: int | None = None,
       bucket: str | None = None, timeout: float = 240, wipe: bool = False,
       verbose: bool = False) -> dict:
    """Start every service that is not running yet, wait until all are healthy, write
    ``conf/`` and ``connection.json``; return the connection info.  Harmless when already up."""
    lay = _layout()
    say = _sayer(lay, verbose)
    with _locked(lay):
        say("up requested")
        state = _load_state(lay)
        alive = {n: e for n, e in state.get("services", {}).items() if _process(e)}
        opts = _options(state, bool(alive), dict(workers=workers, worker_cores=worker_cores,
                                                  worker_memory=worker_memory,
                                                  port_base=port_base, bucket=bucket))
        if wipe:
            if alive:
                raise ClusterError("cannot wipe a running pseudo-cluster: run "
                                   "'tfos-cluster down --wipe' first")
            _wipe(lay)
        java_home, _ = config.find_java()
        jars.fetch(quiet=not verbose)
        python = state.get("python") if alive and state.get("python") else sys.executable
        config.write_conf(lay, opts, python)
        svcs = config.build_services(lay, opts, java_home, python)
        _stop_stray(alive, {s.name for s in svcs})
        state = {"options": opts.to_dict(), "java_home": java_home, "python": python,
                 "home": str(lay.home), "services": dict(alive)}
        _save_state(lay, state)
        to_start = [s for s in svcs if s.name not in alive]
        _check_ports(to_start)
        t0 = time.monotonic()
        started: dict[str, subprocess.Popen] = {}
        try:
            _start_and_wait(lay, state, svcs, to_start, started, java_home, timeout, say)
            _ensure_bucket(opts)
        except BaseException:
            _roll_back(lay, state, started)
            raise
        conn = config.connection_info(lay, opts, java_home, python, svcs)
        conn["started_in_s"] = round(time.monotonic() - t0, 1) if started else None
        _write_json(lay.connection, conn)
        say(f"pseudo-cluster up ({len(started)} started, {len(svcs) - len(started)} already "
            f"running) in {time.monotonic() - t0:.1f}s; connection file: {lay.connection}")
        return conn


def _stop_stray(alive: dict, names: set[str]) -> None:
    """Stop services of an earlier, larger configuration that are still running (e.g. a worker
    beyond ``--workers``), and forget them."""
    stray = [n for n in alive if n not in names]
    if stray:
        terminate(with_descendants([_process(alive[n]) for n in stray if _process(alive[n])]))
        for n in stray:
            alive.pop(n)


def _roll_back(lay: Layout, state: dict, started: dict[str, subprocess.Popen]) -> None:
    """A failed ``up`` stops what it started, so that it leaves nothing half-running behind."""
    _stop_popens(started.values(), wait_s=1)
    for n in started:
        state["services"].pop(n, None)
    _save_state(lay, state)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _fail(name: str, why: str, log: Path) -> None:
    raise ClusterError(f"{name} did not come up: {why}.\nLog: {log}\n--- last lines of "
                       f"{log.name} ---\n{_tail(log)}")


def _format_namenode(lay: Layout, by_name: dict[str, Service], to_start: list[Service],
                     java_home: str, say) -> subprocess.Popen | None:
    """Start ``NameNode -format`` when the NameNode starts for the first time; else None."""
    if "namenode" not in by_name or by_name["namenode"] not in to_start or lay.formatted():
        return None
    # A fresh NameNode gets a new cluster id: an old DataNode directory would not match.
    shutil.rmtree(lay.data_dir, ignore_errors=True)
    say("formatting the HDFS NameNode (first start) ...")
    return _launch(lay, config.format_argv(lay, java_home), by_name["namenode"].env, "namenode-format")


def _init_services(lay: Layout, to_start: list[Service], say) -> dict[str, subprocess.Popen]:
    """Start the one-off preparation (``init_argv``) of each service about to start that needs it."""
    inits = {}
    for s in to_start:
        if s.init_argv and not (s.initialized and s.initialized()):
            say(f"preparing {s.name} (first start) ...")
            inits[s.name] = _launch(lay, s.init_argv, s.env, f"{s.name}-init")
    return inits


def _check_inits(lay: Layout, svcs: list[Service], inits: dict[str, subprocess.Popen]) -> None:
    """Forget the preparations that finished; raise for one that failed."""
    by_name = {s.name: s for s in svcs}
    for name, proc in list(inits.items()):
        if proc.poll() is None:
            continue
        done = by_name[name].initialized
        if proc.returncode != 0 or (done is not None and not done()):
            _fail(f"{name} (preparation)", f"{' '.join(proc.args[-6:])} exited with {proc.returncode}",
                  lay.log(f"{name}-init"))
        del inits[name]


def _stop_popens(popens: Iterable[subprocess.Popen], wait_s: float) -> None:
    """Stop the processes we launched that still run, with their descendants, by PID; reap them."""
    popens = list(popens)
    procs = []
    for p in popens:
        with contextlib.suppress(psutil.Error):
            if p.poll() is None:
                procs.append(psutil.Process(p.pid))
    terminate(with_descendants(procs))
    for p in popens:
        with contextlib.suppress(Exception):
            p.wait(timeout=wait_s)


def _launch_ready(lay: Layout, state: dict, pending: list[Service], started: dict,
                  formatting: bool, say, preparing: frozenset[str] = frozenset()) -> None:
    """Launch each pending service whose dependencies' ports are open (the NameNode only once
    formatted, a service with a preparation once it finished) and record its PID in the state file."""
    for s in list(pending):
        if (s.name == "namenode" and formatting) or s.name in preparing:
            continue
        if all(config.port_open(port) for _, port in s.after):
            say(f"starting {s.name} ...")
            proc = _launch(lay, s.argv, s.env, s.name)
            started[s.name] = proc
            state["services"][s.name] = {
                "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                "port": s.port, "ports": s.ports, "ui": s.ui, "log": str(lay.log(s.name)),
                "group": s.group}
            _save_state(lay, state)
            pending.remove(s)


def _timed_out(lay: Layout, svcs: list[Service], pending: list[Service], healthy: dict,
               last: dict, timeout: float) -> None:
    """Raise for the first service still not healthy: never started, or started but unhealthy."""
    waiting = [s for s in svcs if s.name not in healthy]
    s = waiting[0]
    if s in pending and not s.after:
        _fail(s.name, f"never started: its preparation did not finish in {timeout:.0f}s",
              lay.log(f"{s.name}-init"))
    if s in pending:
        _fail(s.name, f"never started: waited {timeout:.0f}s for "
              f"{', '.join(f'{n}:{p}' for n, p in s.after)}", lay.log(s.after[0][0]))
    _fail(s.name, f"no healthy answer within {timeout:.0f}s (last check: "
          f"{last.get(s.name, 'none')}); still waiting for "
          f"{', '.join(w.name for w in waiting)}", lay.log(s.name))


def _start_and_wait(lay: Layout, state: dict, svcs: list[Service], to_start: list[Service],
                    started: dict, java_home: str, timeout: float, say) -> None:
    deadline = time.monotonic() + timeout
    pending = list(to_start)
    fmt = _format_namenode(lay, {s.name: s for s in svcs}, to_start, java_home, say)
    inits = _init_services(lay, to_start, say)
    try:
        _wait_healthy(lay, state, svcs, pending, started, fmt, inits, deadline, timeout, say)
    finally:
        _stop_popens(inits.values(), wait_s=5)


def _wait_healthy(lay: Layout, state: dict, svcs: list[Service], pending: list[Service],
                  started: dict, fmt: subprocess.Popen | None, inits: dict, deadline: float,
                  timeout: float, say) -> None:
    healthy: dict[str, str] = {}
    last: dict[str, str] = {}
    while True:
        if fmt is not None and fmt.poll() is not None:
            if fmt.returncode != 0 or not lay.formatted():
                _fail("namenode (format)", f"'NameNode -format' exited with {fmt.returncode}",
                      lay.log("namenode-format"))
            fmt = None
        _check_inits(lay, svcs, inits)
        _launch_ready(lay, state, pending, started, fmt is not None, say, frozenset(inits))
        for name, proc in started.items():
            if proc.poll() is not None:
                _fail(name, f"the process exited with code {proc.returncode}", lay.log(name))
        for s in svcs:
            if s.name in healthy or s in pending:
                continue
            ok, detail = s.health()
            last[s.name] = detail
            if ok:
                healthy[s.name] = detail
                say(f"  {s.name}: healthy ({detail})")
        if len(healthy) == len(svcs):
            return
        if time.monotonic() > deadline:
            _timed_out(lay, svcs, pending, healthy, last, timeout)
        time.sleep(0.5)


def _ensure_bucket(opts: Options, timeout: float = 30) -> None:
    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{opts.port('s3')}",
                      aws_access_key_id=config.S3_ACCESS_KEY,
                      aws_secret_access_key=config.S3_SECRET_KEY, region_name=config.S3_REGION,
                      config=Config(connect_timeout=5, read_timeout=timeout,
                                    retries={"max_attempts": 3},
                                    proxies={}))
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if opts.bucket not in names:
        s3.create_bucket(Bucket=opts.bucket)


def down(wipe: bool = False, verbose: bool = False) -> list[dict]:
    """Stop every process of the pseudo-cluster by PID and verify that none is left and that its
    ports are free.  With ``wipe`` also delete its data (HDFS, YARN, Spark work dirs, logs)."""
    lay = _layout()
    say = _sayer(lay, verbose)
    with _locked(lay):
        state = _load_state(lay)
        entries = state.get("services", {})
        waves: tuple[list, list] = ([], [])
        stopped = []
        for name, e in entries.items():
            p = _process(e)
            if p:
                # Clients of other daemons go first: a NodeManager whose ResourceManager is
                # gone retries for minutes before it exits; a DataNode likewise for its NameNode.
                waves[0 if name in FIRST_WAVE or name.startswith("spark-worker") else 1].append(p)
                stopped.append({"service": name, "pid": e["pid"]})
                say(f"stopping {name} (PID {e['pid']})")
        survivors = []
        # A NodeManager keeps finished applications until their container logs expire and
        # waits for them on SIGTERM (7-17 s); it keeps no state (recovery is off) and has
        # already unregistered from the ResourceManager by then: SIGKILL after a short grace.
        for i, (wave, grace) in enumerate(zip(waves, (5.0, STOP_TIMEOUT))):
            survivors += terminate(with_descendants(wave), timeout=grace)
            say(f"wave {i + 1} stopped")
        seen = {p["pid"] for p in stopped}
        strays = [p for p in _leftovers(lay) if p.pid not in seen]
        if strays:
            say(f"stopping leftover processes {[p.pid for p in strays]}")
            survivors += terminate(strays)
        if survivors:
            raise ClusterError("these processes survived SIGKILL: "
                               + ", ".join(f"PID {p.pid}" for p in survivors))
        left = _leftovers(lay)
        if left:
            terminate(left)
            left = [p for p in left if p.is_running()]
        ports = sorted({port for e in entries.values() for port in e.get("ports", [])})
        deadline = time.monotonic() + 15
        busy = [port for port in ports if not port_free(port)]
        while busy and time.monotonic() < deadline:
            time.sleep(0.3)
            busy = [port for port in busy if not port_free(port)]
        say(f"ports checked ({len(ports)}), busy: {busy}")
        state["services"] = {}
        _save_state(lay, state)
        with contextlib.suppress(FileNotFoundError):
            lay.connection.unlink()
        if wipe:
            _wipe(lay)
            say(f"wiped {lay.home}")
        if left:
            raise ClusterError("processes left after down: "
                               + ", ".join(f"PID {p.pid}" for p in left))
        if busy:
            raise ClusterError(f"ports still bound after down: {busy} "
                               f"({', '.join(_port_owner(p) for p in busy)})")
        say(f"stopped {len(stopped)} service(s); no process left, ports free")
        return stopped


def _wipe(lay: Layout) -> None:
    for d in (lay.data, lay.logs, lay.run, lay.conf, lay.spark_conf, lay.kafka_conf):
        shutil.rmtree(d, ignore_errors=True)
    for f in (lay.state, lay.connection):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def status() -> list[dict]:
    """One row per service: name, PID, port, UI URL, alive, healthy, detail."""
    lay = _layout()
    state = _load_state(lay)
    entries = state.get("services", {})
    rows = []
    if state.get("options"):
        opts = Options(**state["options"])
        try:
            svcs = config.build_services(lay, opts, state.get("java_home", ""),
                                         state.get("python") or sys.executable)
        except Exception:  # noqa: BLE001 - status must always answer
            svcs = []
    else:
        svcs = []
    known = {s.name: s for s in svcs}
    for name in [s.name for s in svcs] + [n for n in entries if n not in known]:
        e = entries.get(name, {})
        proc = _process(e) if e else None
        row = {"service": name, "pid": e.get("pid") if proc else None,
               "port": known[name].port if name in known else e.get("port"),
               "ui": known[name].ui if name in known else e.get("ui"),
               "alive": bool(proc), "healthy": False, "detail": "stopped",
               "log": str(lay.log(name))}
        if proc:
            with contextlib.suppress(psutil.Error):
                row["rss_mb"] = round(proc.memory_info().rss / 2**20)
            if name in known:
                ok, detail = known[name].health()
                row["healthy"], row["detail"] = ok, detail
            else:
                row["detail"] = "running (not part of the current configuration)"
        rows.append(row)
    return rows


def any_alive() -> bool:
    """True when any process of the pseudo-cluster (per its state file) is running."""
    state = _load_state(_layout())
    return any(_process(e) for e in state.get("services", {}).values())


def is_up() -> bool:
    rows = status()
    return bool(rows) and all(r["alive"] and r["healthy"] for r in rows)


def connection() -> dict:
    """The connection info of the running pseudo-cluster (``connection.json``)."""
    lay = _layout()
    try:
        conn = json.loads(lay.connection.read_text())
    except FileNotFoundError:
        raise ClusterError(f"the pseudo-cluster is not up (no {lay.connection}); start it with "
                           "'tfos-cluster up' (TFOS_CLUSTER_HOME={})".format(lay.home)) from None
    state = _load_state(lay)
    if not any(_process(e) for e in state.get("services", {}).values()):
        raise ClusterError(f"the pseudo-cluster in {lay.home} is not running (stale "
                           f"{lay.connection.name}); start it with 'tfos-cluster up'")
    return conn


def rss_total() -> int:
    """Resident memory (bytes) of every process of the pseudo-cluster, descendants included."""
    state = _load_state(_layout())
    procs = [p for p in (_process(e) for e in state.get("services", {}).values()) if p]
    total = 0
    for p in with_descendants(procs):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def client_env(conn: dict | None = None) -> dict:
    """Environment variables for clients of the cluster (S3 SDKs, Hadoop/Spark clients)."""
    conn = conn or connection()
    s3 = conn["s3"]
    env = {
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_ENDPOINT_URL_S3": s3["endpoint"],
        "AWS_ACCESS_KEY_ID": s3["access_key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret_key"],
        "AWS_DEFAULT_REGION": s3["region"],
        "AWS_REGION": s3["region"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "HADOOP_CONF_DIR": conn["hadoop_conf_dir"],
        "YARN_CONF_DIR": conn["hadoop_conf_dir"],
        "SPARK_LOCAL_IP": HOST,
        "TFOS_CLUSTER_HOME": conn.get("home", str(config.cluster_home())),
        "TFOS_HDFS_URI": conn["hdfs"]["uri"],
        "TFOS_SPARK_MASTER": conn["spark"]["master"],
        "TFOS_S3_BUCKET": s3["bucket"],
    }
    if conn.get("kafka", {}).get("bootstrap"):
        env["TFOS_KAFKA_BOOTSTRAP"] = conn["kafka"]["bootstrap"]
    if conn.get("java_home"):
        env["JAVA_HOME"] = conn["java_home"]
    if conn.get("spark", {}).get("conf_dir"):
        env["SPARK_CONF_DIR"] = conn["spark"]["conf_dir"]
    if conn.get("python"):
        env["PYSPARK_PYTHON"] = conn["python"]
    return env
