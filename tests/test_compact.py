"""Compact representations and two-stage search: parity with colpali-engine's pooler, layouts from
real pages, exactness where it is promised, and the compact files' crash safety and checks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from killers import KILL_AT_NTH_FSYNC

from runtime.errors import InputError, StoreError
from runtime.preprocess.layout import page_layout
from runtime.scoring import CodeLayout, score, score_codes
from runtime.stores.base import PageRecord, decode_path
from runtime.stores.compact import Compaction, hierarchical_pool, rowcol_pool
from runtime.stores.local.index import DB, SEGMENTS, Index

IDENTITY = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
            "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    e = rng.standard_normal((n, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _page(rng: np.random.Generator, i: int, grid: tuple[int, int] = (8, 6)) -> PageRecord:
    h, w = grid
    rows = _unit(rng, 3 + h * w + 4)
    return PageRecord(f"/p/{i}.png", 1, f"h{i}", 10, rows, ((3, h, w),))


def test_parse_and_sizes() -> None:
    assert str(Compaction.parse("hier:3")) == "hier:3" and Compaction.parse("rowcol").kind == "rowcol"
    for bad in ("nope", "hier", "hier:0", "rowcol:2", "pool:x"):
        with pytest.raises(InputError):
            Compaction.parse(bad)
    rng = np.random.default_rng(0)
    rows = _unit(rng, 40)
    for kind, width in (("int8", 132), ("binary", 16), ("rowcol", 256), ("pool:5", 256)):
        c = Compaction.parse(kind)
        data = c.encode(rows, ((0, 5, 8),))
        assert data.dtype == np.uint8 and data.shape[1] == width == c.row_bytes(128)
        back = c.to_float(data, 128)
        assert back.shape == (len(data), 128)
    i8 = Compaction.parse("int8")
    assert np.abs(i8.to_float(i8.encode(rows), 128) - rows).max() < 0.01  # per-vector scale: tiny error
    bits = Compaction.parse("binary").to_float(Compaction.parse("binary").encode(rows), 128)
    assert np.all(np.sign(bits) == np.where(rows > 0, 1, -1))


def test_rowcol_means_each_tile_grid() -> None:
    rng = np.random.default_rng(1)
    rows = _unit(rng, 2 + 4 * 6 + 1 + 2 * 3)
    layout = ((2, 4, 6), (27, 2, 3))  # a tile, then a thumbnail grid after a label token
    pooled = rowcol_pool(rows, layout)
    assert pooled.shape == (4 + 6 + 2 + 3, 128)
    grid = rows[2:26].reshape(4, 6, 128)
    want = grid.mean(axis=1)[1] / np.linalg.norm(grid.mean(axis=1)[1])
    np.testing.assert_allclose(pooled[1], want, atol=1e-6)
    thumb = rows[27:33].reshape(2, 3, 128).mean(axis=0)[2]
    np.testing.assert_allclose(pooled[4 + 6 + 2 + 2], thumb / np.linalg.norm(thumb), atol=1e-6)


def test_page_layout_of_a_tiled_page(tiny_bundle: Path) -> None:
    from runtime import ColLFM2Processor

    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    page = proc.process_image(np.random.default_rng(2).integers(0, 256, (1754, 1240, 3), dtype=np.uint8))
    layout = page_layout(page.input_ids, page.spatial_shapes, 396)
    assert len(layout) == page.spatial_shapes.shape[0] == 7  # 3x2 tiles + thumbnail
    assert page.layout == layout  # the processor records the same layout as it builds the ids
    for (start, h, w), (ph, pw) in zip(layout, page.spatial_shapes, strict=True):
        assert (h, w) == (ph // 2, pw // 2)
        assert (page.input_ids[start : start + h * w] == 396).all()
    assert sum(h * w for _, h, w in layout) == int((page.input_ids == 396).sum())


def _colpali_pooler(monkeypatch: pytest.MonkeyPatch):
    """colpali-engine's HierarchicalTokenPooler without its package __init__ (which imports every
    model and peft): a bare package module points at its files."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("scipy")
    spec = importlib.util.find_spec("colpali_engine")
    if spec is None:
        pytest.skip("colpali-engine is not installed (make test installs it as a test oracle)")
    pkg = types.ModuleType("colpali_engine")
    pkg.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "colpali_engine", pkg)
    from colpali_engine.compression.token_pooling.hierarchical_token_pooling import HierarchicalTokenPooler

    return torch, HierarchicalTokenPooler()


@pytest.mark.parametrize("pool_factor", [2, 3, 7])
def test_hierarchical_pooling_equals_colpali_engine(monkeypatch: pytest.MonkeyPatch, pool_factor: int) -> None:
    torch, pooler = _colpali_pooler(monkeypatch)
    rng = np.random.default_rng(pool_factor)
    pages = [_unit(rng, n) for n in (266, 80, 31)]
    ref = pooler.pool_embeddings([torch.from_numpy(p) for p in pages], pool_factor=pool_factor, num_workers=1)
    for page, want in zip(pages, ref, strict=True):
        got = hierarchical_pool(page, pool_factor=pool_factor)
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_pool_caps_the_vectors_per_page() -> None:
    pytest.importorskip("scipy")
    rows = _unit(np.random.default_rng(3), 266)
    assert len(hierarchical_pool(rows, max_clusters=12)) <= 12
    assert len(hierarchical_pool(rows[:5], max_clusters=12)) == 5


def _index(tmp_path: Path, name: str, compact: str | None, keep: bool = True, n: int = 40) -> tuple[Index, list]:
    rng = np.random.default_rng(7)
    recs = [_page(rng, i, grid=(8, 6) if i % 3 else (10, 4)) for i in range(n)]
    index = Index.create(tmp_path / name, IDENTITY, compact, keep_originals=keep)
    with index.writer():
        for start in range(0, n, 13):
            index.add_batch(recs[start : start + 13])
    return index, recs


@pytest.mark.parametrize("kind", ["int8", "binary", "rowcol", "hier:4", "pool:6"])
def test_two_stage_reaches_exact_and_exact_is_unchanged(tmp_path: Path, kind: str) -> None:
    if kind.startswith(("hier", "pool")):
        pytest.importorskip("scipy")
    index, recs = _index(tmp_path, "idx", kind)
    rng = np.random.default_rng(8)
    queries = [_unit(rng, 9), _unit(rng, 4)]
    exact = score(queries, [r.embeddings.astype(np.float16) for r in recs])
    for q, row in enumerate(exact):
        order = [recs[i].path for i in np.argsort(-row, kind="stable")[:10]]
        assert [h.path for h in index.search([queries[q]], k=10, exact=True)[0]] == order  # --exact: today's path
        assert [h.path for h in index.search([queries[q]], k=10, rerank=len(recs))[0]] == order  # rerank all
        few = index.search([queries[q]], k=5, rerank=5)[0]  # the rerank scores are the exact ones
        assert all(abs(h.score - row[int(h.path[3:-4])]) < 1e-4 for h in few)
    assert index.check() == []
    info = index.info()
    assert info["compact"] == kind and info["compact_vectors"] > 0 and "two-stage" in info["scores"]
    index.close()


def test_dropped_originals_score_with_the_compact_vectors(tmp_path: Path) -> None:
    index, recs = _index(tmp_path, "idx", "rowcol", keep=False)
    q = _unit(np.random.default_rng(9), 6)
    kind = Compaction.parse("rowcol")
    want = score([q], [kind.to_float(kind.encode(r.embeddings, r.layout), 128) for r in recs])[0]
    hits = index.search([q], k=40)[0]
    for h in hits:
        assert abs(h.score - want[int(h.path[3:-4])]) < 1e-3
    with pytest.raises(StoreError, match="dropped its original vectors"):
        index.search([q], exact=True)
    assert not list((tmp_path / "idx" / SEGMENTS).glob("*.f16")) and "compact vectors only" in index.info()["scores"]
    with pytest.raises(StoreError, match="needs a compact representation"):
        Index.create(tmp_path / "other", IDENTITY, None, keep_originals=False)
    index.close()


def test_compact_files_are_checked_compacted_and_reclaimed(tmp_path: Path) -> None:
    index, recs = _index(tmp_path, "idx", "rowcol")
    q = _unit(np.random.default_rng(10), 5)
    with index.writer():
        index.remove([r.path for r in recs[::2]])
        before = {h.path: h.score for h in index.search([q], k=40, rerank=40)[0]}
        res = index.compact()
    assert res["segments_rewritten"] > 0 and index.info()["dead_rows"] == 0 and index.check() == []
    assert {h.path: h.score for h in index.search([q], k=40, rerank=40)[0]} == pytest.approx(before, abs=1e-5)
    cfile = next((tmp_path / "idx" / SEGMENTS).glob("*.c16"))
    data = bytearray(cfile.read_bytes())
    data[10] ^= 0x40
    cfile.write_bytes(bytes(data))
    reopened = Index.open(tmp_path / "idx")
    assert any("sha256 mismatch" in p for p in reopened.check())
    with pytest.raises(StoreError, match="checksum"):
        reopened.search([q])  # a small index is verified as it is read
    reopened.close()
    index.close()


COMPACT_KILLER = (
    KILL_AT_NTH_FSYNC
    + """
import numpy as np
from runtime.stores.local.index import Index, PageRecord
idx = Index.open(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[3]))
with idx.writer():
    for b in range(3):
        recs = []
        for i in range(4):
            e = rng.standard_normal((3 + 48 + 4, 128)).astype(np.float32)
            recs.append(PageRecord(f"/k/{b}-{i}.png", 1, f"k{b}-{i}", 1, e / np.linalg.norm(e, axis=1, keepdims=True),
                                   ((3, 8, 6),)))
        idx.add_batch(recs)
"""
)


@pytest.mark.parametrize("nth", [1, 2, 3, 5])
def test_kill_during_a_compact_add_loses_nothing(tmp_path: Path, nth: int) -> None:
    index, recs = _index(tmp_path, "idx", "rowcol", n=8)
    index.close()
    res = subprocess.run([sys.executable, "-c", COMPACT_KILLER, str(tmp_path / "idx"), str(nth), "1"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == -9, res.stderr
    with Index.open(tmp_path / "idx") as index:
        paths = {p["path"] for p in index.pages()}
        assert {r.path for r in recs} <= paths and len(paths - {r.path for r in recs}) % 4 == 0  # whole commits
        with index.writer():
            pass  # recovery deletes what the killed writer left
        assert index.check() == []
        assert len(index.search([_unit(np.random.default_rng(0), 3)], k=50)[0]) == len(paths)


def test_schema_2_indexes_are_upgraded(tmp_path: Path) -> None:
    """A v2 index (no compact columns): upgraded in place, still exact, no compact representation."""
    import sqlite3

    index, _ = _index(tmp_path, "idx", None, n=6)
    q = _unit(np.random.default_rng(11), 3)
    want = [h.path for h in index.search([q], k=6)[0]]
    index.close()
    conn = sqlite3.connect(tmp_path / "idx" / DB)
    conn.executescript("""
        CREATE TABLE seg2 AS SELECT id, file, rows, sha256 FROM segments;
        CREATE TABLE pages2 AS SELECT id, path, page, content_hash, size, added, segment, row_start, row_count
            FROM pages;
        DROP TABLE pages; DROP TABLE segments;
        ALTER TABLE seg2 RENAME TO segments; ALTER TABLE pages2 RENAME TO pages;
        UPDATE meta SET value = '2' WHERE key = 'schema_version';
        DELETE FROM meta WHERE key IN ('compact', 'originals');
    """)
    conn.commit()
    conn.close()
    with Index.open(tmp_path / "idx") as index:
        assert index.meta["schema_version"] == "3" and index.meta["compact"] == "none" and index.check() == []
        assert [h.path for h in index.search([q], k=6)[0]] == want


def test_encode_then_import_equals_add(tiny_bundle: Path, tmp_path: Path) -> None:
    """A corpus encoded elsewhere (encode's .npz) imports as add would have stored it; a bundle
    that did not encode it is refused."""
    from export.validate import synthetic_page

    pages = tmp_path / "pages"
    pages.mkdir()
    for i in range(3):
        synthetic_page(300 + 40 * i, 350, seed=i).save(pages / f"p{i}.png")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=300)

    b = str(tiny_bundle)
    assert (
        cli("encode", "--bundle", b, "--precision", "fp32", "--out", str(tmp_path / "e.npz"), str(pages)).returncode
        == 0
    )
    assert cli("index", "add", "--index", str(tmp_path / "added"), "--bundle", b, "--precision", "fp32",
               "--compact", "rowcol", str(pages)).returncode == 0  # fmt: skip
    res = cli("index", "import", "--index", str(tmp_path / "imported"), "--bundle", b, "--compact", "rowcol",
              str(tmp_path / "e.npz"))  # fmt: skip
    assert res.returncode == 0 and "imported 3 page(s)" in res.stdout, res.stderr
    again = cli("index", "import", "--index", str(tmp_path / "imported"), str(tmp_path / "e.npz"))
    assert again.returncode == 0 and "3 already indexed" in again.stdout
    results = []
    for name in ("added", "imported"):
        out = cli("search", "--index", str(tmp_path / name), "--json", "-k", "3", "net income")
        results.append([(h["path"], round(h["score"], 3)) for h in json.loads(out.stdout)])
    assert results[0] == results[1]
    with Index.open(tmp_path / "imported") as index:
        assert index.info()["compact_vectors"] == Index.open(tmp_path / "added").info()["compact_vectors"] > 0
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_bundle, other)
    m = json.loads((other / "manifest.json").read_text())
    m["created"] = "another export"
    (other / "manifest.json").write_text(json.dumps(m))
    res = cli("index", "import", "--index", str(tmp_path / "third"), "--bundle", str(other), str(tmp_path / "e.npz"))
    assert res.returncode == 2 and "cannot be compared" in res.stderr and not (tmp_path / "third").exists()


def test_the_cli_creates_searches_and_refuses_changes(tiny_bundle: Path, tmp_path: Path) -> None:
    """--compact and --drop-originals at creation; --rerank and --exact at search; the local index
    and embedded Qdrant (its own prefetch + rerank) agree with exact search when rerank covers all."""
    from export.validate import synthetic_page

    pages = tmp_path / "pages"
    pages.mkdir()
    for i in range(5):
        synthetic_page(280 + 30 * i, 360, seed=10 + i).save(pages / f"p{i}.png")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=300)

    b = str(tiny_bundle)
    results = {}
    for name, extra in (("exact", []), ("rowcol", ["--compact", "rowcol"]),
                        ("edge", ["--store", "qdrant", "--compact", "rowcol"])):  # fmt: skip
        idx = str(tmp_path / name)
        res = cli("index", "add", "--index", idx, "--bundle", b, "--precision", "fp32", *extra, str(pages))
        assert res.returncode == 0, res.stderr
        store = ["--store", "qdrant"] if name == "edge" else []
        out = cli("search", "--index", idx, *store, "--json", "-k", "5", "--rerank", "5", "net income")
        assert out.returncode == 0, out.stderr
        results[name] = [(h["path"], round(h["score"], 2)) for h in json.loads(out.stdout)]
    assert results["exact"] == results["rowcol"] == results["edge"]
    exact = cli("search", "--index", str(tmp_path / "rowcol"), "--json", "--exact", "net income")
    assert [(h["path"], round(h["score"], 2)) for h in json.loads(exact.stdout)][:5] == results["exact"]
    res = cli("index", "add", "--index", str(tmp_path / "rowcol"), "--compact", "pool:4", str(pages))
    assert res.returncode == 2 and "compact representation is rowcol, not pool:4" in res.stderr
    res = cli("index", "add", "--index", str(tmp_path / "rowcol"), "--drop-originals", str(pages))
    assert res.returncode == 2 and "applies at creation" in res.stderr
    info = json.loads(cli("index", "info", "--index", str(tmp_path / "rowcol"), "--json").stdout)
    assert info["compact"] == "rowcol" and info["originals"] == "kept" and "two-stage" in info["scores"]
    res = cli("index", "add", "--index", str(tmp_path / "bad"), "--bundle", b, "--compact", "hier", str(pages))
    assert res.returncode == 2 and "hier needs a number" in res.stderr


def test_search_plan_is_reused_until_any_connection_commits(tmp_path: Path) -> None:
    """The page table is read once per committed state: a second search reuses it, and a commit
    by this connection or by another (another process's add) makes the next search read it again."""
    rng = np.random.default_rng(7)
    recs = [_page(rng, i) for i in range(12)]
    reader = Index.create(tmp_path / "idx", IDENTITY, "rowcol")
    with reader.writer():
        reader.add_batch(recs[:4])
    q = recs[9].embeddings[:5]
    reader.search([q], k=3)
    plan = reader.scanner._plans[True]
    reader.search([q], k=3)
    assert reader.scanner._plans[True] is plan
    other = Index.open(tmp_path / "idx")
    with other.writer():
        other.add_batch(recs[4:10])
    other.close()
    assert reader.search([q], k=1)[0][0].path == "/p/9.png"  # another connection's commit is seen
    assert reader.scanner._plans[True] is not plan
    plan = reader.scanner._plans[True]
    with reader.writer():
        reader.remove(["/p/9.png"])
    assert all(h.path != "/p/9.png" for h in reader.search([q], k=10)[0])  # and this connection's own
    assert reader.scanner._plans[True] is not plan
    reader.close()


@pytest.mark.parametrize("kind", ["rowcol", "int8", "binary"])
def test_candidate_packs_score_every_page_by_its_own_vectors(tmp_path: Path, monkeypatch, kind: str) -> None:
    """The candidate stage scores packs of many segments in one call each: every page still gets
    the MaxSim of its own compact vectors, through removed pages' dead rows, pages sharing rows,
    and commits that keep full packs and rebuild the tail."""
    from runtime.stores.local import scan

    rng = np.random.default_rng(11)
    recs = [_page(rng, i) for i in range(24)]
    comp = Compaction.parse(kind)
    pack_rows = 5 * len(comp.encode(recs[0].embeddings, recs[0].layout))
    monkeypatch.setattr(scan, "PACK_ROWS", pack_rows)  # three two-page segments a pack
    index = Index.create(tmp_path / "idx", IDENTITY, kind, keep_originals=False)  # scores are the candidates'
    with index.writer():
        for i in range(0, 20, 2):  # a segment per two pages
            index.add_batch(recs[i : i + 2])
        index.add_batch([PageRecord("/copy/3.png", 1, "h3", 10, None, ((3, 8, 6),))])  # shares /p/3's rows
        index.remove(["/p/2.png", "/p/8.png", "/p/9.png"])  # dead rows inside a pack; a whole segment gone
    alive = {r.path: r for r in recs[:20] if r.path not in ("/p/2.png", "/p/8.png", "/p/9.png")}
    alive["/copy/3.png"] = recs[3]
    q = recs[3].embeddings[:6] + 0.3 * rng.standard_normal((6, 128)).astype(np.float32)

    def check() -> None:
        hits = index.search([q], k=100)[0]
        got = {h.path: h.score for h in hits}
        assert set(got) == set(alive)
        plan = index.scanner._plans[True]
        candidate = index.scanner._score_all([q], plan, compact=True)[0]
        by_path = {decode_path(r[5]): candidate[i] for i, r in enumerate(plan.rows)}
        for path, r in alive.items():
            enc = comp.encode(r.embeddings, r.layout)
            want = score([q], [comp.to_float(enc, 128).astype(np.float32)])[0, 0]
            assert got[path] == pytest.approx(float(want), rel=1e-5, abs=1e-6), path  # ranked by the vectors
            layout = CodeLayout.build([0, len(enc)])
            codes, scale = comp.to_codes(enc, 128, layout.offsets)
            alone = score_codes([q], codes, layout.doc_scale(scale), layout, comp.code_decoder(128))
            assert by_path[path] == alone[0, 0], path  # picked by its own codes, bit for bit as if alone

    check()
    packs = index.scanner._packs
    assert len(packs) > 2 and sum(len(p.segs) for p in packs) == 9
    full = [p for p in packs if len(p.codes) >= pack_rows]
    assert full and all(len(p.segs) > 1 for p in full)
    for p in full:  # RAM holds codes; the compact files stay memory-mapped
        for seg, cfile in p.segs:
            assert isinstance(index.segments._maps[(seg, cfile)], np.memmap)
    with index.writer():
        index.add_batch(recs[20:22])
    alive.update({r.path: r for r in recs[20:22]})
    check()
    assert all(any(p is q for q in index.scanner._packs) for p in full)  # full packs survive a commit
    index.segments.keep_only(set())  # what an exact search's plan does to the mapped files
    with index.writer():  # a commit, so the next search plans again and maps the segments again
        index.add_batch(recs[22:24])
    alive.update({r.path: r for r in recs[22:24]})
    check()
    assert all(any(p is q for q in index.scanner._packs) for p in full)  # and their codes are not made again
    index.close()


def test_overlapping_spans_still_score_each_page_by_its_own_vectors(tmp_path: Path) -> None:
    """Spans that overlap can only come from a damaged catalog; the pack then scores each span as
    its own copy, requantized to one scale per span, so every page still gets the MaxSim of the
    rows it points at, from the candidate stage (within quantization) and from the rerank."""
    import sqlite3

    rng = np.random.default_rng(12)
    recs = [_page(rng, i) for i in range(4)]
    comp = Compaction.parse("rowcol")
    with Index.create(tmp_path / "idx", IDENTITY, "rowcol", keep_originals=False) as index, index.writer():
        index.add_batch(recs)
    conn = sqlite3.connect(tmp_path / "idx" / DB)
    with conn:  # /p/1 now starts one vector early, inside /p/0's span
        conn.execute("UPDATE pages SET c_start = c_start - 1 WHERE path = ?", (b"/p/1.png",))
    spans = dict(conn.execute("SELECT path, segment || ',' || c_start || ',' || c_count FROM pages"))
    conn.close()
    q = recs[1].embeddings[:5]
    with Index.open(tmp_path / "idx") as index:
        got = {h.path: h.score for h in index.search([q], k=10)[0]}
        plan = index.scanner._plans[True]
        candidate = index.scanner._score_all([q], plan, compact=True)[0]
        by_path = {decode_path(r[5]): candidate[i] for i, r in enumerate(plan.rows)}
        for path, span in spans.items():
            seg, start, count = (int(x) for x in span.split(","))
            sql = "SELECT cfile, crows FROM segments WHERE id = ?"
            cfile, crows = index.catalog.conn.execute(sql, (seg,)).fetchone()
            rows = index.segments.compact(seg, cfile, crows)[start : start + count]
            want = score([q], [comp.to_float(rows, 128).astype(np.float32)])[0, 0]
            name = path.decode() if isinstance(path, bytes) else path
            assert got[name] == pytest.approx(float(want), rel=1e-5, abs=1e-6), name
            assert abs(by_path[name] - want) <= 0.01 * len(q), name


def test_overlapping_spans_of_pages_at_different_scales_are_requantized() -> None:
    """Two pages' codes at scales 10x apart, and a damaged table whose spans overlap: each span's
    copy gets one scale again, so neither page is scored at the other's scale."""
    from runtime.scoring import quantize_rows
    from runtime.stores.local.scan import _Pack, _pack_spans

    rng = np.random.default_rng(14)
    rows = rng.standard_normal((8, 128)).astype(np.float32)
    rows[:4] *= 0.1
    codes, scale = quantize_rows(rows, np.array([0, 4, 8]))
    pack = _Pack(((7, "c"),), codes, scale, {7: 0})
    table = [(7, *([None] * 8), 0, 5), (7, *([None] * 8), 3, 5)]  # /a: rows 0-4, /b: rows 3-7
    ps = _pack_spans(pack, table, {7: [0, 1]})
    q = [rows[4:6] + 0.05 * rng.standard_normal((2, 128)).astype(np.float32), rows[1:3]]
    got = score_codes(q, ps.pack.codes, ps.scale, ps.layout)[:, ps.doc]
    back = (codes.astype(np.float32) - 128) * scale[:, None]
    want = score(q, [back[0:5], back[3:8]])
    assert np.all(np.abs(got - want) <= 0.01 * np.abs(want) + 1e-3), (got, want)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("kind", ["rowcol", "int8"])
def test_nan_in_a_compact_file_is_damage_never_a_score(tmp_path: Path, monkeypatch, kind: str, keep: bool) -> None:
    """A same-size compact file with a NaN (an fp16 value, or an int8 vector's scale) is caught
    by the checksum of a small index, and by the candidate stage's NaN check in a big one."""
    from runtime.stores.local import scan

    rng = np.random.default_rng(13)
    recs = [_page(rng, i) for i in range(6)]
    with Index.create(tmp_path / "idx", IDENTITY, kind, keep_originals=keep) as index, index.writer():
        index.add_batch(recs[:3])
        index.add_batch(recs[3:])
    suffix = Compaction.parse(kind).suffix
    cfile = next(f for f in sorted((tmp_path / "idx" / SEGMENTS).iterdir()) if f.suffix == suffix)
    raw = bytearray(cfile.read_bytes())
    if kind == "int8":
        raw[128:132] = np.float32(np.nan).tobytes()  # the first vector's scale
    else:
        raw[0:2] = np.float16(np.nan).tobytes()
    cfile.write_bytes(bytes(raw))
    q = [recs[0].embeddings[:4]]
    with Index.open(tmp_path / "idx") as index, pytest.raises(StoreError, match="do not match the checksum"):
        index.search(q)
    monkeypatch.setattr(scan, "VERIFY_ON_OPEN_BYTES", 0)  # a big index: no hashing per search
    with Index.open(tmp_path / "idx") as index, pytest.raises(StoreError, match="do not match the checksum"):
        index.search(q)  # the NaN was found, then the file was checked


def test_packed_compact_files_are_not_kept_mapped(tmp_path: Path, monkeypatch) -> None:
    """With the originals kept, a search reads a compact file once, to turn it into codes, and
    never maps it; a commit reads only the new segment's file: the process's maps and file
    descriptors grow with the originals alone (one each per segment), and RAM holds the codes."""
    from runtime.stores.local import scan

    rng = np.random.default_rng(14)
    recs = [_page(rng, i) for i in range(8)]
    comp = Compaction.parse("rowcol")
    monkeypatch.setattr(scan, "PACK_ROWS", 3 * len(comp.encode(recs[0].embeddings, recs[0].layout)))
    index = Index.create(tmp_path / "idx", IDENTITY, "rowcol")
    mapped: list[str] = []
    real = index.segments.read_compact

    def counted(seg: int, cfile: str, *args, **kwargs) -> np.ndarray:
        mapped.append(cfile)
        return real(seg, cfile, *args, **kwargs)

    monkeypatch.setattr(index.segments, "read_compact", counted)
    with index.writer():
        for i in range(0, 6, 2):
            index.add_batch(recs[i : i + 2])
    q = [recs[1].embeddings[:5]]
    index.search(q, k=3)
    assert len(mapped) == 3 and not any(f.endswith(comp.suffix) for _, f in index.segments._maps)
    with index.writer():
        index.add_batch(recs[6:8])
    mapped.clear()
    index.search(q, k=3)
    assert len(mapped) == 1 and not any(f.endswith(comp.suffix) for _, f in index.segments._maps)
    exact = index.search(q, k=3, exact=True)
    assert [h.path for h in index.search(q, k=3)[0]] == [h.path for h in exact[0]]  # rerank 100 covers all 8
    with index.writer():
        index.remove(["/p/1.png"])
    mapped.clear()
    got = index.search(q, k=3)[0]  # the pack that held /p/1 is rebuilt from the codes already made
    assert [h.path for h in got] == [h.path for h in index.search(q, k=3, exact=True)[0]] and not mapped
    with index.writer():
        assert index.compact()["segments_rewritten"] >= 1  # new files: new codes
    got = index.search(q, k=3)[0]
    assert [h.path for h in got] == [h.path for h in index.search(q, k=3, exact=True)[0]] and mapped
    assert not any(f.endswith(comp.suffix) for _, f in index.segments._maps)
    index.close()
