"""Which store serves a URI, and the cache of store objects (clients).

The scheme picks the store class (:data:`hdfs_io.stores.REGISTRY`, see :mod:`hdfs_io.stores` for
which client serves which scheme and why). One store object, holding one ``pyarrow.fs.FileSystem``,
is made per scheme, or per authority for stores with ``client_per_authority`` (HDFS NameNodes, viewfs
mount tables), and cached until :func:`reset`.
"""
from __future__ import annotations

import os
import threading

import pyarrow.fs as pafs

from .stores import Store
from .uri import Location, parse

_cache: dict[tuple[str, str], Store] = {}
_lock = threading.Lock()


def reset() -> None:
    """Forget cached clients (after changing ``HADOOP_CONF_DIR``, AWS variables or the timeout)."""
    with _lock:
        _cache.clear()


_inherited: list = []


def _after_fork_in_child() -> None:
    # Clients hold threads and connections (hdfs-native's tokio runtime) that a forked child (Spark and
    # TFoS fork Python workers) does not inherit in working order, so the child makes its own. The
    # parent's objects are kept referenced, never dropped: destroying hdfs-native's client waits for
    # runtime threads that do not exist in the child, and would hang it.
    global _lock
    _lock = threading.Lock()
    _inherited.append(dict(_cache))
    _cache.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def store_for(loc: Location) -> Store:
    """The (cached) store serving ``loc``."""
    cls = loc.store_class
    key = cls.client_key(loc)
    with _lock:
        store = _cache.get(key)
        if store is None:
            store = _cache[key] = cls(key[0], key[1])
        return store


def resolve(uri: str) -> tuple[Store, Location]:
    """``(store, Location)`` for a URI; ``Location.path`` is the path ``store.fs`` takes."""
    loc = parse(uri)
    return store_for(loc), loc


def filesystem_for(loc: Location) -> pafs.FileSystem:
    """The ``pyarrow.fs.FileSystem`` serving ``loc``."""
    return store_for(loc).fs
