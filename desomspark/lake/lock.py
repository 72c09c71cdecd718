"""One writer at a time: the lake's commit lock.

Every commit (:meth:`Lake.commit_nights`, :meth:`Lake.commit_batch`) and every roll-forward of an
interrupted one (:meth:`Lake.recover`) runs while holding ``<lake>/_LOCK``; readers never take it.
A writer holds it only while it commits, not while it computes, so ``watch`` (a lock per
micro-batch), ``nightly`` and ``assign`` interleave.

The lock file is made with an atomic exclusive create (``O_CREAT | O_EXCL``, which NFS v3+ and
every local file system honour; mode ``"xb"`` on an fsspec store, which object stores with
conditional writes implement) and names its owner: command, host, pid and start time.  A lock
whose owner is gone (same host, the pid is dead) or that is older than ``stale_after`` seconds
(another host, a commit cannot take that long) is broken with a log line.  Breaking is itself
serialised by a second exclusive file, so that two writers cannot both break one stale lock and
then both hold it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime

from desomspark.errors import DesomsparkError

_LOG = logging.getLogger(__name__)

LOCK_FILE = "_LOCK"

#: a lock held by one process, counted so that a commit inside a commit (recover) does not wait on itself
_HELD: dict[str, int] = {}
_HELD_GUARD = threading.RLock()


class LakeBusy(DesomsparkError):
    """Another writer held the lake's lock for longer than we were willing to wait."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def owner_gone(record: dict) -> bool:
    """True if the process a lock or staging folder names (``owner()``'s record) ran here and is dead."""
    return record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", -1)))


def owner() -> dict:
    """Who we are, as a lock (or a staging folder) records it."""
    return {
        "owner": " ".join(os.path.basename(a) for a in sys.argv[:2]) or "python",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "since": time.time(),
    }


class LakeLock:
    """The commit lock of ``lake`` (a :class:`~desomspark.lake.layout.Lake`), as a context manager.

    Re-entrant within a process (threads of one process share it: they are one writer, whose
    commits are serialised by ``_HELD_GUARD``).
    """

    def __init__(self, lake, timeout: float = 600.0, stale_after: float = 3600.0):
        self.lake, self.timeout, self.stale_after = lake, timeout, stale_after
        self.path = lake._fs_path(lake.path(LOCK_FILE))

    # --- the file ------------------------------------------------------------
    def _create(self, path: str, content: dict) -> bool:
        """Create ``path`` holding ``content`` if it does not exist; False if it does."""
        data = json.dumps(content).encode()
        if self.lake.is_local:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        try:
            with self.lake.fs.open(path, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            return False
        return True

    def _read(self) -> dict | None:
        try:
            with self.lake.fs.open(self.path, "rb") as fh:
                return json.loads(fh.read() or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:  # written half-way by a writer that died at that instant
            return {}

    def _stale(self, holder: dict) -> str | None:
        """Why the lock ``holder`` is stale, or None if it may still be held."""
        age = time.time() - float(holder.get("since", 0))
        if owner_gone(holder):
            return f"its owner (pid {holder.get('pid')}) is gone"
        if age > self.stale_after:
            return f"it is {age:.0f} s old (more than {self.stale_after:.0f} s)"
        return None

    def _break(self, holder: dict, why: str) -> None:
        guard = self.path + ".break"
        if not self._create(guard, owner()):
            try:  # a breaker that died leaves its guard: it is stale after a minute
                if time.time() - self.lake.fs.modified(guard).timestamp() > 60:
                    self.lake.fs.rm(guard)
            except FileNotFoundError:
                pass
            return
        try:
            if self._read() == holder:  # still the lock we judged, not a new owner's
                _LOG.warning(
                    f"lake lock {self.path}: broken, {why} "
                    f"(held by {holder.get('owner')} pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('started')})"
                )
                self.lake.fs.rm(self.path)
        finally:
            self.lake.fs.rm(guard)

    # --- taking and releasing ----------------------------------------------------
    def acquire(self) -> None:
        deadline, pause = time.monotonic() + self.timeout, 0.02
        self.lake.makedirs()
        while not self._create(self.path, owner()):
            holder = self._read()
            if holder is None:
                continue  # released between our create and our read
            why = self._stale(holder) if holder else None
            if why:
                self._break(holder, why)
                continue
            if time.monotonic() > deadline:
                raise LakeBusy(
                    f"the lake {self.lake.root} is locked by {holder.get('owner')} (pid {holder.get('pid')} "
                    f"on {holder.get('host')}, since {holder.get('started')}); try again when it has "
                    f"finished, or remove {self.path} if that process is gone"
                )
            time.sleep(pause)  # a commit takes seconds: poll, backing off to one second
            pause = min(1.0, pause * 2)

    def release(self) -> None:
        try:
            self.lake.fs.rm(self.path)
        except FileNotFoundError:
            _LOG.warning(f"lake lock {self.path} was gone at release (broken by another writer?)")

    def __enter__(self):
        _HELD_GUARD.acquire()
        count = _HELD.get(self.path, 0)
        if count == 0:
            try:
                self.acquire()
            except BaseException:
                _HELD_GUARD.release()
                raise
        _HELD[self.path] = count + 1
        return self

    def __exit__(self, *exc):
        try:
            _HELD[self.path] -= 1
            if _HELD[self.path] == 0:
                del _HELD[self.path]
                self.release()
        finally:
            _HELD_GUARD.release()
        return False
