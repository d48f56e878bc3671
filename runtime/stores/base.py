"""What a page store is: the ``Store`` protocol, its records, and the bundle identity it keeps.

Three stores implement it: the local index (``runtime.stores.local.index.Index``: fp16 segments +
SQLite), embedded Qdrant (``runtime.stores.qdrant_edge.QdrantEdgeStore``) and a Qdrant server
(``runtime.stores.qdrant_server.QdrantStore``). The CLI talks to
either through this protocol only; ``tests/test_stores.py`` runs one suite against both.

A page is identified by (path, page number). A store records the identity of the bundle that
made its vectors and refuses another bundle's, because vectors of different models or
precisions cannot be compared.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import StoreError

__all__ = [
    "DEFAULT_RERANK",
    "Hit",
    "PageRecord",
    "Store",
    "bundle_identity",
    "check_identity",
    "decode_path",
    "encode_path",
]


# Two-stage search: candidates the exact stage ranks when the caller does not say (every store).
DEFAULT_RERANK = 100


def encode_path(path: str | os.PathLike | bytes) -> bytes:
    """A path as stored: the file system's bytes (argv and folder walks give surrogate-escaped str)."""
    return path if isinstance(path, bytes) else os.fsencode(path)


def decode_path(raw: bytes | str) -> str:
    """A stored path back as ``str``; undecodable bytes come back surrogate-escaped, as from ``os``."""
    return raw if isinstance(raw, str) else os.fsdecode(raw)


@dataclass(frozen=True)
class PageRecord:
    """One page to store: its embedding rows and where it came from.

    ``embeddings=None`` stores the page with the rows of an already stored page of the same
    ``content_hash`` (identical bytes under another path), without encoding it again; only a
    store whose ``shares_rows`` is true accepts that."""

    path: str
    page: int
    content_hash: str
    size: int
    embeddings: np.ndarray | None  # [n, dim], real rows only
    # Where the page's image tokens sit among its rows, per tile: (first row, grid h, grid w).
    # Row/column pooling needs it (runtime.preprocess.layout, ProcessedPage.layout); other stores ignore it.
    layout: tuple[tuple[int, int, int], ...] | None = None


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str
    page: int

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "path": self.path, "page": self.page}


def new_records(records: Sequence[PageRecord], stored: dict[tuple[str, int], str], dim: int,
                where: str) -> Iterator[PageRecord]:  # fmt: skip
    """The records a store without shared rows must write: each checked (real rows of ``dim``),
    and skipped when the batch already had its page or ``stored`` holds the same content."""
    seen: set[tuple[str, int]] = set()
    for r in records:
        if r.embeddings is None:
            raise StoreError(f"{where} keeps no shared rows; encode every page")
        if r.embeddings.ndim != 2 or r.embeddings.shape[1] != dim:
            raise StoreError(f"{r.path}: embeddings {r.embeddings.shape}, {where} dim {dim}")
        if (r.path, r.page) in seen or stored.get((r.path, r.page)) == r.content_hash:
            continue
        seen.add((r.path, r.page))
        yield r


def duplicate_pages(pages: Sequence[dict[str, Any]]) -> list[str]:
    """``check``'s problem lines for pages (path, page) stored more than once."""
    seen: set[tuple[str, int]] = set()
    problems = []
    for p in pages:
        key = (p["path"], p["page"])
        if key in seen:
            problems.append(f"{p['path']} page {p['page']} is stored twice")
        seen.add(key)
    return problems


@runtime_checkable
class Store(Protocol):
    """The operations the CLI needs from where pages live."""

    #: True when ``add_batch`` takes ``PageRecord(embeddings=None)`` (rows shared by identical bytes).
    shares_rows: bool

    @property
    def meta(self) -> dict[str, str]:
        """The bundle identity and settings recorded when the store was created."""
        ...

    def check_bundle(self, identity: dict[str, str]) -> None:
        """Raise ``StoreError`` unless ``identity`` is the bundle this store was made with."""
        ...

    def writer(self) -> AbstractContextManager[Store]:
        """Exclusive write access for a with-block (and any recovery a crashed writer needs)."""
        ...

    def pages(self) -> list[dict[str, Any]]:
        """Every stored page: at least ``path``, ``page`` and ``content_hash``."""
        ...

    def add_batch(self, records: Sequence[PageRecord]) -> int:
        """Store ``records`` (a path's records replace its old pages); returns pages stored."""
        ...

    def remove(self, paths: Sequence[str]) -> int:
        """Forget every page of ``paths``; returns pages removed."""
        ...

    def page_rows(self, path: str, page: int) -> tuple[np.ndarray, str] | None:
        """A stored page's rows [n, dim] and content hash, when the store can give them back
        (``explain`` uses them instead of encoding the page again); else None."""
        ...

    def missing_paths(self) -> list[str]:
        """Stored paths whose files no longer exist."""
        ...

    def search(
        self, queries: Sequence[np.ndarray], k: int = 10, rerank: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """MaxSim of each query [n_q, dim] against every page; top ``k`` per query. A two-stage store
        ranks its ``rerank`` best candidates exactly; ``exact`` scores every page exactly."""
        ...

    def info(self) -> dict[str, Any]:
        """What the store holds, for ``index info``."""
        ...

    def check(self) -> list[str]:
        """Problems found (an empty list means healthy), for ``index check``."""
        ...

    def compact(self) -> dict[str, Any]:
        """Reclaim space of removed and replaced pages; returns what changed."""
        ...

    def close(self) -> None: ...


def bundle_identity(bundle: Any, precision: str) -> dict[str, str]:
    """What a store records about the bundle that made its vectors (``runtime.bundle.manifest.Bundle``).

    ``precision`` is what ran: an ONNX precision, or a TensorRT engine set (``trt/<set>@<sha>``)."""
    manifest = bundle.path / "manifest.json"
    source = bundle.manifest["source"]
    model = source.get("preset") or source.get("path") or "unknown"
    return {
        "bundle_path": str(bundle.path.resolve()),
        "bundle_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "bundle_model": str(model),
        "bundle_random_weights": json.dumps(bool(source.get("random_weights", False))),
        "precision": precision,
        "dim": str(bundle.model["dim"]),
    }


def check_identity(where: str, meta: dict[str, str], identity: dict[str, str], remedy: str) -> None:
    """Raise ``StoreError`` unless ``identity`` is the bundle recorded in a store's ``meta``."""
    for key in ("bundle_manifest_sha256", "precision", "dim"):
        if meta.get(key) != identity.get(key):
            raise StoreError(
                f"{where}: built with bundle {meta.get('bundle_model')} ({meta.get('precision')}, manifest "
                f"{meta.get('bundle_manifest_sha256', '')[:12]}...), not {identity.get('bundle_model')} "
                f"({identity.get('precision')}, manifest {identity.get('bundle_manifest_sha256', '')[:12]}...): "
                f"{key} differs. Vectors of different bundles cannot be compared; {remedy}"
            )
