"""Cluster formation for tensorflowonspark's nodes: the driver's end of TFoS's reservation protocol,
without the hazards of ``tensorflowonspark.reservation.Server``.

TFoS stays the cluster-formation layer: on each executor ``TFSparkNode.run`` registers the node
(``REG``), polls until every node has (``QUERY``), reads the list (``QINFO``) and builds the TF cluster
spec from it. Its client speaks length-prefixed pickles and runs inside TFoS's own code, so the wire
format stays. TFoS's server, though, listens on every interface, unpickles whatever arrives (a pickled
``os.system`` runs on the driver), hands every node's manager ``authkey`` to anyone who asks, obeys
``STOP`` from anyone, buffers a length prefix of up to 4 GiB and serves all clients on one thread
without a timeout. This server speaks the same protocol with none of that:

* it binds the driver's address only, on an asyncio loop (``tfos_jobs.wire.server``): connections are
  capped (idle ones evicted first), each has a deadline and a per-message idle timeout;
* a message over :data:`MAX_MESSAGE` bytes is refused from its length prefix, before it is read;
* messages are unpickled by :class:`PlainUnpickler`, which builds dicts, lists, tuples, strings,
  bytes, numbers, booleans and None only: any global (class, function) aborts the load;
* a registration is accepted only from a host that runs one of this Spark application's executors,
  only for a node of this cluster's template that has not registered yet, only with the TF port that
  node claimed beforehand over the authenticated control channel
  (:func:`tfos_jobs.executor.node.claim_and_reserve`), and only until the expected count is reached;
  it is stored without its ``authkey`` (TFoS uses that key on the executor only);
* ``STOP`` is refused (our trainer stops nodes through the authenticated control channel).
"""
from __future__ import annotations

import asyncio
import io
import logging
import pickle
import socket
import struct
import threading
from typing import Callable

from tfos_jobs.wire.auth import BadMessage, check_fields
from tfos_jobs.wire.server import LoopServer, peer_of

log = logging.getLogger("tfos_jobs")

MAX_MESSAGE = 16 << 10         # a registration pickles to about 300 bytes
IDLE_TIMEOUT_S = 30.0          # TFoS polls once a second while it waits for the other nodes
PLAIN_TYPES = (dict, list, tuple, str, bytes, int, float, bool, type(None))
REGISTRATION = {"executor_id": int, "host": str, "job_name": str, "task_index": int, "port": int}
KEPT = ("executor_id", "host", "job_name", "task_index", "port", "tb_pid", "tb_port", "addr")


class PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every opcode that would import a name goes through ``find_class``,
    which refuses, so no class is instantiated and nothing is called."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data is accepted")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


def loads_plain(data: bytes):
    """The object pickled in ``data`` if it is plain data (checked all the way down), else BadMessage."""
    try:
        obj = PlainUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - any malformed pickle is a bad message
        raise BadMessage(f"not a plain-data pickle: {err}") from None
    stack = [obj]
    while stack:
        item = stack.pop()
        if type(item) not in PLAIN_TYPES:
            raise BadMessage(f"refused a {type(item).__name__} in a reservation message")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return obj


class ReservationServer(LoopServer):
    """The driver's end of one TF cluster's formation. ``template`` maps TFoS job names to executor
    ids (``{"chief": [0], "worker": [1, 2]}``); ``executor_hosts()`` returns the IP addresses of this
    application's executors (asked again when a peer is not among the last answer);
    ``claimed_port(executor_id)`` the port that executor's node claimed (``ControlServer.claimed_port``)."""

    def __init__(self, host: str, template: dict, executor_hosts: Callable[[], set],
                 claimed_port: Callable[[int], int | None], *, deadline_s: float = 600.0,
                 max_connections: int = 256):
        self._claimed_port = claimed_port
        self._roles = {eid: (job, index) for job, ids in template.items() for index, eid in enumerate(ids)}
        self._executor_hosts, self._known_hosts = executor_hosts, set()
        self._nodes = {}
        self._lock = threading.Lock()
        super().__init__(host, name="cluster formation", limit=MAX_MESSAGE, max_connections=max_connections,
                         deadline_s=deadline_s)

    @property
    def host_port(self) -> tuple:
        host, port = self.address.rsplit(":", 1)
        return host, int(port)

    def done(self) -> bool:
        with self._lock:
            return len(self._nodes) >= len(self._roles)

    def remaining(self) -> int:
        with self._lock:
            return len(self._roles) - len(self._nodes)

    def nodes(self) -> list:
        with self._lock:
            return [dict(node) for _, node in sorted(self._nodes.items())]

    async def exchange(self, reader, writer):
        peer = writer.get_extra_info("peername")[0]
        while True:
            try:
                prefix = await asyncio.wait_for(reader.readexactly(4), IDLE_TIMEOUT_S)
            except asyncio.IncompleteReadError:
                return   # the client is done
            (size,) = struct.unpack(">I", prefix)
            if size > MAX_MESSAGE:
                raise BadMessage(f"a reservation message of {size} bytes (at most {MAX_MESSAGE})")
            msg = loads_plain(await asyncio.wait_for(reader.readexactly(size), IDLE_TIMEOUT_S))
            self.prove(writer)
            reply = self._answer(msg, peer, peer_of(writer))
            data = pickle.dumps(reply, protocol=4)
            writer.write(struct.pack(">I", len(data)) + data)
            await writer.drain()

    def _answer(self, msg, peer_ip, peer):
        if not isinstance(msg, dict) or msg.get("type") not in ("REG", "QUERY", "QINFO", "STOP"):
            raise BadMessage(f"unknown reservation message from {peer}")
        kind = msg["type"]
        if kind == "QUERY":
            return self.done()
        if kind == "QINFO":
            return self.nodes()
        if kind == "STOP":
            log.warning("cluster formation: refused STOP from %s (nodes stop through the control channel)", peer)
            return "ERR"
        try:
            self._register(msg.get("data"), peer_ip)
        except BadMessage as err:
            log.warning("cluster formation: refused a registration from %s: %s", peer, err)
            return "ERR"
        return "OK"

    def _register(self, data, peer_ip):
        if not isinstance(data, dict):
            raise BadMessage("registration without node data")
        check_fields(data, REGISTRATION, "registration")
        if not self._is_executor(peer_ip):
            raise BadMessage(f"{peer_ip} runs none of this application's executors")
        eid = data["executor_id"]
        if self._roles.get(eid) != (data["job_name"], data["task_index"]):
            raise BadMessage(f"executor id {eid} as {data['job_name']}:{data['task_index']} is not a node "
                             "of this cluster")
        if data["port"] != self._claimed_port(eid):
            raise BadMessage(f"executor id {eid} registered port {data['port']}, not the one its node claimed")
        with self._lock:
            if eid in self._nodes:
                raise BadMessage(f"executor id {eid} registered already")
            self._nodes[eid] = {key: data.get(key) for key in KEPT}   # never the authkey

    def _is_executor(self, ip):
        if ip not in self._known_hosts:
            self._known_hosts = self._executor_hosts()
        return ip in self._known_hosts


def spark_executor_ips(sc) -> set:
    """IP addresses of the hosts this Spark application's executors (and driver) run on."""
    ips = set()
    for info in sc._jsc.sc().statusTracker().getExecutorInfos():
        try:
            ips.update(a[4][0] for a in socket.getaddrinfo(info.host(), None, socket.AF_INET))
        except OSError:
            log.warning("cluster formation: cannot resolve executor host %s", info.host())
    return ips
