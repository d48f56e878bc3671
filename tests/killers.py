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
