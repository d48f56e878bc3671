"""One suite for every ``Store``: the local index and Qdrant (embedded) keep the same contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import StoreError
from runtime.scoring import score
from runtime.stores.base import PageRecord, Store
from runtime.stores.local.index import Index

IDENTITY = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
            "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip


def _vecs(rng: np.random.Generator, n: int) -> np.ndarray:
    e = rng.standard_normal((n, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _record(path: str, h: str, rng: np.random.Generator, page: int = 1, rows: int = 20) -> PageRecord:
    return PageRecord(path, page, h, 100, _vecs(rng, rows), _layout(rows))


STORES = ["local", "local-rowcol", "local-pool", "qdrant-client", "qdrant-edge", "qdrant-edge-pool"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every store, and the two-stage variants with a rerank that reaches every page (so their
    answers must equal exact MaxSim)."""
    kind = request.param
    if kind == "local":
        s: Store = Index.create(tmp_path / "idx", IDENTITY)
    elif kind.startswith("local-"):
        pytest.importorskip("scipy")
        s = Index.create(tmp_path / "idx", IDENTITY, "rowcol" if kind.endswith("rowcol") else "pool:4")
    elif kind == "qdrant-client":
        pytest.importorskip("qdrant_client")
        from runtime.stores.qdrant_server import QdrantStore

        s = QdrantStore.open(":memory:", "pages", IDENTITY)  # the client's code path, without a server
    else:
        pytest.importorskip("qdrant_edge")
        from runtime.stores.qdrant_edge import QdrantEdgeStore

        s = QdrantEdgeStore.open(tmp_path / "edge", IDENTITY, "pool:4" if kind.endswith("pool") else None)
    yield s
    s.close()


def _layout(rows: int) -> tuple[tuple[int, int, int], ...]:
    """A made-up page layout: a few text rows, then a 4-wide grid of image tokens."""
    grid = (rows - 2) // 4
    return ((1, grid, 4),)


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.meta["dim"] == "128" and store.meta["precision"] == "fp32"


def test_refuses_another_bundle(store: Store) -> None:
    store.check_bundle(IDENTITY)
    with pytest.raises(StoreError, match="precision differs"):
        store.check_bundle({**IDENTITY, "precision": "int8"})


def test_search_is_exact_maxsim(store: Store) -> None:
    rng = np.random.default_rng(0)
    recs = [_record(f"/d/{i}.png", f"h{i}", rng, rows=int(rng.integers(10, 30))) for i in range(30)]
    with store.writer():
        assert store.add_batch(recs[:20]) == 20 and store.add_batch(recs[20:]) == 10
        assert store.add_batch(recs[:3]) == 0  # the same pages again: nothing new
    queries = [_vecs(rng, 7), _vecs(rng, 3)]
    exact = score(queries, [r.embeddings.astype(np.float16) for r in recs])
    for q, hits in enumerate(store.search(queries, k=30, rerank=30)):
        order = np.argsort(-exact[q], kind="stable")
        assert [h.path for h in hits] == [recs[i].path for i in order]
        np.testing.assert_allclose([h.score for h in hits], exact[q][order], rtol=2e-3)
        assert [h.rank for h in hits] == list(range(1, 31))
    assert len(store.search(queries, k=5)[0]) == 5


def test_a_changed_file_replaces_its_pages(store: Store) -> None:
    rng = np.random.default_rng(1)
    with store.writer():
        store.add_batch([_record("/doc.pdf", f"old#p{i}", rng, page=i) for i in (1, 2, 3)])
        store.add_batch([_record("/doc.pdf", f"new#p{i}", rng, page=i) for i in (1, 2)])
        store.add_batch([_record("/other.png", "x", rng)])
    pages = sorted((p["path"], p["page"], p["content_hash"]) for p in store.pages())
    assert pages == [("/doc.pdf", 1, "new#p1"), ("/doc.pdf", 2, "new#p2"), ("/other.png", 1, "x")]
    assert {h.path for h in store.search([_vecs(rng, 4)], k=10)[0]} == {"/doc.pdf", "/other.png"}


def test_remove_missing_info_check_compact(store: Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    real = tmp_path / "here.png"
    real.write_bytes(b"x")
    with store.writer():
        store.add_batch([_record(str(real), "r", rng), _record("/gone/a.png", "a", rng),
                         _record("/gone/b.png", "b", rng)])  # fmt: skip
        assert store.missing_paths() == ["/gone/a.png", "/gone/b.png"]
        assert store.remove(["/gone/a.png"]) == 1 and store.remove(["/never/there.png"]) == 0
        res = store.compact()
    assert {"rows_before", "rows_after", "segments_rewritten"} <= set(res)
    info = store.info()
    assert info["pages"] == 2 and info["precision"] == "fp32"
    assert store.check() == []
    assert sorted(h.path for h in store.search([_vecs(rng, 2)], k=10)[0]) == ["/gone/b.png", str(real)]


def test_wrong_dimension_is_refused(store: Store) -> None:
    rng = np.random.default_rng(3)
    bad = PageRecord("/bad.png", 1, "bad", 1, rng.standard_normal((4, 64)).astype(np.float32))
    with store.writer(), pytest.raises(StoreError, match="dim"):
        store.add_batch([bad])
    assert store.pages() == []
