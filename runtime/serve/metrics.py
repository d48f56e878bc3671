"""The service's counters and latency histograms, written as Prometheus text (format 0.0.4).

Written here rather than taken from prometheus_client: a dozen series need ~80 lines, and the
runtime stays without a dependency a Raspberry Pi would install only for this."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

__all__ = ["LATENCY_BUCKETS", "Metrics"]

# Seconds: a warm search is ~10-200 ms on a CPU, an ingest batch seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        sep = "," if labels else ""
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {total}"]
        return out


class Metrics:
    """Thread-safe counters and histograms; ``gauges`` are read when scraped."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self._encode_seconds = 0.0
        self._queries = 0
        self.gauges = dict(gauges or {})  # name -> (help, read)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            self._latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def query_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self._batches.observe(size)
            self._encode_seconds += seconds
            self._queries += size

    def text(self) -> str:
        with self._lock:
            lines = ["# HELP collfm2_requests_total HTTP requests by method, route and status.",
                     "# TYPE collfm2_requests_total counter"]  # fmt: skip
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(f'collfm2_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += ["# HELP collfm2_request_seconds Time to answer a request, by route.",
                      "# TYPE collfm2_request_seconds histogram"]  # fmt: skip
            for route, hist in sorted(self._latency.items()):
                lines += hist.lines("collfm2_request_seconds", f'route="{route}"')
            lines += ["# HELP collfm2_query_batch_size Queries encoded together in one model call.",
                      "# TYPE collfm2_query_batch_size histogram"]  # fmt: skip
            lines += self._batches.lines("collfm2_query_batch_size", "")
            lines += ["# HELP collfm2_encode_seconds_total Seconds the model spent encoding queries.",
                      "# TYPE collfm2_encode_seconds_total counter",
                      f"collfm2_encode_seconds_total {self._encode_seconds:.6f}",
                      "# HELP collfm2_queries_encoded_total Queries the model encoded.",
                      "# TYPE collfm2_queries_encoded_total counter",
                      f"collfm2_queries_encoded_total {self._queries}"]  # fmt: skip
        for name, (help_text, read) in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # a gauge that cannot be read now is left out, not an error page
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
