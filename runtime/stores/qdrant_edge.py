"""Embedded Qdrant: the real engine in-process (``qdrant-edge-py``, Qdrant's Rust core), no server.

``--store qdrant --index DIR`` (no ``--url``) keeps pages in an ``EdgeShard`` under ``DIR``: one
point per page with a named multivector ``full`` (its rows, Float16, MaxSim over dot products, so
the ranking is ours) and, when the store was created with a compact representation
(``--compact rowcol|hier:F|pool:K``), a second named multivector ``compact``. A search then runs
Qdrant's own two-stage recipe: a prefetch of the ``rerank`` best by ``compact``, re-ranked by
``full``. With ``--drop-originals`` only ``compact`` is stored and searched.

The bundle identity and settings live in ``DIR/collfm2.json`` (written last, atomically), and a
writer holds an exclusive flock on ``DIR/index.lock``: the engine is in-process, so two writing
processes must never share a shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, UserError
from .base import (
    DEFAULT_RERANK,
    Hit,
    PageRecord,
    check_identity,
    decode_path,
    duplicate_pages,
    encode_path,
    new_records,
)
from .compact import Compaction

__all__ = ["QdrantEdgeStore"]

META = "collfm2.json"
SHARD = "shard"
LOCK = "index.lock"


def _edge() -> Any:
    try:
        import qdrant_edge
    except ImportError:
        raise UserError("embedded Qdrant needs qdrant-edge-py (pip install 'collfm2-edge[qdrant]')") from None
    return qdrant_edge


def _point_id(path: str, page: int) -> str:
    # Deterministic: re-adding a page after a crash overwrites it, never duplicates it.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{encode_path(path).hex()}#{page}"))


class QdrantEdgeStore:
    """The embedded-Qdrant ``Store``."""

    shares_rows = False  # every point carries its own vectors

    def __init__(self, root: Path, shard: Any, meta: dict[str, str]) -> None:
        self.root, self.shard, self._meta = root, shard, meta
        self.dim = int(meta["dim"])
        kind = meta.get("compact", "none")
        self.compaction = None if kind == "none" else Compaction.parse(kind)
        self.keeps_originals = meta.get("originals", "kept") != "dropped"

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        identity: dict[str, str] | None = None,
        compact: Compaction | str | None = None,
        keep_originals: bool = True,
    ) -> QdrantEdgeStore:
        """Open the store in ``root``; create it when ``identity`` is given and there is none."""
        q = _edge()
        root = Path(root)
        if (root / META).is_file():
            try:
                meta = json.loads((root / META).read_text(encoding="utf-8"))
                shard = q.EdgeShard.load(str(root / SHARD))
            except (ValueError, OSError) as exc:
                raise StoreError(f"{root}: not a readable embedded Qdrant store ({exc})") from exc
            except Exception as exc:  # the engine's own errors
                raise StoreError(f"{root}: Qdrant could not load the shard ({' '.join(str(exc).split())})") from exc
            if not isinstance(meta, dict) or "dim" not in meta:
                raise StoreError(f"{root / META}: not a collfm2-edge store description")
            return cls(root, shard, meta)
        if identity is None:
            raise StoreError(f"{root}: no embedded Qdrant store here (add pages with --bundle first)")
        if root.exists() and any(p.name != LOCK for p in root.iterdir()):
            raise StoreError(f"{root}: exists and is not an embedded Qdrant store (and not empty)")
        kind = Compaction.parse(compact) if isinstance(compact, str) else compact
        if kind is not None and not kind.is_fp16:
            raise StoreError(f"embedded Qdrant takes float compact vectors (rowcol, hier:F, pool:K), not {kind}; "
                             "Qdrant quantises vectors itself")  # fmt: skip
        if not keep_originals and kind is None:
            raise StoreError("an index that drops the original vectors needs a compact representation (--compact)")
        dim = int(identity["dim"])

        def multivector() -> Any:
            maxsim = q.MultiVectorConfig(q.MultiVectorComparator.MaxSim)
            return q.EdgeVectorParams(dim, q.Distance.Dot, datatype=q.VectorStorageDatatype.Float16,
                                      multivector_config=maxsim)  # fmt: skip

        vectors = ({"full": multivector()} if keep_originals else {}) | ({"compact": multivector()} if kind else {})
        root.mkdir(parents=True, exist_ok=True)
        try:
            shard = q.EdgeShard.create(str(root / SHARD), q.EdgeConfig(vectors=vectors))
            for key in ("path_key", "kind"):
                shard.update(q.UpdateOperation.create_field_index(key, q.PayloadSchemaType.Keyword))
        except Exception as exc:
            raise StoreError(f"{root}: Qdrant could not create the shard ({' '.join(str(exc).split())})") from exc
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta = {**identity, "created": created, "compact": str(kind) if kind else "none",
                "originals": "kept" if keep_originals else "dropped"}  # fmt: skip
        tmp = root / f".{META}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, root / META)  # last: a store without it is an interrupted creation
        return cls(root, shard, meta)

    @property
    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    def check_bundle(self, identity: dict[str, str]) -> None:
        check_identity(f"embedded Qdrant {self.root}", self._meta, identity, "use a new --index")

    @contextlib.contextmanager
    def writer(self) -> Iterator[QdrantEdgeStore]:
        import fcntl

        with open(self.root / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root}: another process is writing to this store") from None
            try:
                yield self
                self.shard.flush()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- pages ----------------------------------------------------------------------------

    def _filter(self, **match: Any) -> Any:
        q = _edge()
        conds = [q.FieldCondition("kind", match=q.MatchValue("page"))]
        conds += [q.FieldCondition(k, match=q.MatchValue(v)) for k, v in match.items()]
        return q.Filter(must=conds)

    def pages(self) -> list[dict[str, Any]]:
        q = _edge()
        out, offset = [], None
        while True:
            records, offset = self.shard.scroll(q.ScrollRequest(offset=offset, limit=1024, filter=self._filter(),
                                                                with_payload=True, with_vector=False))  # fmt: skip
            for r in records:
                p = r.payload
                out.append({"path": decode_path(bytes.fromhex(p["path_key"])), "page": int(p["page"]),
                            "content_hash": p["content_hash"]})  # fmt: skip
            if offset is None:
                return out

    def add_batch(self, records: Sequence[PageRecord]) -> int:
        """Store ``records``; a path's pages in the batch replace its old ones."""
        q = _edge()
        stored = {(p["path"], p["page"]): p["content_hash"] for p in self.pages()}
        points, fresh = [], list(new_records(records, stored, self.dim, "embedded Qdrant"))
        for r in fresh:
            vec: dict[str, Any] = {}
            if self.keeps_originals:
                vec["full"] = np.asarray(r.embeddings, np.float32).tolist()
            if self.compaction is not None:
                vec["compact"] = self.compaction.to_float(self.compaction.encode(r.embeddings, r.layout),
                                                          self.dim).astype(np.float32).tolist()  # fmt: skip
            payload = {"kind": "page", "path": encode_path(r.path).decode("utf-8", "backslashreplace"),
                       "path_key": encode_path(r.path).hex(), "page": r.page, "content_hash": r.content_hash,
                       "size": r.size, "added": time.time()}  # fmt: skip
            points.append(q.Point(_point_id(r.path, r.page), vec, payload))
        new_ids = {str(p.id) for p in points}
        for key in {encode_path(r.path).hex() for r in fresh}:
            stale = [_point_id(path, page) for (path, page) in stored if encode_path(path).hex() == key]
            stale = [i for i in stale if i not in new_ids]  # old pages the new version no longer has
            if stale:
                self.shard.update(q.UpdateOperation.delete_points(stale))
        if points:
            self.shard.update(q.UpdateOperation.upsert_points(points))
        return len(points)

    def remove(self, paths: Sequence[str]) -> int:
        q = _edge()
        n = 0
        for p in paths:
            flt = self._filter(path_key=encode_path(p).hex())
            n += self.shard.count(q.CountRequest(filter=flt, exact=True))
            self.shard.update(q.UpdateOperation.delete_points_by_filter(flt))
        return n

    def page_rows(self, path: str, page: int) -> tuple[np.ndarray, str] | None:
        return None  # explain encodes the page instead (points hold multivectors, not row spans)

    def missing_paths(self) -> list[str]:
        return sorted({p["path"] for p in self.pages() if not os.path.lexists(p["path"])})

    # -- search ---------------------------------------------------------------------------

    def search(
        self, queries: Sequence[np.ndarray], k: int = 10, rerank: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        q = _edge()
        if k < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        if exact and not self.keeps_originals:
            raise StoreError(f"{self.root}: this store dropped its original vectors; exact search is not possible")
        out = []
        for query in queries:
            vec = np.asarray(query, dtype=np.float32).tolist()
            if not self.keeps_originals:
                req = q.QueryRequest(limit=k, query=q.Query.Nearest(vec, using="compact"), with_payload=True)
            elif self.compaction is None or exact:
                req = q.QueryRequest(limit=k, query=q.Query.Nearest(vec, using="full"), with_payload=True)
            else:
                pre = q.Prefetch(limit=max(k, rerank or DEFAULT_RERANK), query=q.Query.Nearest(vec, using="compact"))
                req = q.QueryRequest(limit=k, prefetches=[pre], query=q.Query.Nearest(vec, using="full"),
                                     with_payload=True)  # fmt: skip
            res = self.shard.query(req)
            out.append([Hit(i + 1, float(p.score), decode_path(bytes.fromhex(p.payload["path_key"])),
                            int(p.payload["page"])) for i, p in enumerate(res)])  # fmt: skip
        return out

    # -- upkeep ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        q = _edge()
        pages = self.shard.count(q.CountRequest(filter=self._filter(), exact=True))
        files = list(self.root.rglob("*"))
        return {**self.meta, "store": "qdrant-edge", "pages": pages,
                "bytes": sum(f.stat().st_size for f in files if f.is_file())}  # fmt: skip

    def check(self) -> list[str]:
        return duplicate_pages(self.pages())

    def compact(self) -> dict[str, Any]:
        n = len(self.pages())
        changed = self.shard.optimize()
        return {"rows_before": n, "rows_after": n, "segments_rewritten": int(bool(changed)),
                "note": "Qdrant's optimizers merged segments" if changed else "nothing to optimise"}  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.shard.flush()
        self.shard.close()
