"""The index never loses, hides or falsifies a page: damage, updates, odd files, full disks.

One test (or group) per class of failure found by hostile use; the randomized model test at the
end runs add / remove / re-add of changed files / compact with random kill -9s and checks the
index against what it must hold after every step.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from killers import KILL_AT_NTH_FSYNC

from export.validate import synthetic_page
from runtime.bundle.manifest import MANIFEST
from runtime.errors import StoreError
from runtime.scoring import score
from runtime.stores.local.index import DB, SEGMENTS, Index, PageRecord

IDENTITY = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
            "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip


def _cli(*args: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, timeout=timeout, **kw)


def _text(res: subprocess.CompletedProcess) -> tuple[str, str]:
    return res.stdout.decode("utf-8", "surrogateescape"), res.stderr.decode("utf-8", "surrogateescape")


def _one_line_error(res: subprocess.CompletedProcess, code: int = 2) -> str:
    out, err = _text(res)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert res.returncode == code and "Traceback" not in err and len(errors) == 1, (res.returncode, out, err)
    return errors[0]


def _vecs(rng: np.random.Generator, n: int) -> np.ndarray:
    e = rng.standard_normal((n, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _page(path: str, h: str, rng: np.random.Generator, page: int = 1, rows: int = 12) -> PageRecord:
    return PageRecord(path, page, h, 100, _vecs(rng, rows))


def _filled(root: Path, n: int = 6, seed: int = 0) -> Index:
    rng = np.random.default_rng(seed)
    index = Index.create(root, IDENTITY)
    with index.writer():
        for i in range(0, n, 2):
            index.add_batch([_page(f"/d/{j}.png", f"h{j}", rng) for j in (i, i + 1)])
    return index


def _brute(index: Index, q: np.ndarray) -> dict[tuple[str, int], float]:
    """Scores straight from the segment files and the page table, bypassing the search code."""
    out = {}
    for path, page, seg, start, count in index.conn.execute(
        "SELECT p.path, p.page, s.file, p.row_start, p.row_count FROM pages p JOIN segments s ON s.id = p.segment"
    ):
        rows = np.fromfile(index.root / SEGMENTS / seg, dtype=np.float16).reshape(-1, 128)[start : start + count]
        out[(os.fsdecode(path), page)] = float(score([q], [rows])[0, 0])
    return out


@pytest.fixture(scope="module")
def pages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ipages")
    for i, (h, w) in enumerate(((400, 300), (300, 420), (360, 360))):
        synthetic_page(h, w, seed=60 + i).save(d / f"p{i}.png")
    return d


# -- data loss: a damaged database never makes a writer delete committed segments --------------


def _empty_index_btree(db: Path, index_name: str) -> None:
    """Overwrite an index b-tree's root with an empty leaf: the table keeps its rows, queries that
    use the index see none, and SQLite's quick check does not notice."""
    conn = sqlite3.connect(db)
    root, page_size = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index_name,)).fetchone()[0], \
        conn.execute("PRAGMA page_size").fetchone()[0]  # fmt: skip
    conn.close()
    leaf = bytes([0x0A, 0, 0, 0, 0]) + (page_size if page_size < 65536 else 0).to_bytes(2, "big") + b"\0"
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(leaf + bytes(page_size - len(leaf)))


def test_damaged_btree_never_deletes_segments(tmp_path: Path) -> None:
    index = _filled(tmp_path / "idx")
    index.close()
    before = sorted(p.name for p in (tmp_path / "idx" / SEGMENTS).iterdir())
    _empty_index_btree(tmp_path / "idx" / DB, "sqlite_autoindex_segments_1")
    conn = sqlite3.connect(tmp_path / "idx" / DB)
    assert conn.execute("SELECT file FROM segments").fetchall() == []  # the covering index reads empty
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # and the quick check is happy
    conn.close()
    with Index.open(tmp_path / "idx") as index, pytest.raises(StoreError, match=r"damaged.*nothing was changed"), \
            index.writer():  # fmt: skip
        pass
    assert sorted(p.name for p in (tmp_path / "idx" / SEGMENTS).iterdir()) == before
    with Index.open(tmp_path / "idx") as index:
        assert any("integrity" in p for p in index.check())


def test_unknown_files_stop_a_writer(tmp_path: Path) -> None:
    """Segment rows gone (a damaged table): their files are not provably orphans, so nothing is deleted."""
    index = _filled(tmp_path / "idx")
    index.conn.execute("PRAGMA foreign_keys=OFF")
    index.conn.execute("DELETE FROM segments")
    before = sorted(p.name for p in (tmp_path / "idx" / SEGMENTS).iterdir())
    with pytest.raises(StoreError, match="does not know"), index.writer():
        pass
    assert sorted(p.name for p in (tmp_path / "idx" / SEGMENTS).iterdir()) == before
    problems = index.check()
    assert any("not in the database" in p for p in problems) and any("do not exist" in p for p in problems)
    index.close()


def test_missing_segment_stops_a_writer(tmp_path: Path) -> None:
    index = _filled(tmp_path / "idx")
    victim = next((tmp_path / "idx" / SEGMENTS).iterdir())
    victim.unlink()
    with pytest.raises(StoreError, match="missing or has the wrong size"), index.writer():
        pass
    assert any("missing" in p for p in index.check())
    index.close()


# -- wrong results: ids never reused, readers revalidate, races --------------------------------


def test_long_lived_reader_after_remove_and_add(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    writer = _filled(tmp_path / "idx")
    reader = Index.open(tmp_path / "idx")
    q = _vecs(rng, 5)
    reader.search([q], k=10)  # maps every segment
    ids_before = {i for (i,) in writer.conn.execute("SELECT id FROM segments")}
    with writer.writer():
        writer.remove(["/d/4.png", "/d/5.png"])  # the last segment goes
        writer.add_batch([_page("/d/new.png", "hn", rng)])
    ids_after = {i for (i,) in writer.conn.execute("SELECT id FROM segments")}
    assert not (ids_after - ids_before) & ids_before and max(ids_after) > max(ids_before)  # a fresh id
    want = _brute(writer, q)
    got = {(h.path, h.page): h.score for h in reader.search([q], k=10)[0]}
    assert got.keys() == want.keys() and ("/d/new.png", 1) in got
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-5
    reader.close()
    writer.close()


def test_searches_racing_writers(tmp_path: Path) -> None:
    """A reader searching while another process removes, adds and compacts never fails and
    never sees a half-made state."""
    _filled(tmp_path / "idx", n=8).close()
    script = f"""
import numpy as np, sys
from runtime.stores.local.index import Index, PageRecord
rng = np.random.default_rng(5)
idx = Index.open({str(tmp_path / "idx")!r})
for i in range(30):
    with idx.writer():
        idx.remove([f"/d/{{i % 8}}.png"])
        e = rng.standard_normal((12, 128)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        idx.add_batch([PageRecord(f"/d/{{i % 8}}.png", 1, f"v{{i}}", 100, e)])
        if i % 5 == 4:
            idx.compact()
"""
    writer = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    rng = np.random.default_rng(2)
    errors, searches = [], 0
    with Index.open(tmp_path / "idx") as reader:
        while writer.poll() is None or searches < 5:
            try:
                hits = reader.search([_vecs(rng, 4)], k=20)[0]
                assert len({h.path for h in hits}) == len(hits) and 7 <= len(hits) <= 8
                assert all(np.isfinite(h.score) for h in hits)
            except Exception as exc:  # collected: the assertion below names them
                errors.append(repr(exc))
            searches += 1
    assert writer.wait() == 0, writer.stderr.read().decode()
    assert not errors, errors[:3]
    with Index.open(tmp_path / "idx") as index:
        assert index.check() == [] and len(index.pages()) == 8


# -- identity by (path, page) -------------------------------------------------------------------


def test_pages_are_identified_by_path_and_page(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    a, b = work / "a.png", work / "b.png"
    a.write_bytes((pages_dir / "p0.png").read_bytes())
    b.write_bytes(a.read_bytes())  # identical bytes, another path
    idx = str(tmp_path / "idx")
    res = _cli("index", "add", "--index", idx, "--bundle", str(tiny_bundle), "--precision", "fp32", str(work))
    assert res.returncode == 0 and b"added 2 page(s)" in res.stdout, res.stderr
    info = json.loads(_cli("index", "info", "--index", idx, "--json").stdout)
    assert info["pages"] == 2 and info["shared_pages"] == 0  # two new files in one batch: both encoded

    def hits() -> list[str]:
        return [h["path"] for h in json.loads(_cli("search", "--index", idx, "--json", "-k", "10", "x").stdout)]

    assert sorted(hits()) == [str(a), str(b)]
    # Removing one of two identical files leaves the other searchable.
    assert _cli("index", "remove", "--index", idx, str(a)).returncode == 0
    assert hits() == [str(b)]
    # A copy added later shares the stored rows instead of being encoded again.
    a.write_bytes(b.read_bytes())
    res = _cli("index", "add", "--index", idx, str(a))
    assert b"added 1 page(s) (1 sharing" in res.stdout, res.stdout
    assert sorted(hits()) == [str(a), str(b)]
    # An edited file replaces its pages: one version ranks, with the new version's vectors.
    a.write_bytes((pages_dir / "p1.png").read_bytes())
    res = _cli("index", "add", "--index", idx, str(a))
    assert res.returncode == 0 and b"added 1 page(s)" in res.stdout
    assert sorted(hits()) == [str(a), str(b)]
    with Index.open(Path(idx)) as index:
        pages = {p["path"]: p for p in index.pages()}
        assert len(pages) == 2 and pages[str(a)]["content_hash"] != pages[str(b)]["content_hash"]
    # A renamed file: the new name is stored; --missing drops the name that is gone.
    c = work / "c.png"
    a.rename(c)
    assert _cli("index", "add", "--index", idx, str(work)).returncode == 0
    assert sorted(hits()) == [str(a), str(b), str(c)]
    res = _cli("index", "remove", "--index", idx, "--missing")
    assert res.returncode == 0 and b"removed 1 page(s)" in res.stdout
    assert sorted(hits()) == [str(b), str(c)]


def test_changed_file_replaced_in_one_commit(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with Index.create(tmp_path / "idx", IDENTITY) as index, index.writer():
        index.add_batch([_page("/doc.pdf", f"old#p{i}", rng, page=i) for i in (1, 2, 3)])
        # The new version has two pages: the old page 3 must not survive it.
        index.add_batch([_page("/doc.pdf", f"new#p{i}", rng, page=i) for i in (1, 2)])
        assert sorted((p["page"], p["content_hash"]) for p in index.pages()) == [(1, "new#p1"), (2, "new#p2")]
        assert index.info()["dead_rows"] == 0 and index.info()["segments"] == 1  # the old one went whole
        assert index.add_batch([_page("/doc.pdf", "new#p1", rng, page=1)]) == 0  # unchanged: skipped


def test_compact_reclaims_dead_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    index = _filled(tmp_path / "idx", n=8)
    q = _vecs(rng, 6)
    with index.writer():
        index.remove(["/d/0.png", "/d/3.png", "/d/5.png"])
        index.add_batch([PageRecord("/d/copy.png", 1, "h1", 100, None)])  # shares /d/1's rows
        before = index.info()
        want = {k: round(v, 5) for k, v in _brute(index, q).items()}
        res = index.compact()
    after = index.info()
    assert before["dead_rows"] == 36 and after["dead_rows"] == 0 and res["rows_after"] == before["rows"]
    assert after["pages"] == before["pages"] == 6 and after["shared_pages"] == 1
    assert after["bytes"] < before["bytes"] and index.check() == []
    assert {(h.path, h.page): round(h.score, 5) for h in index.search([q], k=10)[0]} == want
    index.close()


# -- odd files ------------------------------------------------------------------------------------


def test_every_tiff_frame_is_a_page_and_animations_say_so(tmp_path: Path) -> None:
    from runtime.ingest.sources import PageSource, iter_sources

    frames = [synthetic_page(200, 160, seed=s) for s in (1, 2, 3)]
    frames[0].save(tmp_path / "scan.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    items = list(iter_sources([tmp_path / "scan.tif", tmp_path / "anim.gif"]))
    assert all(isinstance(i, PageSource) for i in items)
    tif = [i for i in items if i.path.endswith(".tif")]
    assert [i.page for i in tif] == [1, 2, 3] and len({i.content_hash for i in tif}) == 3
    assert [i.name for i in tif] == [f"{tif[0].path}#{n}" for n in (1, 2, 3)]
    got = [np.asarray(i.load().convert("RGB")) for i in tif]
    for frame, want in zip(got, frames, strict=True):
        np.testing.assert_array_equal(frame, np.asarray(want))
    gif = [i for i in items if i.path.endswith(".gif")]
    assert len(gif) == 1 and "animated GIF (3 frames)" in gif[0].note


def test_non_utf8_names_round_trip(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9 \xff.png"
    with open(raw, "wb") as f:
        f.write((pages_dir / "p2.png").read_bytes())
    (folder / "plain.png").write_bytes((pages_dir / "p0.png").read_bytes())
    idx = str(tmp_path / "idx")
    res = _cli("index", "add", "--index", idx, "--bundle", str(tiny_bundle), str(folder))
    assert res.returncode == 0 and b"added 2 page(s)" in res.stdout, res.stderr
    again = _cli("index", "add", "--index", idx, str(folder))
    assert again.returncode == 0 and b"skipped 2 already indexed" in again.stdout  # a rerun goes past it
    human = _cli("search", "--index", idx, "-k", "5", "hello")
    assert raw in human.stdout  # printed as the bytes the file system has
    hits = json.loads(_cli("search", "--index", idx, "--json", "-k", "5", "hello").stdout)
    assert os.fsdecode(raw) in {h["path"] for h in hits}
    res = subprocess.run([sys.executable.encode(), b"-m", b"runtime", b"index", b"remove", b"--index",
                          idx.encode(), raw], capture_output=True, timeout=300)  # fmt: skip
    assert res.returncode == 0 and b"removed 1 page(s)" in res.stdout, res.stderr
    bad_query = subprocess.run([sys.executable.encode(), b"-m", b"runtime", b"search", b"--index", idx.encode(),
                                b"caf\xe9"], capture_output=True, timeout=300)  # fmt: skip
    assert "not valid UTF-8" in _one_line_error(bad_query)


# -- damage that looks fine ---------------------------------------------------------------------


def test_same_size_garbage_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _filled(tmp_path / "idx")
    index.close()
    seg = sorted((tmp_path / "idx" / SEGMENTS).iterdir())[1]
    garbage = np.frombuffer(os.urandom(seg.stat().st_size), np.uint16).copy()
    garbage[:10] = 0x7E00  # fp16 NaN
    seg.write_bytes(garbage.tobytes())
    q = [_vecs(np.random.default_rng(0), 3)]
    with Index.open(tmp_path / "idx") as index:
        with pytest.raises(StoreError, match="do not match the checksum"):
            index.search(q)  # small index: verified when mapped
        assert any("sha256 mismatch" in p for p in index.check())
    import runtime.stores.local.scan as scan_mod

    monkeypatch.setattr(scan_mod, "VERIFY_ON_OPEN_BYTES", 0)  # a big index: no hashing per search
    with Index.open(tmp_path / "idx") as index, pytest.raises(StoreError, match=r"checksum|non-finite"):
        index.search(q)  # the NaN rows are caught, never returned


def test_index_check_command(tmp_path: Path) -> None:
    _filled(tmp_path / "idx").close()
    ok = _cli("index", "check", "--index", str(tmp_path / "idx"))
    assert ok.returncode == 0 and b"every checksum verified" in ok.stdout
    seg = sorted((tmp_path / "idx" / SEGMENTS).iterdir())[0]
    data = bytearray(seg.read_bytes())
    data[7] ^= 0xFF
    seg.write_bytes(bytes(data))
    bad = _cli("index", "check", "--index", str(tmp_path / "idx"), "--json")
    report = json.loads(bad.stdout)
    assert bad.returncode == 1 and not report["healthy"] and "sha256 mismatch" in report["problems"][0]


# -- atomic creation ------------------------------------------------------------------------------

CREATE_KILLER = (
    KILL_AT_NTH_FSYNC
    + """
from runtime.stores.local.index import Index
Index.create(sys.argv[1], {"dim": "128", "precision": "fp32", "bundle_manifest_sha256": "0"})
"""
)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_kill_during_creation_leaves_nothing_half_made(tmp_path: Path, nth: int) -> None:
    root = tmp_path / "idx"
    res = subprocess.run([sys.executable, "-c", CREATE_KILLER, str(root), str(nth)], capture_output=True)
    assert res.returncode == -signal.SIGKILL
    if root.exists():  # killed after the rename: a whole index
        with Index.open(root) as index:
            assert index.check() == [] and index.meta["dim"] == "128"
        return
    with Index.create(root, IDENTITY) as index:  # and the next attempt just works
        assert index.check() == []


# -- one line, exit 2, for everything a user can get wrong -----------------------------------------


def test_full_disk_is_one_line_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.stores.local.segments as index_mod

    index = _filled(tmp_path / "idx")
    before = sorted((p["path"], p["content_hash"]) for p in index.pages())
    rng = np.random.default_rng(9)
    with index.writer():
        real = index_mod.tempfile.mkstemp

        def full(*a, **k):
            fd, _ = real(*a, **k)
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(index_mod.tempfile, "mkstemp", full)
        with pytest.raises(StoreError, match=r"no space left on device.*stored pages are intact"):
            index.add_batch([_page("/d/x.png", "hx", rng)])
        monkeypatch.undo()
        # The database itself full: SQLite fails the commit, and its ROLLBACK must not hide why.
        pages = index.conn.execute("PRAGMA page_count").fetchone()[0]
        index.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match="database or disk is full"):
            index.add_batch([_page(f"/d/y{i}.png", f"hy{i}", rng, rows=2) for i in range(400)])
        index.conn.execute("PRAGMA max_page_count = 1073741823")
    assert sorted((p["path"], p["content_hash"]) for p in index.pages()) == before
    with index.writer():  # the next writer cleans up what the failed ones left
        pass
    assert index.check() == []
    index.close()


def test_read_only_index_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.stores.local.segments as index_mod

    index = _filled(tmp_path / "idx")
    monkeypatch.setattr(index_mod.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))  # fmt: skip
    with index.writer(), pytest.raises(StoreError, match="read-only"):
        index.add_batch([_page("/d/z.png", "hz", np.random.default_rng(0))])
    index.close()
    ro = sqlite3.connect(f"file:{tmp_path / 'idx' / DB}?mode=ro", uri=True, isolation_level=None)
    index = Index(tmp_path / "idx", ro)
    with pytest.raises(StoreError, match="read-only"), index.writer():
        index.remove(["/d/0.png"])
    index.close()


def test_user_mistakes_are_one_line(tiny_bundle: Path, pages_dir: Path, tmp_path: Path) -> None:
    b, page = str(tiny_bundle), str(pages_dir / "p0.png")
    afile = tmp_path / "afile"
    afile.write_text("x")
    idx = tmp_path / "idx"
    assert _cli("index", "add", "--index", str(idx), "--bundle", b, page).returncode == 0
    cases = {
        "is a file": ("index", "add", "--index", str(afile), "--bundle", b, page),
        "at least 1": ("search", "--index", str(idx), "-k", "0", "x"),
        "dpi": ("index", "add", "--index", str(idx), "--dpi", "0", page),
        "is a directory": ("encode", "--bundle", b, "--out", str(tmp_path), page),
    }
    for want, cmd in cases.items():
        res = _cli(*cmd)
        err = _text(res)[1]
        assert res.returncode == 2 and "Traceback" not in err and want in err, (cmd, err)
    neg = _cli("search", "--index", str(idx), "-k", "-3", "x")
    assert neg.returncode == 2 and b"at least 1" in neg.stderr
    (idx / SEGMENTS).rename(tmp_path / "moved")
    assert "segments/ is missing" in _one_line_error(_cli("search", "--index", str(idx), "x"))
    (tmp_path / "moved").rename(idx / SEGMENTS)
    # Partly damaged SQLite pages: one line naming the database, for reads and writes.
    data = bytearray((idx / DB).read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for pg in range(1, len(data) // page_size):
        data[pg * page_size : pg * page_size + 40] = os.urandom(40)
    (idx / DB).write_bytes(bytes(data))
    for cmd in (("search", "--index", str(idx), "x"), ("index", "add", "--index", str(idx), page),
                ("index", "info", "--index", str(idx))):  # fmt: skip
        assert "index" in _one_line_error(_cli(*cmd))


@pytest.mark.parametrize(
    ("module", "extra", "package"),
    [("qdrant_client", ["--url", "http://localhost:1"], "qdrant-client"), ("qdrant_edge", [], "qdrant-edge-py")],
)
def test_qdrant_without_its_package_fails_before_the_model(tiny_bundle: Path, pages_dir: Path, tmp_path: Path,
                                                          module: str, extra: list, package: str) -> None:  # fmt: skip
    blocked = f"import sys; sys.modules[{module!r}] = None; from runtime.__main__ import main; sys.exit(main())"
    res = subprocess.run([sys.executable, "-c", blocked, "index", "add", "--store", "qdrant", "--index",
                          str(tmp_path / "q"), *extra, "--bundle", str(tiny_bundle), str(pages_dir)],
                         capture_output=True, timeout=300)  # fmt: skip
    assert f"needs {package}" in _one_line_error(res) and b"RANDOM WEIGHTS" not in res.stderr


def _manifest_variants(m: dict) -> dict[str, dict | list]:
    dim_off = json.loads(json.dumps(m))
    dim_off["model"]["dim"] = 64
    buckets = json.loads(json.dumps(m))
    buckets["model"]["patch_buckets"] = []
    missing = json.loads(json.dumps(m))
    del missing["model"]["hidden_size"]
    wrong_type = json.loads(json.dumps(m))
    wrong_type["precisions"] = ["fp32"]
    return {"not a dict": [m], "outputs 128-d": dim_off, "patch_buckets": buckets, "hidden_size": missing,
            "'precisions' is a list": wrong_type}  # fmt: skip


def test_malformed_manifests_are_one_line_and_leave_no_index(tiny_bundle: Path, pages_dir: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    import shutil

    m = json.loads((tiny_bundle / MANIFEST).read_text())
    for i, (want, variant) in enumerate(_manifest_variants(m).items()):
        b = tmp_path / f"b{i}"
        shutil.copytree(tiny_bundle, b)
        (b / MANIFEST).write_text(json.dumps(variant))
        idx = tmp_path / f"idx{i}"
        res = _cli("index", "add", "--index", str(idx), "--bundle", str(b), str(pages_dir / "p0.png"))
        line = _one_line_error(res)
        assert want in line or "malformed" in line, (want, line)
        assert not idx.exists(), want  # nothing stored, nothing created


def test_pdfs_too_big_or_empty(tmp_path: Path) -> None:
    pdfium = pytest.importorskip("pypdfium2")
    from runtime.ingest.sources import Failed, iter_sources

    doc = pdfium.PdfDocument.new()
    doc.new_page(200 * 72, 200 * 72)  # 200 x 200 inches
    doc.save(tmp_path / "huge.pdf")
    empty = pdfium.PdfDocument.new()
    empty.save(tmp_path / "empty.pdf")
    items = list(iter_sources([tmp_path / "huge.pdf", tmp_path / "empty.pdf"], dpi=150))
    assert all(isinstance(i, Failed) for i in items) and len(items) == 2
    assert "use --dpi" in items[0].message and "900 Mpx" in items[0].message
    assert "no pages" in items[1].message or "not a readable PDF" in items[1].message
    assert "\n" not in items[1].message


def test_huge_bilevel_tiff_decodes_within_budget(tmp_path: Path) -> None:
    """A 13,300^2 group-4 TIFF (13 KB) is 177 Mpx: decoding it must not cost Pillow's extra RGB
    copies (1.9 GB peak before; the RGB array itself is 531 MB)."""
    make = """
import sys
from PIL import Image, ImageDraw
im = Image.new("1", (13300, 13300), 1)
ImageDraw.Draw(im).rectangle([100, 100, 5000, 5000], fill=0)
im.save(sys.argv[1], compression="group4")
"""
    # VmHWM, not ru_maxrss: Linux carries the parent's peak (this pytest process) across exec into
    # ru_maxrss, while VmHWM belongs to the new address space alone.
    decode = """
import re, sys
from runtime.preprocess.image import decode_image
a = decode_image(sys.argv[1])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(a.shape, a[0, 0].tolist(), a[200, 200].tolist(), hwm // 1024)
"""
    assert subprocess.run([sys.executable, "-c", make, str(tmp_path / "g4.tif")]).returncode == 0
    res = subprocess.run([sys.executable, "-c", decode, str(tmp_path / "g4.tif")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    shape, rss = res.stdout.rsplit(" ", 1)
    assert shape.startswith("(13300, 13300, 3) [255, 255, 255] [0, 0, 0]")
    assert int(rss) < 2 * 531, f"peak RSS {rss} MB for a 531 MB RGB array"


# -- randomized: add / remove / re-add changed / compact, with kill -9 ----------------------------

DRIVER = """
import json, os, signal, sys
import numpy as np
import runtime.stores.local.durable as m
from runtime.stores.local.index import Index, PageRecord
root, op, arg, kill_at = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
calls = {"n": 0}
def maybe_die():
    calls["n"] += 1
    if calls["n"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
real_fsync, real_tx, real_unlink = m.fsync_dir, m.transaction, m.Path.unlink
def fsync(p):
    maybe_die(); real_fsync(p); maybe_die()
import contextlib
@contextlib.contextmanager
def tx(conn):
    maybe_die()
    with real_tx(conn):
        yield
    maybe_die()
def unlink(self, *a, **k):
    maybe_die(); real_unlink(self, *a, **k)
m.fsync_dir, m.transaction, m.Path.unlink = fsync, tx, unlink
ID = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "s", "bundle_random_weights": "true",
      "precision": "fp32", "dim": "128"}
def vec(version, page):
    rng = np.random.default_rng(abs(hash((version, page))) % 2**32)
    e = rng.standard_normal((3 + page, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)
idx = Index.open(root) if os.path.exists(os.path.join(root, "index.sqlite")) else Index.create(root, ID)
with idx.writer():
    if op == "add":  # arg: {path: [version, pages]}
        recs = [PageRecord(p, k, f"{v}#{k}", 1, vec(v, k)) for p, (v, n) in arg.items() for k in range(1, n + 1)]
        idx.add_batch(recs)
    elif op == "remove":
        idx.remove(arg)
    else:
        idx.compact()
"""


def _state(root: Path) -> dict[tuple[str, int], str]:
    with Index.open(root) as index:
        problems = [p for p in index.check() if "not in the database" not in p]
        assert not problems, problems
        return {(p["path"], p["page"]): p["content_hash"] for p in index.pages()}


def test_randomized_operations_with_kills(tmp_path: Path) -> None:
    rng = random.Random(1234)
    root = tmp_path / "idx"
    model: dict[tuple[str, int], str] = {}
    files = [f"/r/{i}.pdf" for i in range(5)]
    versions = dict.fromkeys(files, 0)
    kills = 0
    for step in range(40):
        op = rng.choice(["add", "add", "remove", "compact"])
        if op == "add":
            chosen = rng.sample(files, rng.randint(1, 3))
            arg = {}
            for f in chosen:
                if rng.random() < 0.6:
                    versions[f] += 1  # the file changed on disk
                arg[f] = [versions[f], 1 + versions[f] % 3]  # versions differ in page count too
        elif op == "remove":
            arg = rng.sample(files, rng.randint(1, 2))
        else:
            arg = None
        kill_at = rng.randint(1, 12) if rng.random() < 0.5 else 0
        res = subprocess.run([sys.executable, "-c", DRIVER, str(root), op, json.dumps(arg), str(kill_at)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        expected = dict(model)
        if op == "add":
            for f, (v, n) in arg.items():
                for key in [k for k in expected if k[0] == f]:
                    del expected[key]
                expected.update({(f, k): f"{v}#{k}" for k in range(1, n + 1)})
        elif op == "remove":
            expected = {k: v for k, v in expected.items() if k[0] not in arg}
        if res.returncode == -signal.SIGKILL:
            kills += 1
            if not (root / DB).exists():
                assert model == {}
                continue
            got = _state(root)
            assert got in (model, expected), (step, op, arg, got)  # all of it or none of it
            model = got
        else:
            assert res.returncode == 0, res.stderr
            model = expected
            assert _state(root) == model, (step, op, arg)
    assert kills >= 5
    with Index.open(root) as index, index.writer():
        pass  # a writer cleans up after the last kill
    with Index.open(root) as index:
        assert index.check() == []
        assert {(p["path"], p["page"]): p["content_hash"] for p in index.pages()} == model


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE segments (id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE pages (id INTEGER PRIMARY KEY, segment INTEGER NOT NULL REFERENCES segments(id),
    row_start INTEGER NOT NULL, row_count INTEGER NOT NULL, path TEXT NOT NULL, page INTEGER NOT NULL,
    content_hash TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, added REAL NOT NULL);
CREATE INDEX pages_path ON pages(path);
"""


def test_schema_1_indexes_are_upgraded_in_place(tmp_path: Path) -> None:
    import hashlib

    root = tmp_path / "v1"
    (root / SEGMENTS).mkdir(parents=True)
    rows = _vecs(np.random.default_rng(7), 20).astype(np.float16)
    (root / SEGMENTS / "000003.f16").write_bytes(rows.tobytes())
    conn = sqlite3.connect(root / DB)
    conn.executescript(V1_SCHEMA)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [*IDENTITY.items(), ("schema_version", "1")])
    conn.execute("INSERT INTO segments VALUES (3, '000003.f16', 20, ?)", (hashlib.sha256(rows.tobytes()).hexdigest(),))
    conn.execute("INSERT INTO pages VALUES (1, 3, 0, 12, '/old/a.png', 1, 'ha', 10, 0)")
    conn.execute("INSERT INTO pages VALUES (2, 3, 12, 8, '/old/b.png', 1, 'hb', 10, 0)")
    conn.commit()
    conn.close()
    with Index.open(root) as index:
        assert index.meta["schema_version"] == "3" and index.check() == []
        assert [(p["path"], p["rows"]) for p in index.pages()] == [("/old/a.png", 12), ("/old/b.png", 8)]
        q = _vecs(np.random.default_rng(8), 3)
        want = score([q], [rows[:12], rows[12:]])[0]
        got = {h.path: h.score for h in index.search([q])[0]}
        assert abs(got["/old/a.png"] - want[0]) < 1e-5 and abs(got["/old/b.png"] - want[1]) < 1e-5
        with index.writer():
            index.add_batch([_page("/new.png", "hn", np.random.default_rng(9))])
        assert min(i for (i,) in index.conn.execute("SELECT id FROM segments WHERE file != '000003.f16'")) > 3
