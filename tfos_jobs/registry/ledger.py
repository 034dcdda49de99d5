"""A ledger on storage: numbered, write-once JSON events and a snapshot of what they add up to.

    <root>/events/0000000001.json, ...    the events, each written once with hdfs_io.create_new
    <root>/state.json                     the state after some event (replaced atomically)

Appending is compare-and-set on the event's number: a writer computes its event from the newest state
(after event N) and creates event N+1; when another writer created it first, it reads again and
recomputes. So every event was decided on the state it follows, whoever the writers were. A reader
takes the snapshot and applies the events after it: a writer that died between its event and the
snapshot costs readers a read, never a wrong answer. The model registry and the autopilot's decisions
are ledgers.
"""
from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
from typing import Callable, Generic, Protocol, TypeVar

import hdfs_io

MAX_TRIES = 20          # events lost to other writers before a change gives up


class LedgerState(Protocol):
    seq: int

    def apply(self, event: dict) -> None: ...

    def to_json(self) -> dict: ...


S = TypeVar("S", bound=LedgerState)


class Conflict(RuntimeError):
    """Other writers kept taking the next event number."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


class Ledger(Generic[S]):
    """The events and snapshot under ``root``; ``new_state()`` is the state before any event and
    ``load_state(dict)`` reads a snapshot back."""

    def __init__(self, root: str, new_state: Callable[[], S], load_state: Callable[[dict], S], by: str | None = None):
        self.root = root.rstrip("/")
        self.new_state, self.load_state = new_state, load_state
        self.by = by or who()
        self.snapshot_uri = hdfs_io.join(self.root, "state.json")

    def exists(self) -> bool:
        return hdfs_io.exists(self.snapshot_uri) or hdfs_io.exists(self.event_uri(1))

    def event_uri(self, seq: int) -> str:
        return hdfs_io.join(self.root, "events", f"{seq:010d}.json")

    def read(self, seq: int) -> dict | None:
        try:
            return json.loads(hdfs_io.read_snapshot(self.event_uri(seq)))
        except FileNotFoundError:
            return None

    def state(self) -> S:
        """The state after the last event."""
        state = self.new_state()
        try:   # replaced by other writers at any time: read one whole version of it
            state = self.load_state(json.loads(hdfs_io.read_snapshot(self.snapshot_uri)))
        except FileNotFoundError:
            pass
        while (event := self.read(state.seq + 1)) is not None:
            state.apply(event)
        return state

    def history(self, after: int = 0) -> list[dict]:
        """The events after number ``after``, oldest first."""
        events, seq = [], after + 1
        while (event := self.read(seq)) is not None:
            events.append(event)
            seq += 1
        return events

    def try_append(self, state: S, body: dict) -> dict | None:
        """Create event ``state.seq + 1`` from ``body``; None when another writer created it first.
        On success ``state`` has the event applied and the snapshot is replaced."""
        event = {"seq": state.seq + 1, "time": now(), "by": self.by, **body}
        if not hdfs_io.create_new(self.event_uri(event["seq"]), json.dumps(event, sort_keys=True).encode()):
            return None
        state.apply(event)
        with hdfs_io.open(self.snapshot_uri, "w") as handle:
            json.dump(state.to_json(), handle, indent=1, sort_keys=True)
        return event

    def append(self, change: Callable[[S], dict | None]) -> dict | None:
        """Append ``change(newest state)``, recomputed after every lost race; ``change`` may raise to
        refuse, or return None to append nothing."""
        for _ in range(MAX_TRIES):
            state = self.state()
            body = change(state)
            if body is None:
                return None
            event = self.try_append(state, body)
            if event is not None:
                return event
        raise Conflict(f"{self.root}: gave up after {MAX_TRIES} tries: other writers keep appending")
