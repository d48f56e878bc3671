"""From pages to encodings, as a stream: memory stays flat however many pages come.

``encode_stream`` preprocesses pages (``runtime.ingest.sources``) in a background thread, batches
them by tile count, runs the model on each batch while the next is being preprocessed, and yields
one result per page, in input order: ``Encoded``, ``Skipped`` (already indexed) or ``Failed``
(a one-line reason). A bad page never stops the stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from .sources import Failed, PageSource

__all__ = ["DEFAULT_BATCH_TILES", "Encoded", "Skipped", "encode_stream", "progress"]

# Tiles per model call: a page is 1 (small) to 11 (tiled A4 + thumbnail) tiles.
DEFAULT_BATCH_TILES = 8


@dataclass(frozen=True)
class Encoded:
    source: PageSource
    embeddings: np.ndarray  # [n, 128] real rows
    layout: tuple[tuple[int, int, int], ...] = ()  # per tile: (first row, token grid h, w); runtime.stores.compact


@dataclass(frozen=True)
class Skipped:
    source: PageSource
    reason: str


_DONE = object()


def encode_stream(
    model: Any,
    processor: Any,
    sources: Iterable[PageSource | Failed],
    batch_tiles: int = DEFAULT_BATCH_TILES,
    skip: Callable[[PageSource], str | None] | None = None,
    batch_pages: int | None = None,
) -> Iterator[Encoded | Skipped | Failed]:
    """Encode pages with ``model`` (``runtime.ColLFM2``), preprocessing ahead in a thread.

    A model call takes pages until they hold ``batch_tiles`` tiles (or ``batch_pages`` pages).
    ``skip(source)`` may return a reason not to encode a page (e.g. already indexed).
    """
    from ..preprocess.processor import collate_pages

    q: queue.Queue = queue.Queue(maxsize=max(2, 2 * batch_tiles))
    stop = threading.Event()

    def produce() -> None:
        try:
            for src in sources:
                if stop.is_set():
                    return
                if isinstance(src, Failed):
                    q.put(src)
                    continue
                reason = skip(src) if skip else None
                if reason:
                    q.put(Skipped(src, reason))
                    continue
                try:
                    # Pages arrive as bytes or a rendered PDF page: errors name the file and page.
                    page = processor.process_image(src.load(), name=src.name)
                except UserError as exc:
                    q.put(Failed(src.path, src.page, str(exc)))
                    continue
                q.put((src, page))
        except BaseException as exc:  # surface bugs in the consumer, with their traceback
            q.put(exc)
        finally:
            q.put(_DONE)

    worker = threading.Thread(target=produce, name="collfm2-preprocess", daemon=True)
    worker.start()
    batch: list[tuple[PageSource, Any]] = []
    tiles = 0
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, (Failed, Skipped)):
                # In input order: the pages before it go first. (The index commits a file's pages
                # together, and a failure overtaking them would split a file across commits.)
                if batch:
                    yield from _run_batch(model, batch, collate_pages)
                    batch, tiles = [], 0
                yield item
                continue
            batch.append(item)
            tiles += item[1].pixel_values.shape[0]
            if tiles >= batch_tiles or (batch_pages is not None and len(batch) >= batch_pages):
                yield from _run_batch(model, batch, collate_pages)
                batch, tiles = [], 0
        if batch:
            yield from _run_batch(model, batch, collate_pages)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _run_batch(model: Any, batch: list, collate: Callable) -> Iterator[Encoded]:
    inputs = collate([page for _, page in batch])
    for (src, page), rows in zip(batch, model.encode_rows(inputs), strict=True):
        yield Encoded(src, rows, page.layout)


def progress(total: int | None, desc: str, enabled: bool | None = None) -> Any:
    """A tqdm bar on a TTY (stdout), else a silent stand-in with the same ``update``/``close``."""
    import sys

    if enabled is None:
        enabled = sys.stdout.isatty()
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="page")
        except ImportError:
            pass

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Quiet()
