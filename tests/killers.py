"""What the crash tests' child processes run first: ``runtime.stores.local.durable`` patched to SIGKILL itself at
the n-th directory fsync of a write (``sys.argv[2]``), the points where a commit becomes durable."""

KILL_AT_NTH_FSYNC = """
import os, signal, sys
import runtime.stores.local.durable as m
nth, calls = int(sys.argv[2]), {"n": 0}
real = m.fsync_dir
def hit(path):
    calls["n"] += 1
    if calls["n"] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path)
m.fsync_dir = hit
"""

# Every durable point: each directory fsync (before it) and each SQLite transaction, just before its
# COMMIT and just after it, so that a killed command may have committed some of its work or all of it.
KILL_AT_NTH_DURABLE_POINT = """
import contextlib, os, signal, sys
import runtime.stores.local.durable as m
nth, calls = int(sys.argv[2]), {"n": 0}
def point():
    calls["n"] += 1
    if calls["n"] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
real_fsync, real_transaction = m.fsync_dir, m.transaction
def fsync_dir(path):
    point()
    real_fsync(path)
@contextlib.contextmanager
def transaction(conn):
    with real_transaction(conn):
        yield
        point()
    point()
m.fsync_dir, m.transaction = fsync_dir, transaction
"""
