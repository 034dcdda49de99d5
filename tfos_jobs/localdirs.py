"""Private local directories: per user, per job, mode 0700, removed when the job ends.

Everything this package keeps on an executor's local disk lives under one per-user root,
``<base>/tfos-<uid>``, where ``<base>`` is ``$TMPDIR`` when it names a directory (YARN and Spark point
it at the container's or executor's own scratch), else :func:`tempfile.gettempdir`. A job's
directories sit below that root (``<root>/<run_id>/...``, the scoring cache in ``<root>/scoring``).

Nothing found on disk is trusted blindly: another local user may pre-create ``/tmp/tfos-<uid>`` (or a
symlink of that name) and plant files in it. So a directory is created 0700, and one that already
exists is used only if it is a real directory (no symlink) owned by us that the group and others
cannot write (:class:`UnsafeLocalDir` otherwise, naming the path and what is wrong with it).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from typing import Iterator

PRIVATE = 0o077   # no access at all for group and others (our own directories)
SHARED = 0o022    # group and others may not write (a root the user chose)


class UnsafeLocalDir(PermissionError):
    """A local directory we would rely on is not ours alone (foreign owner, loose mode, a symlink)."""


def base_dir() -> str:
    """``$TMPDIR`` when set to a directory, else the system's temporary directory."""
    tmpdir = os.environ.get("TMPDIR", "")
    return tmpdir if tmpdir and os.path.isdir(tmpdir) else tempfile.gettempdir()


def user_root(base: str | None = None) -> str:
    """The per-user root's path (not created): ``<base>/tfos-<uid>``."""
    return os.path.join(base or base_dir(), f"tfos-{os.geteuid()}")


def check_dir(path: str, forbidden: int = PRIVATE) -> str:
    """Raise :class:`UnsafeLocalDir` unless ``path`` is a directory (not a symlink) owned by the
    current user whose mode has none of the ``forbidden`` bits; return ``path``."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeLocalDir(f"refusing to use {path}: it is not a directory but a "
                             f"{'symlink' if stat.S_ISLNK(info.st_mode) else 'file'}")
    if info.st_uid != os.geteuid():
        raise UnsafeLocalDir(f"refusing to use {path}: it is owned by uid {info.st_uid}, not by this user "
                             f"(uid {os.geteuid()}); another user may have created it. Remove it, or set "
                             "TMPDIR to a directory of your own")
    mode = stat.S_IMODE(info.st_mode)
    if mode & forbidden:
        raise UnsafeLocalDir(f"refusing to use {path}: its mode is {mode:04o}; it must not be "
                             f"{'accessible' if forbidden == PRIVATE else 'writable'} by group or others "
                             f"(chmod {0o700 if forbidden == PRIVATE else 0o755:o} it, or remove it)")
    return path


def ensure_dir(path: str, forbidden: int = PRIVATE) -> str:
    """Create ``path`` (its parent must exist) with mode 0700, or check the existing one (see
    :func:`check_dir`); return ``path``."""
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)   # exactly 0700, whatever the umask
    except FileExistsError:
        pass
    return check_dir(path, forbidden)


def ensure_dirs(root: str, *parts: str, user_given: bool = False) -> str:
    """``root/parts...``, each level created 0700 or checked. ``root`` itself is the per-user root,
    else a root the user chose (``user_given``: its parents are created as needed, and it may be
    world-readable, not writable). Retried when a level vanishes meanwhile (another node of the same
    run on this host removing the run's last, empty, directory)."""
    for _ in range(4):
        try:
            return _ensure_levels(root, parts, user_given)
        except FileNotFoundError:
            continue
    return _ensure_levels(root, parts, user_given)


def _ensure_levels(root, parts, user_given):
    if user_given:
        os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    path = ensure_dir(root, SHARED if user_given else PRIVATE)
    for part in parts:
        path = ensure_dir(os.path.join(path, part))
    return path


def scratch_root(local_root: str = "") -> str:
    """The node-local scratch root: the user's ``local_root``, else the per-user root."""
    return local_root or user_root()


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_if_empty(*paths: str) -> None:
    """``rmdir`` each path in turn (a missing one is skipped) until one is not empty: another node of
    the run may still use it."""
    for path in paths:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            return


@contextlib.contextmanager
def node_dirs(node) -> Iterator[str]:
    """A TF node's local directories for one attempt (a :class:`tfos_jobs.node_spec.Node`): creates the
    node's scratch (``node.local()``, a PS worker's stage directory) privately under its run's
    directory and yields a fresh work directory inside ``node.local()``. When the node ends, success
    or failure, its scratch is removed, then the run's directories once empty (checkpoints to keep
    go to ``model_dir``)."""
    local_root = node.spec.config.run.local_root
    root = scratch_root(local_root)
    own = node.scratch_dirs()
    for path in own:
        ensure_dirs(root, *os.path.relpath(path, root).split(os.sep), user_given=bool(local_root))
    try:
        yield tempfile.mkdtemp(prefix=f"tfos-{node.role}{node.index}-", dir=own[0])
    finally:
        for path in own:
            remove(path)
        if node.spec.config.run.run_id:
            remove_if_empty(node.stage_root, node.run_root)


def file_sha256(path: str) -> str:
    """The SHA-256 of a local file, read in 8 MiB blocks (cache and checkpoint manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
