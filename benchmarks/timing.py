"""The one timer the benchmark scripts share: warm-up, then p50/p95/mean over ``runs`` calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["timeit"]


def timeit(fn: Callable[[], Any], warmup: int = 1, runs: int = 3) -> dict[str, float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times: {p50_ms, p95_ms, mean_ms, runs}."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    p95 = ts[min(len(ts) - 1, round(0.95 * (len(ts) - 1)))]
    return {"p50_ms": statistics.median(ts) * 1e3, "p95_ms": p95 * 1e3, "mean_ms": statistics.fmean(ts) * 1e3,
            "runs": runs}  # fmt: skip
