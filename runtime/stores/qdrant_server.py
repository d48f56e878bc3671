"""Scale-out on Qdrant: the same pages as multivector points with the MaxSim comparator.

Each page is one point whose vector is the page's [n, 128] rows (``MultiVectorConfig(MAX_SIM)``
with ``Distance.DOT``: our rows are unit norm, so this is exactly our MaxSim), with payload
``{path, page, content_hash, size, added}``. The bundle identity lives in the payload of one
reserved point (``kind = "meta"``), so a collection refuses vectors of another bundle just as the
local index does. ``location`` is a server URL (``http://host:6333``), a directory (qdrant-client's
embedded local mode, real Qdrant semantics without a server), or ``":memory:"``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import StoreError, UserError
from .base import Hit, PageRecord, check_identity, decode_path, duplicate_pages, encode_path, new_records

__all__ = ["QdrantStore"]

_META_ID = str(uuid.UUID(int=0))


def _client(location: str) -> Any:
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise UserError("the qdrant backend needs qdrant-client (pip install 'collfm2-edge[qdrant]')") from None
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location)
    if location == ":memory:":
        return QdrantClient(location=":memory:")
    return QdrantClient(path=location)


class QdrantStore:
    """The Qdrant ``Store``: a server (``http://...``), an embedded directory or ``:memory:``."""

    shares_rows = False  # each point carries its own vectors

    def __init__(self, client: Any, collection: str, dim: int) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim

    @classmethod
    def open(cls, location: str, collection: str, identity: dict[str, str] | None = None) -> QdrantStore:
        """Open ``collection``; create it when ``identity`` is given and it does not exist."""
        from qdrant_client import models

        client = _client(location)
        if not client.collection_exists(collection):
            if identity is None:
                raise StoreError(f"qdrant {location}: no collection {collection!r} (add pages with --bundle first)")
            dim = int(identity["dim"])
            client.create_collection(
                collection,
                vectors_config=models.VectorParams(
                    size=dim,
                    distance=models.Distance.DOT,
                    multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                ),
            )
            client.upsert(
                collection,
                [models.PointStruct(id=_META_ID, vector=[[0.0] * dim], payload={"kind": "meta", **identity})],
                wait=True,
            )
        store = cls(client, collection, 0)
        store.dim = int(store.meta["dim"])
        return store

    @property
    def meta(self) -> dict[str, str]:
        got = self.client.retrieve(self.collection, [_META_ID], with_payload=True)
        if not got:
            raise StoreError(f"qdrant collection {self.collection!r} was not made by collfm2-edge (no meta point)")
        return {k: v for k, v in got[0].payload.items() if k != "kind"}

    def check_bundle(self, identity: dict[str, str]) -> None:
        check_identity(f"qdrant collection {self.collection!r}", self.meta, identity, "use a new collection")

    def _page_filter(self, **match: Any) -> Any:
        from qdrant_client import models

        conds = [models.FieldCondition(key="kind", match=models.MatchValue(value="page"))]
        conds += [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in match.items()]
        return models.Filter(must=conds)

    def pages(self) -> list[dict[str, Any]]:
        """Every stored page's identity (path, page, content hash), like ``Index.pages``."""
        out, offset = [], None
        while True:
            points, offset = self.client.scroll(
                self.collection, scroll_filter=self._page_filter(), limit=1024, offset=offset, with_payload=True
            )
            for pt in points:
                pl = pt.payload
                out.append({"path": decode_path(bytes.fromhex(pl["path_key"])), "page": pl["page"],
                            "content_hash": pl["content_hash"]})  # fmt: skip
            if offset is None:
                return out

    def add_batch(self, records: Sequence[PageRecord]) -> int:
        """Store ``records``: a page is (path, page); a path's pages in the batch replace its old ones."""
        from qdrant_client import models

        points = []
        stored = {(p["path"], p["page"]): p["content_hash"] for p in self.pages()}
        for r in new_records(records, stored, self.dim, "the qdrant collection"):
            key = encode_path(r.path).hex()
            # Deterministic ids: re-adding the same page after a crash overwrites, never duplicates.
            pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}#{r.page}"))
            payload = {"kind": "page", "path": _display(r.path), "path_key": key, "page": r.page,
                       "content_hash": r.content_hash, "size": r.size, "added": time.time()}  # fmt: skip
            vec = np.asarray(r.embeddings, dtype=np.float32).tolist()
            points.append(models.PointStruct(id=pid, vector=vec, payload=payload))
        for key in {p.payload["path_key"] for p in points}:  # a changed file: drop its old pages first
            keep = [models.HasIdCondition(has_id=[p.id for p in points if p.payload["path_key"] == key])]
            flt = models.Filter(must=self._page_filter(path_key=key).must, must_not=keep)
            self.client.delete(self.collection, models.FilterSelector(filter=flt), wait=True)
        if points:
            self.client.upsert(self.collection, points, wait=True)
        return len(points)

    def remove(self, paths: Sequence[str]) -> int:
        from qdrant_client import models

        n = 0
        for p in paths:
            flt = self._page_filter(path_key=encode_path(p).hex())
            n += self.client.count(self.collection, flt, exact=True).count
            self.client.delete(self.collection, models.FilterSelector(filter=flt), wait=True)
        return n

    @contextlib.contextmanager
    def writer(self) -> Iterator[QdrantStore]:
        # Qdrant serialises writes itself; point ids are deterministic, so a rerun overwrites.
        yield self

    def page_rows(self, path: str, page: int) -> tuple[np.ndarray, str] | None:
        return None  # the server holds the rows; explain encodes the page instead of fetching them

    def missing_paths(self) -> list[str]:
        return sorted({p["path"] for p in self.pages() if not os.path.lexists(p["path"])})

    def check(self) -> list[str]:
        problems = []
        try:
            _ = self.meta  # the reserved point that makes this a collfm2-edge collection
        except StoreError as exc:
            return [str(exc)]
        return problems + duplicate_pages(self.pages())

    def compact(self) -> dict[str, Any]:
        n = self.client.count(self.collection, self._page_filter(), exact=True).count
        return {"rows_before": n, "rows_after": n, "segments_rewritten": 0,
                "note": "Qdrant reclaims deleted points itself (its optimizers)"}  # fmt: skip

    def info(self) -> dict[str, Any]:
        pages = self.client.count(self.collection, self._page_filter(), exact=True).count
        return {**self.meta, "backend": "qdrant", "collection": self.collection, "pages": pages}

    def search(
        self, queries: Sequence[np.ndarray], k: int = 10, rerank: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """Exact MaxSim on the server's multivectors (``rerank``/``exact`` only matter to two-stage stores)."""
        out = []
        for q in queries:
            res = self.client.query_points(
                self.collection,
                query=np.asarray(q, dtype=np.float32).tolist(),
                query_filter=self._page_filter(),
                limit=k,
                with_payload=True,
            ).points
            out.append(
                [Hit(i + 1, float(p.score), p.payload["path"], int(p.payload["page"])) for i, p in enumerate(res)]
            )
        return out

    def close(self) -> None:
        self.client.close()


def _display(path: str) -> str:
    """A path as JSON can carry it: undecodable bytes shown as \\xNN (identity is in ``path_key``)."""
    return encode_path(path).decode("utf-8", "backslashreplace")
