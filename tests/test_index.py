"""Encode -> index -> search, crash safety, bundle identity, Qdrant parity, flat memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.demo import SAMPLE_PAGES, render_page
from export.validate import synthetic_page
from runtime import ColLFM2, ColLFM2Processor, score
from runtime.errors import StoreError
from runtime.ingest.sources import Failed, iter_sources
from runtime.ingest.stream import Encoded, encode_stream
from runtime.stores.local.index import Index, PageRecord

PRECISIONS = ("fp32", "fp16", "int8", "int8-qdq")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rendered pages: three PNGs, a 2-page PDF, and a large scan that tiles."""
    d = tmp_path_factory.mktemp("pages")
    imgs = [render_page(lines) for lines in SAMPLE_PAGES.values()]
    for name, img in zip(SAMPLE_PAGES, imgs, strict=True):
        img.save(d / name)
    imgs[0].save(d / "doc.pdf", save_all=True, append_images=[imgs[2]], resolution=72)
    synthetic_page(1400, 1000, seed=5).save(d / "scan.jpg")
    return d


@pytest.mark.parametrize("precision", PRECISIONS)
def test_index_search_equals_brute_force(tiny_bundle: Path, pages_dir: Path, tmp_path: Path, precision: str) -> None:
    idx = tmp_path / "idx"
    res = _cli("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--precision", precision,
               "--commit-pages", "2", str(pages_dir))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "added 6 page(s)" in res.stdout and "RANDOM WEIGHTS" in res.stderr
    res = _cli("search", "--index", str(idx), "--json", "-k", "10", "total", "amount")
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert [h["rank"] for h in hits] == list(range(1, 7))

    # Brute force: encode everything in memory and score with score().
    model = ColLFM2.from_pretrained(tiny_bundle, precision=precision)
    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    docs, names = [], []
    for item in encode_stream(model, proc, iter_sources([pages_dir])):
        assert isinstance(item, Encoded)
        docs.append(item.embeddings.astype(np.float16))  # the index stores fp16
        names.append((item.source.path, item.source.page))
    (q,) = model.embed_queries(["total amount"])
    s = score([q], docs)[0]
    order = np.argsort(-s, kind="stable")
    assert [(h["path"], h["page"]) for h in hits] == [names[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in hits], s[order], rtol=1e-5)


def _create_fp32(idx: str, bundle: Path, page: Path) -> None:
    """A new index in fp32 (the CPU's default precision differs by CPU class)."""
    res = _cli("index", "add", "--index", idx, "--bundle", str(bundle), "--precision", "fp32", str(page))
    assert res.returncode == 0, res.stderr


def test_add_skips_duplicates_remove_and_info(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    idx = str(tmp_path / "idx")
    _create_fp32(idx, tiny_bundle, pages_dir / "invoice.png")
    res = _cli("index", "add", "--index", idx, str(pages_dir / "invoice.png"), str(pages_dir / "doc.pdf"))
    assert res.returncode == 0 and "added 2 page(s), skipped 1" in res.stdout
    assert "skipped" in res.stderr and "already indexed" in res.stderr
    info = json.loads(_cli("index", "info", "--index", idx, "--json").stdout)
    assert info["pages"] == 3 and info["bundle_model"] == "tiny" and info["precision"] == "fp32"
    res = _cli("index", "remove", "--index", idx, str(pages_dir / "doc.pdf"))
    assert res.returncode == 0 and "removed 2 page(s)" in res.stdout
    info = json.loads(_cli("index", "info", "--index", idx, "--json").stdout)
    assert info["pages"] == 1 and info["dead_rows"] == 0  # the PDF had its own segment, now deleted
    with Index.open(idx) as index:
        assert index.check() == []


def test_bundle_mismatch_refused(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    idx = str(tmp_path / "idx")
    _create_fp32(idx, tiny_bundle, pages_dir / "invoice.png")
    for cmd in (("index", "add", "--index", idx, "--precision", "fp16", str(pages_dir / "contents.png")),
                ("search", "--index", idx, "--precision", "int8", "hello")):  # fmt: skip
        res = _cli(*cmd)
        assert res.returncode == 2, res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "cannot be compared" in errors[0], res.stderr


def test_bad_inputs_through_the_cli(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("hello")
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    Image.new("RGB", (1, 20000)).save(bad / "strip.png")
    synthetic_page(400, 300).save(bad / "cut.jpg")
    (bad / "cut.jpg").write_bytes((bad / "cut.jpg").read_bytes()[:600])  # truncated JPEG
    bomb = Image.new("L", (1, 1))
    bomb.save(bad / "bomb.png")
    data = bytearray((bad / "bomb.png").read_bytes())
    data[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR claims 60000x60000
    (bad / "bomb.png").write_bytes(bytes(data))
    idx = str(tmp_path / "idx")
    b = str(tiny_bundle)
    cases = [
        ("index", "add", "--index", idx, "--bundle", b, str(tmp_path / "missing.png")),
        ("index", "add", "--index", idx, "--bundle", b, str(bad / "empty.png")),
        ("index", "add", "--index", idx, "--bundle", b, str(bad / "text.png")),
        ("index", "add", "--index", idx, "--bundle", b, str(bad / "broken.pdf")),
        ("index", "add", "--index", idx, "--bundle", b, str(bad / "strip.png")),
        ("index", "add", "--index", idx, "--bundle", b, str(bad / "cut.jpg")),
        ("index", "add", "--index", idx, "--bundle", b, str(bad / "bomb.png")),
        ("index", "add", "--index", idx, "--bundle", str(tmp_path / "nobundle"), str(pages_dir)),
        ("index", "add", "--index", str(tmp_path / "new"), str(pages_dir)),  # no index and no --bundle
        ("search", "--index", str(tmp_path / "nowhere"), "hello"),
        ("encode", "--bundle", b, "--out", str(tmp_path / "x.npz"), str(bad / "text.png")),
    ]
    for cmd in cases:
        res = _cli(*cmd)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert res.returncode == 2, (cmd, res.stderr)
        assert len(errors) >= 1 and "Traceback" not in res.stderr, (cmd, res.stderr)
    # A batch with good and bad pages: the good ones are committed, the run exits 1.
    res = _cli("index", "add", "--index", idx, "--bundle", b, str(bad), str(pages_dir / "invoice.png"))
    assert res.returncode == 1 and "added 1 page(s)" in res.stdout
    assert res.stderr.count("error: ") == 6
    res = _cli("search", "--index", idx, " ")
    assert res.returncode == 2 and "empty query" in res.stderr
    res = _cli("search", "--index", idx, "word " * 3000)
    assert res.returncode == 2 and "tokens" in res.stderr and "Traceback" not in res.stderr


def test_encode_npz(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    res = _cli("encode", "--bundle", str(tiny_bundle), "--out", str(out), str(pages_dir))
    assert res.returncode == 0, res.stderr
    z = np.load(out, allow_pickle=False)
    assert z["embeddings"].shape[1] == 128 and z["offsets"][-1] == z["embeddings"].shape[0]
    assert len(z["names"]) == len(z["pages"]) == len(z["offsets"]) - 1 == 6
    assert list(z["pages"][z["names"] == str((pages_dir / "doc.pdf").resolve())]) == [1, 2]


# -- crash safety ---------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import runtime.stores.local.durable as index_mod
point, nth = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def hit():
    calls["n"] += 1
    if calls["n"] == nth:
        os.kill(os.getpid(), signal.SIGKILL)

if point == "segment":  # after the segment file is fsynced and renamed, before its metadata commits
    real = index_mod.fsync_dir
    def patched(path):
        real(path)
        hit()
    index_mod.fsync_dir = patched
elif point == "write":  # in the middle of writing a segment's bytes
    real_replace = os.replace
    def patched_replace(a, b):
        hit()
        return real_replace(a, b)
    index_mod.os.replace = patched_replace
elif point == "commit":  # right after a metadata commit
    real_tx = index_mod.transaction
    import contextlib
    @contextlib.contextmanager
    def patched_tx(conn):
        with real_tx(conn):
            yield
        hit()
    index_mod.transaction = patched_tx
from runtime.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(("point", "nth"), [("write", 1), ("write", 3), ("segment", 2), ("commit", 2), ("commit", 4)])
def test_kill_9_mid_add(tiny_bundle: Path, pages_dir: Path, tmp_path: Path, point: str, nth: int) -> None:
    idx = tmp_path / "idx"
    # Create the index with one committed page first (a kill must never lose it).
    assert (
        _cli("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), str(pages_dir / "scan.jpg")).returncode
        == 0
    )
    args = ["index", "add", "--index", str(idx), "--commit-pages", "1", str(pages_dir)]
    res = subprocess.run(
        [sys.executable, "-c", KILLER, point, str(nth), *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    with Index.open(idx) as index:
        # A kill can leave an interrupted write (its intent and maybe its file): check names it,
        # the next writer removes it. Nothing else may be wrong.
        assert all("not in the database" not in p and "sha256" not in p for p in index.check())
        stored = {(p["path"], p["page"]) for p in index.pages()}
    assert (str((pages_dir / "scan.jpg").resolve()), 1) in stored
    # Every completed commit is there, a whole file each (a file's pages commit together): the
    # first add committed one file; each add_batch is an intent transaction and a commit.
    files = {path for path, _ in stored}
    pdf = str((pages_dir / "doc.pdf").resolve())
    assert pdf not in files or {(pdf, 1), (pdf, 2)} <= stored
    committed = {"write": nth - 1, "segment": nth - 1, "commit": nth // 2}[point]
    assert len(files) == 1 + committed
    # The next writer cleans up and completes the rest, without duplicates.
    res = _cli("index", "add", "--index", str(idx), str(pages_dir))
    assert res.returncode == 0, res.stderr
    with Index.open(idx) as index:
        assert index.check() == [] and len(index.pages()) == 6
        assert sorted(f.name for f in (idx / "segments").iterdir()) == sorted(
            r[0] for r in index.conn.execute("SELECT file FROM segments")
        )
        assert index.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 0


def test_damaged_index_is_a_clear_error(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    assert (
        _cli(
            "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), str(pages_dir / "invoice.png")
        ).returncode
        == 0
    )
    seg = next((idx / "segments").iterdir())
    seg.write_bytes(seg.read_bytes()[:100])
    res = _cli("search", "--index", str(idx), "hello")
    assert res.returncode == 2 and "damaged" in res.stderr
    (idx / "index.sqlite").write_bytes(b"garbage" * 100)
    res = _cli("index", "info", "--index", str(idx))
    assert res.returncode == 2 and "not a readable index" in res.stderr


# -- scale-out and memory -------------------------------------------------------------------


def _random_pages(n: int, rng: np.random.Generator, rows: int = 266, start: int = 0) -> list[PageRecord]:
    out = []
    for i in range(start, start + n):
        e = rng.standard_normal((int(rng.integers(rows // 2, rows)), 128)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        out.append(PageRecord(f"/synthetic/{i}.png", 1, f"h{i}", 1000, e))
    return out


IDENTITY = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
            "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip


def test_qdrant_local_mode_equals_exact(tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    from runtime.stores.qdrant_server import QdrantStore

    rng = np.random.default_rng(0)
    pages = _random_pages(40, rng, rows=30)
    local = Index.create(tmp_path / "idx", IDENTITY)
    qd = QdrantStore.open(str(tmp_path / "qdrant"), "t", IDENTITY)
    with local.writer():
        local.add_batch(pages)
    assert qd.add_batch(pages) == 40 and qd.add_batch(pages[:3]) == 0  # duplicates skipped
    queries = [p.embeddings[:7] + 0.1 * rng.standard_normal((7, 128)) for p in _random_pages(5, rng, rows=20)]
    exact = score(queries, [p.embeddings.astype(np.float16) for p in pages])
    for got_l, got_q in zip(local.search(queries, k=10), qd.search(queries, k=10), strict=True):
        assert [h.path for h in got_l] == [h.path for h in got_q]
        np.testing.assert_allclose([h.score for h in got_q], [h.score for h in got_l], rtol=1e-3)
    assert [h.path for h in local.search(queries, k=40)[0]] == [
        pages[i].path for i in np.argsort(-exact[0], kind="stable")
    ]
    with pytest.raises(StoreError, match="precision differs"):
        qd.check_bundle({**IDENTITY, "precision": "int8"})
    assert qd.remove(["/synthetic/0.png"]) == 1 and qd.info()["pages"] == 39
    qd.close()
    local.close()


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_1000_add_batch_commits_keep_memory_flat(tmp_path: Path) -> None:
    """The store alone (the CLI's whole ingest path: tests/test_streaming.py)."""
    rng = np.random.default_rng(1)
    with Index.create(tmp_path / "idx", IDENTITY) as index, index.writer():
        samples = []
        for batch in range(50):  # 50 commits x 20 pages
            assert index.add_batch(_random_pages(20, rng, start=20 * batch)) == 20
            if batch == 9:
                warm = _rss_kb()
            samples.append(_rss_kb())
        assert len(index.pages()) == 1000 and index.check() == []
    growth = (max(samples[10:]) - warm) / warm
    assert growth < 0.05, f"RSS grew {growth:.1%} after warm-up"


def test_progress_bar_only_when_asked() -> None:
    from runtime.ingest.stream import progress

    quiet = progress(10, "x", enabled=False)
    assert type(quiet).__name__ == "_Quiet"
    quiet.update()
    quiet.close()
    bar = progress(10, "x", enabled=True)
    assert type(bar).__name__ == "tqdm"
    bar.close()


def test_iter_sources_reports_missing_and_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    items = list(iter_sources([tmp_path / "nope.png", tmp_path / "empty"]))
    assert all(isinstance(i, Failed) for i in items) and len(items) == 2
    assert "no such file" in items[0].message and "no images or PDFs" in items[1].message


def test_qdrant_backend_through_the_cli(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    local, qd = str(tmp_path / "idx"), str(tmp_path / "qdrant")
    b = str(tiny_bundle)
    assert _cli("index", "add", "--index", local, "--bundle", b, str(pages_dir)).returncode == 0
    res = _cli("index", "add", "--backend", "qdrant", "--index", qd, "--bundle", b, str(pages_dir))
    assert res.returncode == 0 and "added 6 page(s)" in res.stdout, res.stderr
    exact = json.loads(_cli("search", "--index", local, "--json", "net income").stdout)
    got = json.loads(_cli("search", "--backend", "qdrant", "--index", qd, "--json", "net income").stdout)
    assert [(h["path"], h["page"]) for h in got] == [(h["path"], h["page"]) for h in exact]
    res = _cli("search", "--backend", "qdrant", "hello")
    assert res.returncode == 2 and "--index DIR is required" in res.stderr


def test_search_after_removing_a_page_inside_a_segment(tmp_path: Path) -> None:
    """A removed page leaves a hole in its segment; search must score the live ranges only."""
    rng = np.random.default_rng(7)
    pages = _random_pages(6, rng, rows=40)
    with Index.create(tmp_path / "idx", IDENTITY) as index:
        with index.writer():
            index.add_batch(pages)  # one segment
            assert index.remove([pages[2].path]) == 1
        assert index.info()["dead_rows"] == len(pages[2].embeddings) and index.check() == []
        q = [pages[4].embeddings[:5]]
        hits = index.search(q, k=10)[0]
        live = [p for i, p in enumerate(pages) if i != 2]
        exact = score(q, [p.embeddings.astype(np.float16) for p in live])[0]
        assert [h.path for h in hits] == [live[i].path for i in np.argsort(-exact, kind="stable")]
        np.testing.assert_allclose([h.score for h in hits], np.sort(exact)[::-1], rtol=1e-5)
