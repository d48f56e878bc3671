"""Dynamic batching of query encodes: queries that arrive within a few milliseconds of each other
go through the model in one call.

Only queries of the same token count share a call. A batch of different lengths is padded, and
padding changes an fp32 query's vectors in the last bits (measured on the tiny bundle: up to
9e-8), so a query's scores would depend on who else was asking; equal-length queries are stacked
with no padding and give the bits each gives alone (``tests/test_serve.py``). int8 graphs run one
item at a time anyway (``ColLFM2.one_at_a_time``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

__all__ = ["Overloaded", "QueryBatcher"]


class Overloaded(UserError):
    """More queries are waiting than the service takes: the client should retry later (HTTP 429)."""


@dataclass
class _Waiting:
    ids: np.ndarray  # [L] int64 token ids
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class QueryBatcher:
    """Collects token-id sequences and encodes them in batches on one thread.

    ``encode`` takes ``input_ids`` [B, L] int64 (all real tokens) and returns each row's vectors
    [L, dim]. A batch is the oldest waiting query and those of its length waiting with it, up to
    ``max_batch``: queries that arrive while the model is busy share the next call. With
    ``window_s`` the oldest also waits that long for company. With ``max_batch`` 1 every query is its own call (what
    ``bench_serve`` compares against). ``max_waiting`` bounds the queue: beyond it ``submit``
    raises ``Overloaded``."""

    def __init__(
        self,
        encode: Callable[[np.ndarray], list[np.ndarray]],
        max_batch: int = 16,
        window_s: float = 0.005,
        max_waiting: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_waiting < 1 or window_s < 0:
            raise ValueError("max_batch and max_waiting must be at least 1, window_s not negative")
        self._encode = encode
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_waiting = max_waiting
        self._on_batch = on_batch  # (batch size, encode seconds), for metrics
        self._waiting: list[_Waiting] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    def submit(self, ids: np.ndarray) -> Future:
        """Queue one query's token ids; the future gives its vectors [L, dim] (or the encode's error)."""
        item = _Waiting(np.asarray(ids, dtype=np.int64))
        with self._cond:
            if self._closed:
                raise UserError("the service is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded(f"{len(self._waiting)} queries are waiting; retry shortly")
            self._waiting.append(item)
            self._cond.notify_all()
        return item.future

    def close(self) -> None:
        """Stop taking queries; those already waiting are still encoded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[_Waiting] | None:
        """The next batch: the oldest query and, after its window, the waiting ones of its length."""
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._waiting[0]
            deadline = first.queued + self.window_s
            while not self._closed:
                same = sum(1 for w in self._waiting if len(w.ids) == len(first.ids))
                left = deadline - time.perf_counter()
                if same >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch = [w for w in self._waiting if len(w.ids) == len(first.ids)][: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [w for w in batch if w.future.set_running_or_notify_cancel()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                rows = self._encode(np.stack([w.ids for w in live]))
            except BaseException as exc:  # the callers get the error; this thread goes on
                for w in live:
                    w.future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(live), time.perf_counter() - t0)
            for w, r in zip(live, rows, strict=True):
                w.future.set_result(r)
