"""The two points where a write of the local index becomes durable: a directory's fsync (a file
renamed into it is there after a crash) and a SQLite transaction (its COMMIT is on disk when it
returns). Every caller reaches them through this module (``durable.fsync_dir(...)``), so the crash
tests can stop a writer at the n-th one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ...errors import StoreError

__all__ = ["DB", "create_atomically", "db_error", "fsync_dir", "os_error", "transaction"]

DB = "index.sqlite"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # A failed ROLLBACK (disk full, I/O error) must not hide the error that caused it; SQLite
        # rolls back a hot journal the next time the database is opened.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def create_atomically(root: Path, build: Callable[[Path], None], what: str) -> None:
    """``build`` a new directory beside ``root`` (absent or empty), then rename it into place, so
    a crash leaves either nothing or the whole thing. ``what`` names it in errors."""
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.creating-", dir=root.parent))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 is for its secrecy, not the index's
    except OSError as exc:
        raise os_error(root, exc, f"creating {what}") from exc
    try:
        build(tmp)
        fsync_dir(tmp)
        if root.is_dir():
            root.rmdir()  # empty (the caller checked); rename cannot replace a non-empty one anyway
        os.rename(tmp, root)
        fsync_dir(root.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if root.is_dir() and (root / DB).exists():  # another process created it meanwhile
            raise StoreError(f"{root}: {what} was created here by another process; run the command again") from exc
        raise os_error(root, exc, f"creating {what}") from exc
    except sqlite3.Error as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise db_error(root, exc) from exc


def umask() -> int:
    """The process's umask: the index's files and folders follow it, as ``index.sqlite`` (which
    SQLite creates with 0644 & ~umask) does."""
    try:  # Linux says it without changing it (setting it, even briefly, races other threads' creates)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error(root: Path, exc: OSError, doing: str) -> StoreError:
    if exc.errno == errno.ENOSPC:
        why = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied (read-only index directory?)"
    else:
        why = exc.strerror or str(exc)
    return StoreError(f"{root}: {doing} failed: {why}; nothing of it was committed, stored pages are intact")


def db_error(root: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "full" in text:
        why = "no space left on device (database or disk is full)"
    elif "readonly" in text or "read-only" in text:
        why = "the index is read-only here"
    elif "locked" in text or "busy" in text:
        why = "another process holds the index database locked; try again"
    else:
        why = f"the index database is damaged or unreadable ({text}); run: python -m runtime index check --index DIR"
    return StoreError(f"{root / DB}: {why}")
