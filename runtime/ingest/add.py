"""Adding pages to a store: what ``index add`` and the service's ingestion jobs both run.

Pages stream through ``encode_stream``; a page whose file is unchanged since it was stored is
skipped, one whose bytes are stored under another path shares those rows (when the store can),
and records are committed in groups cut only between files (``FileBatches``), each group one
atomic commit of the store. What happens is told to ``on_event`` as it happens, so the command
line prints it and a job records it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..stores.base import PageRecord
from .batches import FileBatches
from .sources import Failed
from .stream import Encoded, Skipped, encode_stream

__all__ = ["AddReport", "add_pages"]

# What encode_stream's skip callback answers for a page whose bytes are stored under another path:
# its record is written with the stored rows, not encoded again.
_SHARE = "identical bytes are already stored"


@dataclass
class AddReport:
    added: int = 0  # pages committed
    shared: int = 0  # of them, pages that took the rows of identical stored bytes
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # one line each


def add_pages(
    model: Any,
    sources: Iterable[Any],
    target: Callable[[], Any],
    existing: Any | None,
    commit_pages: int,
    batch_tiles: int,
    on_event: Callable[..., None] = lambda *event: None,
) -> AddReport:
    """Encode ``sources`` (``PageSource``s or ``Failed``) and commit them into ``target()``, the
    store held for writing (called at the first commit, so a caller can create it only then).
    ``existing`` is that store when it exists already (what it holds decides skips and sharing).

    ``on_event`` gets ``("failed", Failed)``, ``("skipped", source, reason)``, ``("note", source)``
    (a file's first page carries a note), ``("page",)`` per page seen, and ``("committed", records,
    report)`` after each commit."""
    report = AddReport()
    # Read by the preprocessing thread, written here: dict and set operations are atomic in CPython.
    stored: dict[tuple[str, int], str] = {}
    hashes: set[str] = set()
    if existing is not None:
        for page in existing.pages():
            stored[(page["path"], page["page"])] = page["content_hash"]
            hashes.add(page["content_hash"])
    sharing = existing is not None and existing.shares_rows

    def skip(src: Any) -> str | None:
        if stored.get((src.path, src.page)) == src.content_hash:
            return "already indexed"
        if sharing and src.content_hash in hashes:
            return _SHARE
        return None

    def fail(item: Failed) -> None:
        report.failed += 1
        report.failures.append(item.message)
        on_event("failed", item)

    # The sources of pages queued to share stored rows: a commit in between may have replaced
    # the only page that held those bytes (two files swapped contents), and then they are encoded.
    to_share: dict[tuple[str, int], Any] = {}

    def commit(batch: list[PageRecord]) -> int:
        s = target()
        ready = []
        for r in batch:
            src = to_share.pop((r.path, r.page), None)
            if r.embeddings is None and s.page_state(r.path, r.page, r.content_hash) == "new":
                report.shared -= 1
                r = _encode_now(model, src, fail)
                if r is None:
                    continue
            ready.append(r)
        n = s.add_batch(ready)
        for r in batch:
            stored[(r.path, r.page)] = r.content_hash
            hashes.add(r.content_hash)
        report.added += n
        on_event("committed", ready, report)
        return n

    batches = FileBatches(commit_pages, commit)
    for item in encode_stream(model, model.processor, sources, batch_tiles, skip=skip):
        if isinstance(item, Failed):
            batches.at(item.path)
            fail(item)
        elif isinstance(item, Skipped):
            src = item.source
            if item.reason == _SHARE:
                to_share[(src.path, src.page)] = src
                batches.add(PageRecord(src.path, src.page, src.content_hash, src.size, None))
                report.shared += 1
            else:
                batches.at(src.path)
                report.skipped += 1
                on_event("skipped", src, item.reason)
        else:
            src = item.source
            if src.note and src.page == 1:
                on_event("note", src)
            batches.add(PageRecord(src.path, src.page, src.content_hash, src.size, item.embeddings, item.layout))
        on_event("page")
    batches.flush()
    return report


def _encode_now(model: Any, src: Any, fail: Callable[[Failed], None]) -> PageRecord | None:
    """One page encoded on the spot (its record), or None after reporting why it failed."""
    for item in encode_stream(model, model.processor, [src]):
        if isinstance(item, Encoded):
            return PageRecord(src.path, src.page, src.content_hash, src.size, item.embeddings, item.layout)
        if isinstance(item, Failed):
            fail(item)
    return None
