"""The resident service: one model and one store, loaded once, shared by every request.

Threads: HTTP requests run on the server's threads; query encodes on the batcher's thread
(``batching``); every store call on one store thread, which opened the store (an SQLite
connection belongs to the thread that made it, and the scanner's plan cache is not built for
two searches at once). So while one batch of queries is searched the next is encoded.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import InputError, StoreError, UserError
from ..stores.base import bundle_identity
from ..stores.open import open_store
from .batching import QueryBatcher
from .metrics import Metrics

__all__ = ["MAX_K", "MAX_QUERIES", "Forbidden", "NotFound", "Service", "ServiceConfig", "Unavailable"]

T = TypeVar("T")

MAX_K = 1000
MAX_RERANK = 10_000
MAX_QUERIES = 64  # per request


class NotFound(UserError):
    """A page or job the service does not have (HTTP 404)."""


class Forbidden(UserError):
    """A server-side path outside the folders the service was allowed (HTTP 403)."""


class Unavailable(UserError):
    """The service cannot answer now (shutting down, or a step took longer than its timeout): HTTP 503."""


@dataclass(frozen=True)
class ServiceConfig:
    max_batch: int = 16  # queries per model call
    # How long the first waiting query waits for company. 0: none; queries that arrive while the
    # model is busy still share its next call, so batches form under load and a lone query never
    # waits (a 5 ms window cost a lone query 6 ms on the tiny bundle, benchmarks/bench_serve.py).
    window_ms: float = 0.0
    max_waiting: int = 64  # queries waiting to be encoded before requests get 429
    timeout_s: float = 60.0  # the longest a request waits for its encode or its search
    allow_paths: tuple[str, ...] = ()  # folders whose files POST /pages may name on the server
    commit_pages: int = 16
    max_queued_jobs: int = 16


class Service:
    """``model`` (``runtime.encoder.model.ColLFM2``) and the store at ``index`` (``open_store``'s
    arguments), checked against each other as ``search`` does on the command line."""

    def __init__(self, model: Any, store_kind: str, index: str | None, url: str | None = None,
                 collection: str = "collfm2", config: ServiceConfig | None = None) -> None:  # fmt: skip
        self.model = model
        self.config = config or ServiceConfig()
        self.started = time.time()
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._stack = contextlib.ExitStack()
        self._closing = threading.Event()
        self._images = threading.Semaphore(1)

        def open_it() -> Any:
            store = self._stack.enter_context(open_store(store_kind, index, url, collection))
            store.check_bundle(bundle_identity(model.bundle, model.precision))
            return store

        try:
            self._store = self._store_thread.submit(open_it).result()
        except BaseException:
            self._store_thread.submit(self._stack.close).result()
            self._store_thread.shutdown()
            raise
        self.metrics = Metrics({
            "collfm2_queue_depth": ("Queries waiting to be encoded.", lambda: self.batcher.depth),
            "collfm2_pages_indexed": ("Pages in the index.", lambda: self.on_store(lambda s: s.info()["pages"], 5.0)),
        })  # fmt: skip
        cfg = self.config
        self.batcher = QueryBatcher(self._encode, cfg.max_batch, cfg.window_ms / 1000, cfg.max_waiting,
                                    on_batch=self.metrics.query_batch)  # fmt: skip
        self._ingestor = None
        if index is not None:  # jobs and uploads live in the index's folder
            from .jobs import Ingestor

            self._ingestor = Ingestor(model, store_kind, index, url, collection, cfg.commit_pages,
                                      max_queued=cfg.max_queued_jobs)  # fmt: skip
            self.metrics.gauges["collfm2_jobs_waiting"] = ("Ingestion jobs waiting.", self._ingestor.depth)

    # -- the pieces -------------------------------------------------------------------------

    @property
    def ingestor(self) -> Any:
        if self._ingestor is None:
            raise UserError("adding pages needs an index folder (--index); this service searches a Qdrant server")
        return self._ingestor

    def allowed_path(self, path: str) -> str:
        """``path`` resolved, if it lies in a folder of ``allow_paths``; else a one-line refusal."""
        if not self.config.allow_paths:
            raise Forbidden("this service takes no paths on its machine (start it with --allow-path DIR)")
        if "\0" in path:
            raise InputError("a path cannot hold a NUL byte")
        real = os.path.realpath(path)
        for root in self.config.allow_paths:
            base = os.path.realpath(root)
            if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
                return real
        raise Forbidden(f"{path[:200]}: not under an --allow-path folder")

    def _encode(self, input_ids: np.ndarray) -> list[np.ndarray]:
        return self.model.encode_rows({"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})

    def on_store(self, call: Callable[[Any], T], timeout: float | None = None) -> T:
        """Run ``call(store)`` on the store thread."""
        if self._closing.is_set():
            raise Unavailable("the service is shutting down")
        future = self._store_thread.submit(call, self._store)
        try:
            return future.result(timeout if timeout is not None else self.config.timeout_s)
        except FutureTimeout:
            raise Unavailable("the index took too long to answer; retry shortly") from None

    def query_vectors(self, queries: list[str]) -> tuple[list[np.ndarray], float]:
        """Each query's vectors [n, dim] through the batcher, and the seconds spent waiting for them."""
        t0 = time.perf_counter()
        ids = [self.model.processor.process_queries([q])["input_ids"][0] for q in queries]  # QueryError: one line
        futures = [self.batcher.submit(i) for i in ids]
        try:
            return [f.result(self.config.timeout_s) for f in futures], time.perf_counter() - t0
        except FutureTimeout:
            raise Unavailable("encoding the query took too long; retry shortly") from None

    def image_vectors(self, images: list[tuple[str, bytes]]) -> list[np.ndarray]:
        """Each image's vectors [n, dim], encoded here; one such request at a time (a page costs
        seconds of both cores), others wait up to the timeout, then get 503."""
        if not self._images.acquire(timeout=self.config.timeout_s):
            raise Unavailable("another image request is being encoded; retry shortly")
        try:
            return list(self.model.embed_images([data for _, data in images]))  # a bad image: InputError
        finally:
            self._images.release()

    # -- what the endpoints do ----------------------------------------------------------------

    def search(self, queries: list[str], k: int = 10, rerank: int | None = None, exact: bool = False) -> dict:
        """Hits per query, with where the time went (milliseconds)."""
        if exact and rerank is not None:
            raise InputError("rerank sets the candidates of two-stage search; exact scores every page: give one")
        t0 = time.perf_counter()
        vecs, encode_s = self.query_vectors(queries)

        def run(store: Any) -> tuple[list, dict[str, float]]:
            t = time.perf_counter()
            hits = store.search(vecs, k=k, rerank=rerank, exact=exact)
            stages = dict(getattr(getattr(store, "scanner", None), "timings", {}) or {})
            stages["search"] = time.perf_counter() - t
            return hits, stages

        hits, stages = self.on_store(run)
        stages["encode"] = encode_s
        stages["total"] = time.perf_counter() - t0
        return {
            "results": [[h.as_dict() for h in row] for row in hits],
            "timings_ms": {name: round(s * 1000, 3) for name, s in stages.items()},
            "random_weights": bool(self.model.bundle.random_weights),
        }

    def _stored(self, path: str, page: int) -> tuple[np.ndarray | None, str]:
        """A stored page's rows (None when the index keeps no originals) and content hash."""

        def look(store: Any) -> tuple[np.ndarray | None, str] | None:
            got = store.page_rows(path, page)
            if got is not None:
                return got
            catalog = getattr(store, "catalog", None)  # the local index without its originals
            digest = catalog.db(lambda: catalog.stored_hash(path, page)) if catalog is not None else None
            return None if digest is None else (None, digest)

        found = self.on_store(look)
        if found is None:
            raise NotFound(f"the index has no page {page} of {path[:200]}")
        return found

    def page_image(self, path: str, page: int, max_side: int) -> tuple[Any, bool]:
        """An indexed page as a PIL image no larger than ``max_side``, and whether its file changed
        since it was indexed. Only indexed pages: this never reads a file the index does not name."""
        from PIL import Image

        from ..ingest.sources import page_source
        from ..preprocess.image import decode_image

        _, digest = self._stored(path, page)
        src = page_source(path, page)
        image = Image.fromarray(decode_image(src.load(), self.model.processor.decode, src.name))
        image.thumbnail((max_side, max_side))
        return image, src.content_hash != digest

    def page_explain(self, path: str, page: int, query: str, which: int | str, max_side: int) -> tuple[Any, dict]:
        """The page with the similarity map of ``query`` (token ``which``, or ``max``/``sum`` of all)
        over it, from its stored vectors when its file is unchanged; and the tokens and score."""
        from PIL import Image

        from ..explain import explain, render
        from ..ingest.sources import page_source
        from ..preprocess.image import decode_image

        rows, digest = self._stored(path, page)
        src = page_source(path, page)
        data = src.load()
        stale = src.content_hash != digest
        try:
            expl = explain(self.model, query, data, None if stale else rows, name=src.name)
        except InputError:  # stored at another --dpi: the rows do not fit this rendering
            expl = explain(self.model, query, data, None, name=src.name)
        image = Image.fromarray(decode_image(data, self.model.processor.decode, src.name))
        out = render(expl, image, which)
        out.thumbnail((max_side, max_side))
        return out, {"tokens": expl.tokens, "score": expl.score, "stale": stale}

    def info(self) -> dict:
        bundle = self.model.bundle
        store_info = self.on_store(lambda s: s.info())
        return {
            "index": {k: v for k, v in store_info.items() if isinstance(v, str | int | float | bool) or v is None},
            "bundle": {
                "path": str(bundle.path),
                "random_weights": bool(bundle.random_weights),
                "identity": bundle_identity(bundle, self.model.precision),
            },
            "engine": getattr(self.model, "backend", None),
            "precision": self.model.precision,
            "dim": int(bundle.model["dim"]),
            "batching": {
                "max_batch": self.config.max_batch,
                "window_ms": self.config.window_ms,
                "max_waiting": self.config.max_waiting,
            },
            "uptime_s": round(time.time() - self.started, 1),
        }

    def ready(self) -> tuple[bool, str]:
        """Whether a search could be answered now: the model loaded, the index readable."""
        if self._closing.is_set():
            return False, "shutting down"
        try:
            self.on_store(lambda s: s.meta, 5.0)
        except (StoreError, Unavailable) as exc:
            return False, str(exc)
        return True, "ready"

    def close(self) -> None:
        """Finish what was asked (an ingestion job stops after its current commit), then close the
        store (on its own thread)."""
        if self._ingestor is not None:
            self._ingestor.close()
        self.batcher.close()
        self._closing.set()
        self._store_thread.submit(self._stack.close).result()
        self._store_thread.shutdown()
