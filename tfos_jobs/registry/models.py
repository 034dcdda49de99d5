"""A model registry kept on storage: no server, any URI ``hdfs_io`` reaches (hdfs://, s3://, file://).

A registered model is a directory of numbered exports in TF Serving's layout plus the registry's files::

    <model>/1/, <model>/2/, ...                  exports, write-once (:func:`tfos_jobs.export.publish_export`)
    <model>/_registry/events/0000000001.json     the log: one event per change, write-once, numbered
    <model>/_registry/state.json                 the pointer object: aliases and versions as of event N

Every change (a version number taken, a published version registered with its lineage, an alias
moved or rolled back, versions deleted) is an event appended with :func:`hdfs_io.create_new`: of
writers racing for event N exactly one wins, and the others re-read and try N+1. So two trainings
never get one version number and two promotions are ordered. The state is the events applied in order;
``state.json`` is that state as of some event, replaced atomically after each change, so a reader needs
one read and one probe for a newer event. A reader applies any newer events it finds: a writer that
died between its event and the pointer costs readers a read, never a wrong answer.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import hdfs_io
from tfos_jobs.registry.ledger import MAX_TRIES, Ledger

FORMAT = "tfos.registry/1"
REGISTRY_DIR = "_registry"
CHAMPION, CHALLENGER = "champion", "challenger"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,63}"


class RegistryError(ValueError):
    """A change the registry refuses (unknown version, alias not set, nothing to roll back to)."""


@dataclasses.dataclass
class State:
    """The registry's state after event ``seq``: versions (number -> record) and aliases (name -> the
    versions it pointed to, oldest first: the last is current, the one before is what rollback restores)."""
    seq: int = 0
    versions: dict[int, dict] = dataclasses.field(default_factory=dict)
    aliases: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    alias_moved: dict[str, str] = dataclasses.field(default_factory=dict)   # alias -> time of its last move

    def alias(self, name: str) -> int | None:
        stack = self.aliases.get(name)
        return stack[-1] if stack else None

    def current_aliases(self) -> dict[str, int]:
        return {name: stack[-1] for name, stack in sorted(self.aliases.items()) if stack}

    def ready(self) -> list[int]:
        return sorted(n for n, v in self.versions.items() if v["state"] == "ready")

    def apply(self, event: dict) -> None:
        op = event["op"]
        if op == "adopt":
            for n in event["versions"]:
                self.versions[int(n)] = {"state": "ready", "registered": event["time"], "lineage": {"adopted": True},
                                         "metrics": {}}
        elif op == "allocate":
            self.versions[int(event["version"])] = {"state": "allocated", "allocated": event["time"], "by": event["by"]}
        elif op == "register":
            self.versions[int(event["version"])] = {"state": "ready", "registered": event["time"], "by": event["by"],
                                                    "lineage": event.get("lineage", {}),
                                                    "metrics": event.get("metrics", {})}
        elif op == "alias":
            self.alias_moved[event["alias"]] = event["time"]
            stack = self.aliases.setdefault(event["alias"], [])
            if event.get("rollback"):
                stack.pop()
            else:
                stack.append(int(event["version"]))
        elif op == "unalias":
            self.aliases.pop(event["alias"], None)
            self.alias_moved.pop(event["alias"], None)
        elif op == "delete":
            for n in event["versions"]:
                self.versions[int(n)]["state"] = "deleted"
        else:
            raise RegistryError(f"unknown registry event {op!r} (seq {event.get('seq')}): written by a newer version?")
        self.seq = int(event["seq"])

    def to_json(self) -> dict:
        return {"format": FORMAT, "seq": self.seq, "aliases": self.current_aliases(),
                "alias_history": {k: v for k, v in sorted(self.aliases.items())},
                "alias_moved": dict(sorted(self.alias_moved.items())),
                "versions": {str(n): v for n, v in sorted(self.versions.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "State":
        if data.get("format") != FORMAT:
            raise RegistryError(f"registry state format {data.get('format')!r}, expected {FORMAT!r}")
        return cls(int(data["seq"]), {int(n): v for n, v in data["versions"].items()},
                   {k: [int(x) for x in v] for k, v in data["alias_history"].items()}, dict(data["alias_moved"]))


def check_alias(name: str) -> str:
    if not re.fullmatch(ALIAS_PATTERN, name or ""):
        raise RegistryError(f"alias {name!r}: a letter, then letters, digits, '_' or '-' (at most 64)")
    return name


class ModelRegistry:
    """One registered model: the versioned export URI ``uri`` and its registry files (see module doc).

    Reading is cheap (``state()``: one small read and one probe); every change is one event of its
    :class:`~tfos_jobs.registry.ledger.Ledger`. ``by`` names who changed it in the log (default:
    user@host:pid)."""

    def __init__(self, uri: str, by: str | None = None):
        self.uri = uri.rstrip("/")
        self.ledger = Ledger(hdfs_io.join(self.uri, REGISTRY_DIR), State, State.from_json, by)

    # -- reading --------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.ledger.exists()

    def state(self) -> State:
        """The state after the last event (the pointer, then any events written after it)."""
        return self.ledger.state()

    def history(self) -> list[dict]:
        """Every event, oldest first."""
        return self.ledger.history()

    def version_uri(self, version: int) -> str:
        return hdfs_io.join(self.uri, str(int(version)))

    def resolve(self, ref: str | int, state: State | None = None) -> int:
        """A version number from ``ref``: a number, an alias, or ``latest`` (the highest ready version)."""
        state = state or self.state()
        text = str(ref)
        if text.isdigit():
            version = int(text)
            if state.versions.get(version, {}).get("state") != "ready":
                raise RegistryError(f"{self.uri}: version {version} is not a registered, ready version "
                                    f"(ready: {state.ready() or 'none'})")
            return version
        if text == "latest":
            if not state.ready():
                raise RegistryError(f"{self.uri}: no ready version")
            return state.ready()[-1]
        version = state.alias(check_alias(text))
        if version is None:
            raise RegistryError(f"{self.uri}: alias {text!r} is not set (set: {state.current_aliases() or 'none'}); "
                                f"set it with `tfos-registry promote {self.uri} <version> --alias {text}`")
        return version

    # -- changes --------------------------------------------------------------------------------------
    def allocate(self) -> int:
        """Take the next version number (one more than every number taken or present on storage)."""
        def change(state: State) -> dict:
            present = _numbered_dirs(self.uri)
            return {"op": "allocate", "version": max([*state.versions, *present], default=0) + 1}
        return int(self._append(change)["version"])

    def register(self, version: int, *, lineage: dict, metrics: dict) -> dict:
        """Mark an allocated version ready once its export is complete (``_SUCCESS`` written)."""
        def change(state: State) -> dict:
            record = state.versions.get(int(version))
            if record is None or record["state"] != "allocated":
                raise RegistryError(f"{self.uri}: version {version} was not allocated by the registry "
                                    f"({record['state'] if record else 'unknown'})")
            if not hdfs_io.exists(hdfs_io.join(self.version_uri(version), hdfs_io.SUCCESS)):
                raise RegistryError(f"{self.version_uri(version)} is not a complete export (no _SUCCESS)")
            return {"op": "register", "version": int(version), "lineage": lineage, "metrics": metrics}
        return self._append(change)

    def promote(self, ref: str | int, alias: str = CHAMPION, *, reason: str = "", extra: dict | None = None) -> dict:
        """Point ``alias`` at a ready version (a number, another alias, or ``latest``)."""
        check_alias(alias)

        def change(state: State) -> dict:
            version = self.resolve(ref, state)
            return {"op": "alias", "alias": alias, "version": version, "previous": state.alias(alias),
                    "reason": reason, **(extra or {})}
        return self._append(change)

    def rollback(self, alias: str = CHAMPION, *, reason: str = "") -> dict:
        """Point ``alias`` back at the version it pointed to before its last promotion."""
        check_alias(alias)

        def change(state: State) -> dict:
            stack = state.aliases.get(alias, [])
            if len(stack) < 2:
                raise RegistryError(f"{self.uri}: alias {alias!r} has no earlier version to roll back to "
                                    f"(history: {stack or 'never set'})")
            target = stack[-2]
            if state.versions[target]["state"] != "ready":
                raise RegistryError(f"{self.uri}: cannot roll {alias!r} back to version {target}: it was deleted")
            return {"op": "alias", "alias": alias, "version": target, "previous": stack[-1], "rollback": True,
                    "reason": reason}
        return self._append(change)

    def unalias(self, alias: str, *, reason: str = "") -> dict:
        check_alias(alias)

        def change(state: State) -> dict:
            if alias not in state.aliases:
                raise RegistryError(f"{self.uri}: alias {alias!r} is not set")
            return {"op": "unalias", "alias": alias, "reason": reason}
        return self._append(change)

    def retention(self, keep_last: int, state: State | None = None) -> list[int]:
        """The versions a retention of ``keep_last`` would delete: every ready or abandoned version but
        the last ``keep_last`` ready ones, the aliased ones and each alias's rollback target."""
        if keep_last < 1:
            raise RegistryError(f"keep_last must be at least 1, got {keep_last}")
        state = state or self.state()
        kept = set(state.ready()[-keep_last:])
        for stack in state.aliases.values():
            kept.update(stack[-2:])
        newest = max(state.versions, default=0)
        return sorted(n for n, v in state.versions.items()
                      if n not in kept and v["state"] != "deleted"
                      and not (v["state"] == "allocated" and n == newest))   # may still be training

    def retain(self, keep_last: int, *, reason: str = "") -> list[int]:
        """Delete what :meth:`retention` names: the event first (readers stop using them), then the files."""
        doomed: list[int] = []

        def change(state: State) -> dict | None:
            doomed[:] = self.retention(keep_last, state)
            if not doomed:
                return None
            return {"op": "delete", "versions": doomed, "keep_last": keep_last, "reason": reason}
        self._append(change)
        self.sweep()
        return doomed

    def sweep(self) -> list[int]:
        """Delete the files of versions the log says are deleted (left by a crash after the event)."""
        state = self.state()
        gone = [n for n in _numbered_dirs(self.uri) if state.versions.get(n, {}).get("state") == "deleted"]
        for n in gone:
            hdfs_io.delete(self.version_uri(n), recursive=True, missing_ok=True)
        return gone

    # -- the log --------------------------------------------------------------------------------------
    def _append(self, change) -> dict:
        """Append ``change(newest state)`` (see :class:`Ledger`); the first change also adopts the
        complete numbered versions published before the registry existed."""
        def first_adopting(state: State) -> dict:
            if state.seq == 0:
                adopted = sorted(n for n, complete in _numbered_dirs(self.uri).items() if complete)
                if adopted:
                    return {"op": "adopt", "versions": adopted}
            return change(state)
        for _ in range(MAX_TRIES):
            event = self.ledger.append(first_adopting)
            if event is None or event["op"] != "adopt":
                return event
        raise RegistryError(f"{self.uri}: could not adopt its versions")


def _numbered_dirs(uri: str) -> dict[int, bool]:
    from tfos_jobs.export import versions
    return versions(uri)


def parse_ref(text: str) -> tuple[str, str | None]:
    """``URI@alias`` -> ``(URI, alias)``; a plain URI -> ``(URI, None)``."""
    base, at, alias = text.rpartition("@")
    if at and base and "/" not in alias:
        return base, check_alias(alias)
    return text, None


def resolver(text: str) -> Callable[[], str]:
    """A function giving the export directory ``text`` names now: the version an alias points to
    (``URI@champion``, asked again at each call), or :func:`tfos_jobs.export.export_dir` of a URI."""
    uri, alias = parse_ref(text)
    if alias is None:
        from tfos_jobs.export import export_dir
        return lambda: export_dir(uri)
    registry = ModelRegistry(uri)
    return lambda: registry.version_uri(registry.resolve(alias))


def list_models(root: str) -> list[str]:
    """The registered models directly under ``root`` (directories holding ``_registry``)."""
    if not hdfs_io.exists(root):
        raise FileNotFoundError(f"registry {root} does not exist")
    return sorted(info.uri.rstrip("/") for info in hdfs_io.ls(root)
                  if info.is_dir and hdfs_io.exists(hdfs_io.join(info.uri, REGISTRY_DIR)))
