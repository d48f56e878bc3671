"""One process-wide thread pool for the runtime's numpy work (MaxSim blocks, preprocessing).

numpy releases the GIL inside its loops and BLAS calls, so plain threads use every core for
the memory-bound copies that dominate preprocessing and MaxSim packing. One shared pool, not
one per caller, so a process never runs more busy threads than cores on our account.

Tasks given to the pool must not themselves wait on the pool: every caller here submits leaf
work only, so no task can block a worker that another task is waiting for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["parallel_map", "shared_pool", "single_threaded_blas", "split_range", "worker_count"]

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_pool: list[tuple[ThreadPoolExecutor | None, int]] = []


def _max_workers() -> int:
    """Cores to use: ``COLLFM2_THREADS`` if set (1 turns the pool off), else all, up to 8."""
    env = os.environ.get("COLLFM2_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return min(os.cpu_count() or 1, 8)


def shared_pool() -> ThreadPoolExecutor | None:
    """The runtime's worker pool, created on first use; ``None`` on a single core."""
    with _lock:
        if not _pool:
            n = _max_workers()
            _pool.append((ThreadPoolExecutor(n, thread_name_prefix="collfm2") if n > 1 else None, n))
        return _pool[0][0]


def worker_count() -> int:
    """How many threads :func:`parallel_map` spreads work over (the caller included)."""
    shared_pool()
    return _pool[0][1]


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, the first item in the calling thread and the rest on the pool.

    The caller works too, so progress never depends on a free worker. An exception from any
    item is raised here, after every item has finished (none is left writing into a buffer
    the caller may reuse).
    """
    pool = shared_pool() if len(items) > 1 else None
    if pool is None:
        return [fn(x) for x in items]
    futures = [pool.submit(fn, x) for x in items[1:]]
    try:
        first = fn(items[0])
    finally:
        # Wait for every item even when one failed, so none still writes afterwards.
        done = [(f, f.exception()) for f in futures]
    for _, exc in done:
        if exc is not None:
            raise exc
    return [first] + [f.result() for f, _ in done]


def split_range(n: int, parts: int | None = None, align: int = 1) -> Iterable[tuple[int, int]]:
    """``[0, n)`` cut into at most ``parts`` (default: the pool's workers) contiguous spans,
    each a multiple of ``align`` long except the last."""
    if parts is None:
        parts = worker_count()
    step = max(align, -(-n // max(parts, 1)))
    step = -(-step // align) * align
    return [(a, min(n, a + step)) for a in range(0, n, step)]


_blas_lock = threading.Lock()
_blas_state: dict = {"users": 0, "limiter": None, "controller": None}


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold numpy's BLAS to one thread while our own threads split its work.

    OpenBLAS threads one product across cores, then its workers spin for a while waiting for
    the next: on a small core count that spinning steals the core our second thread needs, and
    small banded products thread badly anyway (benchmarks/bench_preprocess.py shows the effect).

    The setting is process-wide, so it is reference-counted: it is set when the first caller
    enters and restored when the last one leaves. Without threadpoolctl (or with a BLAS it
    cannot control) this does nothing, and results are the same: only the speed differs.
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            _blas_state["limiter"] = _limit_blas()
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0 and _blas_state["limiter"] is not None:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


def _limit_blas():  # -> threadpoolctl limiter | None
    if worker_count() < 2:
        return None  # nothing of ours runs beside BLAS: let it use the core count it likes
    controller = _blas_state["controller"]
    if controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController()
        except Exception:  # not installed, or a platform it cannot inspect
            controller = False
        _blas_state["controller"] = controller
    if not controller:
        return None
    try:
        return controller.limit(limits=1, user_api="blas")
    except Exception:
        return None
