"""The hostile-user defects of the index, import, bundle and benchmark commands: each test here
failed before its fix (stale row sharing, empty paths, trusting npz files and bundles, checks
racing writers, stale explanations, oversized files, malformed datasets)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from export.demo import SAMPLE_PAGES, render_page
from runtime.__main__ import main
from runtime.stores.local.index import Index, PageRecord


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """The CLI in this process (the tiny bundle loads in a fraction of a second)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def two_pages(tmp_path: Path) -> Path:
    d = tmp_path / "pages"
    d.mkdir()
    for name, lines in list(SAMPLE_PAGES.items())[:2]:
        render_page(lines).save(d / name)
    return d


def _stored(idx: Path) -> dict[str, tuple[str, np.ndarray]]:
    with Index.open(idx) as index:
        assert index.check() == []
        out = {}
        for p in index.pages():
            rows, digest = index.page_rows(p["path"], p["page"])
            out[Path(p["path"]).name] = (digest, rows)
        return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("commit_pages", ["1", "16"])
def test_swapped_contents_are_stored_as_they_now_are(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path,
                                                     commit_pages: str) -> None:  # fmt: skip
    """Item 1: a commit that replaces the only page holding some bytes must not leave a later page
    sharing rows that are gone; it is encoded instead, and the add never aborts."""
    idx = tmp_path / "idx"
    add = ("index", "add", "--index", str(idx), "--precision", "fp32", "--no-progress")
    assert _run(capsys, *add, "--bundle", str(tiny_bundle), str(two_pages))[0] == 0
    before = _stored(idx)
    a, b = sorted(two_pages.iterdir())
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    code, _out, err = _run(capsys, *add, "--commit-pages", commit_pages, str(two_pages))
    assert code == 0, err
    after = _stored(idx)
    for f, other in ((a, b), (b, a)):
        digest, rows = after[f.name]
        assert digest == _sha(f)
        np.testing.assert_allclose(rows, before[other.name][1], atol=2e-3)


def test_copied_then_edited_original_keeps_each_its_own_rows(capsys, tiny_bundle: Path, two_pages: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """Item 1 with default settings: copy an indexed file, edit the original, add the folder."""
    idx = tmp_path / "idx"
    add = ("index", "add", "--index", str(idx), "--precision", "fp32", "--no-progress")
    a, b = sorted(two_pages.iterdir())
    assert _run(capsys, *add, "--bundle", str(tiny_bundle), str(a))[0] == 0
    shutil.copy(a, two_pages / "z_copy.png")
    a.write_bytes(b.read_bytes())
    code, _out, err = _run(capsys, *add, "--commit-pages", "1", str(two_pages))
    assert code == 0, err
    got = _stored(idx)
    assert {k: v[0] for k, v in got.items()} == {p.name: _sha(p) for p in two_pages.iterdir()}
    assert not np.allclose(got["z_copy.png"][1][:5], got[a.name][1][:5], atol=1e-3)


EMPTY_PATHS = [
    ("index", "remove", "--index", "{idx}", ""),
    ("index", "add", "--index", "{idx}", " "),
    ("encode", "--bundle", "{b}", "--out", "x.npz", ""),
    ("search", "--index", "", "x"),
]


@pytest.mark.parametrize("argv", EMPTY_PATHS)
def test_empty_paths_are_refused(capsys, tiny_bundle: Path, tmp_path: Path, argv: tuple, monkeypatch) -> None:
    """Item 2: an empty path (an unset shell variable) names the working folder; refuse it."""
    idx = tmp_path / "idx"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([a.format(idx=idx, b=tiny_bundle) for a in argv])
    assert exc.value.code == 2
    assert "empty path" in capsys.readouterr().err


class Raw(str):
    """A manifest's text, written as is."""


def _bundle_copy(tiny_bundle: Path, tmp_path: Path, edit) -> Path:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    out = edit(b, m)
    (b / "manifest.json").write_text(out if isinstance(out, Raw) else json.dumps(m))
    return b


def _set(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))


def _section(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text())
    data["image_processor"] = {**data.get("image_processor", {}), key: value}
    path.write_text(json.dumps(data))


def _point(m: dict, what: str, target: str) -> None:
    """Point fp32's ``what`` at ``target``, listed with its true hash (as a forger would)."""
    entry = m["precisions"]["fp32"]
    spec = entry["embeddings"] if what == "embeddings" else entry["graphs"][what]
    m["files"].pop(spec["file"])
    spec["file"] = target
    m["files"][target] = (
        hashlib.sha256(Path(target).resolve().read_bytes()).hexdigest() if Path(target).is_absolute() else "0" * 64
    )


def _link_out(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def _model(key: str, value):
    def edit(b: Path, m: dict) -> None:
        m["model"][key] = value

    return edit


BUNDLE_EDITS = {
    # Item 7: hashed files the processor reads, changed after export (a value that still parses).
    "processor_config mean": lambda b, m: _section(b / "processor_config.json", "image_mean", [0.4, 0.5, 0.5]),
    "tokenizer_config list": lambda b, m: (b / "tokenizer_config.json").write_text("[1, 2]"),
    "unlisted processor file": lambda b, m: m["files"].pop("processor_config.json"),
    # Item 8: paths outside the bundle.
    "embeddings outside": lambda b, m: _point(m, "embeddings", os.path.relpath("/etc/passwd", b)),
    "graph at an absolute path": lambda b, m: _point(m, "text", str(b.parent / "elsewhere.onnx")),
    "symlink out": lambda b, m: _link_out(b / "fp32" / "embeddings.npy", b.parent / "elsewhere.npy"),
    # Item 9: malformed manifests.
    "files a number": lambda b, m: m.update(files=3),
    "position_grid 3000": _model("position_grid", 3000),
    "max_num_patches 1e12": _model("max_num_patches", 10**12),
    "patch_buckets [1]": _model("patch_buckets", [1]),
    "downsample_factor 3": _model("downsample_factor", 3),
    "session_config a list": lambda b, m: m["precisions"]["fp32"].update(session_config=[["a", "b"]]),
    "nested 200000 deep": lambda b, m: Raw("[" * 200_000 + "]" * 200_000),
}

CONFIG_EDITS = {
    # Item 7: hashed files with impossible values; the hash is updated so only validation can stop them.
    "encoder_patch_size 0": ("preprocessor_config.json", "encoder_patch_size", 0),
    "image_mean abc": ("preprocessor_config.json", "image_mean", "abc"),
    "tile_size a string": ("preprocessor_config.json", "tile_size", "512"),
    "max_image_tokens 1e9": ("preprocessor_config.json", "max_image_tokens", 10**9),
    "std zero": ("preprocessor_config.json", "image_std", [0, 0, 0]),
}


def _rehashed(name: str, key: str, value):
    def edit(b: Path, m: dict) -> None:
        _set(b / name, key, value)
        m["files"][name] = hashlib.sha256((b / name).read_bytes()).hexdigest()

    return edit


@pytest.mark.parametrize("case", [*BUNDLE_EDITS, *CONFIG_EDITS])
def test_a_tampered_bundle_is_one_line_and_stores_nothing(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path,
                                                          case: str) -> None:  # fmt: skip
    """Items 7-9: every hashed file verified, every path confined, every number bounded, before use."""
    edit = BUNDLE_EDITS.get(case) or _rehashed(*CONFIG_EDITS[case])
    (tmp_path / "elsewhere.npy").write_bytes((tiny_bundle / "fp32" / "embeddings.npy").read_bytes())
    (tmp_path / "elsewhere.onnx").write_bytes((tiny_bundle / "fp32" / "text.onnx").read_bytes())
    b = _bundle_copy(tiny_bundle, tmp_path, edit)
    idx = tmp_path / "idx"
    for argv in (("index", "add", "--index", str(idx), "--bundle", str(b), "--precision", "fp32", "--no-progress",
                  str(two_pages)),
                 ("encode", "--bundle", str(b), "--precision", "fp32", "--out", str(tmp_path / "o.npz"),
                  "--no-progress", str(two_pages))):  # fmt: skip
        code, _out, err = _run(capsys, *argv)
        line = _one_line_error(err)
        # A file outside the bundle is never read: its hash is never reported.
        assert code == 2 and not ("passwd" in line and "does not match" in line), (case, err)
    assert not idx.exists() and not (tmp_path / "o.npz").exists()


# -- index import: an npz is checked whole before anything is written (items 3, 4, 10) ----------


@pytest.fixture()
def good_npz(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path) -> Path:
    out = tmp_path / "good.npz"
    code, _, err = _run(capsys, "encode", "--bundle", str(tiny_bundle), "--precision", "fp32", "--out", str(out),
                        "--no-progress", str(two_pages))  # fmt: skip
    assert code == 0, err
    return out


def _arrays(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz) as z:
        return {k: z[k] for k in z.files}


def _variant(good: Path, out: Path, **changes) -> Path:
    data = _arrays(good)
    for k, v in changes.items():
        if v is None:
            del data[k]
        else:
            data[k] = v(data) if callable(v) else v
    np.savez(out, **data)
    return out


def _forged_header(good: Path, out: Path) -> Path:
    """An npz whose embeddings header declares 10^12 rows (a few bytes follow)."""
    import io
    import zipfile

    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename == "embeddings.npy":
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f2", "fortran_order": False,
                                                           "shape": (10**12, 128)})  # fmt: skip
                dst.writestr("embeddings.npy", buf.getvalue() + b"\0" * 64)
            else:
                dst.writestr(info, src.read(info))
    return out


NPZ_CASES = {
    # item 3: offsets and layouts that check would reject
    "zero-row page": dict(offsets=lambda d: np.r_[0, 0, d["offsets"][2:]]),
    "non-increasing offsets": dict(offsets=lambda d: np.r_[0, d["offsets"][2], d["offsets"][1], d["offsets"][3:]]),
    "bogus layout": dict(layouts=lambda d: np.full_like(d["layouts"], 3000)),
    # item 4: names from nowhere
    "dot-dot name": dict(names=lambda d: np.array(["/x/../../../../etc/passwd", *d["names"][1:]])),
    "relative name": dict(names=lambda d: np.array(["relative/x.png", *d["names"][1:]])),
    "empty name": dict(names=lambda d: np.array(["", *d["names"][1:]])),
    # item 10: crafted arrays
    "identity a list": dict(identity=np.asarray(json.dumps(["a"]))),
    "pages shorter": dict(pages=lambda d: d["pages"][:1]),
    "0-d names": dict(names=np.asarray("x")),
    "float offsets": dict(offsets=lambda d: d["offsets"].astype(np.float64)),
    "string sizes": dict(sizes=lambda d: d["sizes"].astype(str)),
    "short layout_offsets": dict(layout_offsets=lambda d: d["layout_offsets"][:-1]),
    "NaN rows": dict(embeddings=lambda d: np.full_like(d["embeddings"], np.nan)),
}


def _damaged(case: str, good: Path, out: Path) -> Path:
    if case in NPZ_CASES:
        return _variant(good, out, **NPZ_CASES[case])
    if case == "0 bytes":
        out.write_bytes(b"")
    elif case == "half copied":
        out.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "10^12 rows declared":
        _forged_header(good, out)
    elif case == "deflate bomb":
        data = _arrays(good)
        data["embeddings"] = np.zeros((300_000, 128), np.float16)  # 73 MiB that deflates to ~75 KiB
        data["offsets"] = np.r_[0, 150_000, 300_000]
        np.savez_compressed(out, **data)
    return out


@pytest.mark.parametrize("case", [*NPZ_CASES, "0 bytes", "half copied", "10^12 rows declared", "deflate bomb"])
def test_a_damaged_npz_is_one_line_and_changes_nothing(capsys, monkeypatch, tiny_bundle: Path, good_npz: Path,
                                                       tmp_path: Path, case: str) -> None:  # fmt: skip
    monkeypatch.setattr("runtime.ingest.npz.MAX_NPZ_BYTES", 32 << 20)  # the bomb's 73 MiB stands for gigabytes
    bad = _damaged(case, good_npz, tmp_path / "bad.npz")
    new, old = tmp_path / "new", tmp_path / "old"
    imp = ("index", "import", "--bundle", str(tiny_bundle))
    # Into no index: nothing is created (with the compact kind it would have recorded).
    code, _, err = _run(capsys, *imp, "--index", str(new), "--compact", "rowcol", str(bad))
    assert code == 2 and _one_line_error(err) and not new.exists(), (case, err)
    # Into an index: nothing changes, and the next good import still works.
    assert _run(capsys, *imp, "--index", str(old), str(good_npz))[0] == 0
    before = _stored(old)
    code, _, err = _run(capsys, *imp, "--index", str(old), str(bad))
    assert code == 2 and _one_line_error(err), (case, err)
    after = _stored(old)
    assert after.keys() == before.keys() and all(np.array_equal(after[k][1], before[k][1]) for k in after)
    assert _run(capsys, *imp, "--index", str(new), "--compact", "pool:4", str(good_npz))[0] == 0


def test_imported_names_are_removed_by_name_and_kept_by_missing(capsys, tiny_bundle: Path, good_npz: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """Item 4: names from another machine are absolute paths; --missing keeps those whose folder is
    not here (it used to forget every imported page), ``remove`` takes them by name or folder."""
    other = _variant(good_npz, tmp_path / "other.npz",
                     names=np.array(["/elsewhere/scans/a.png", "/elsewhere/scans/b.png"]))  # fmt: skip
    idx = tmp_path / "idx"
    assert _run(capsys, "index", "import", "--index", str(idx), "--bundle", str(tiny_bundle), str(other))[0] == 0
    code, out, err = _run(capsys, "index", "remove", "--index", str(idx), "--missing")
    assert code == 1 and "removed 0" in out and "kept 2 file(s)" in err
    code, out, _ = _run(capsys, "index", "remove", "--index", str(idx), "/elsewhere/scans/a.png")
    assert code == 0 and "removed 1" in out
    code, out, _ = _run(capsys, "index", "remove", "--index", str(idx), "/elsewhere")
    assert code == 0 and "removed 1" in out


def test_a_file_named_twice_is_encoded_once(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path) -> None:
    """Found by the random walk: ``encode a.png DIR a.png`` wrote a's page three times, and
    ``index import`` (rightly) refused the npz as damaged."""
    a = sorted(two_pages.iterdir())[0]
    (tmp_path / "link.png").symlink_to(a)
    npz = tmp_path / "twice.npz"
    enc = ("encode", "--bundle", str(tiny_bundle), "--precision", "fp32", "--out", str(npz))
    code, out, err = _run(capsys, *enc, str(a), str(two_pages), str(a), str(tmp_path / "link.png"))
    assert code == 0 and "2 pages" in out, err
    code, out, err = _run(capsys, "index", "import", "--index", str(tmp_path / "idx"), "--bundle", str(tiny_bundle),
                          str(npz))  # fmt: skip
    assert code == 0 and "imported 2 page(s)" in out, err


# -- index check beside a writer (item 5) --------------------------------------------------------

WRITER = r"""
import sys, numpy as np
from runtime.stores.local.index import Index, PageRecord
root, mode, stop = sys.argv[1], sys.argv[2], sys.argv[3]
import os
rng = np.random.default_rng(0)
def page(i, v):
    e = rng.standard_normal((6, 128)).astype(np.float32)
    return PageRecord(f"/w/{i}.png", 1, f"{i}-{v}", 1, e / np.linalg.norm(e, axis=1, keepdims=True))
with Index.open(root) as idx, idx.writer():
    v = 0
    while not os.path.exists(stop):
        v += 1
        if mode == "add":  # new versions of a few files: replaced pages leave dead rows
            idx.add_batch([page(i, v) for i in rng.choice(40, 3, replace=False)])
        else:  # replace and compact, so segments are retired and deleted all the time
            idx.add_batch([page(int(rng.integers(40)), v)])
            idx.compact()
"""

CHECK_TRIES = int(os.environ.get("COLLFM2_CHECK_TRIES", "150"))


@pytest.mark.parametrize("mode", ["add", "compact"])
def test_check_beside_a_writer_never_reports_damage(tmp_path: Path, mode: str) -> None:
    """Item 5: check and info read one snapshot; a writer's commit or deletion in between used to
    be reported as 'not in the database' / 'segment missing', or end in a traceback."""
    import subprocess
    import sys

    root, stop = tmp_path / "idx", tmp_path / "stop"
    ident = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
             "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip
    Index.create(root, ident, compact="pool:4").close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), mode, str(stop)], stderr=subprocess.PIPE)
    problems, infos = [], 0

    def commits(index: Index) -> int:
        row = index.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'segments'").fetchone()
        return row[0] if row else 0

    try:
        with Index.open(root) as index:
            deadline = time.monotonic() + 120
            while commits(index) < 3 and time.monotonic() < deadline:  # the writer is under way
                time.sleep(0.05)
            first = commits(index)
            for _ in range(CHECK_TRIES):
                problems += index.check()
                infos += index.info()["pages"] >= 0
            during = commits(index) - first
    finally:
        stop.touch()
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err.decode()
    assert problems == [] and infos == CHECK_TRIES
    assert during >= 10, during  # the checks did run beside commits
    with Index.open(root) as index:
        assert index.check() == []


def test_an_oversized_file_is_one_line_and_the_others_are_committed(capsys, tiny_bundle: Path, two_pages: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    """Item 11: a 5 GB file named .png was read whole; now it is refused unread, the run goes on."""
    with open(two_pages / "huge.png", "wb") as f:
        f.truncate(5 << 30)  # sparse: costs no disk, and is never read
    idx = tmp_path / "idx"
    code, out, err = _run(capsys, "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--precision",
                          "fp32", "--no-progress", str(two_pages))  # fmt: skip
    assert code == 1 and "added 2 page(s)" in out, err
    assert "huge.png: 5,120 MiB, over the 512 MiB" in _one_line_error(err)
    code, out, err = _run(capsys, "encode", "--bundle", str(tiny_bundle), "--precision", "fp32", "--max-file-mb",
                          "1", "--out", str(tmp_path / "o.npz"), "--no-progress", str(two_pages))  # fmt: skip
    assert code == 1 and "2 pages" in out and "over the 1 MiB" in err


def test_explain_output_errors_are_one_line(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path) -> None:
    """Item 12: a file where the maps' folder should be was a FileExistsError/NotADirectoryError."""
    a = sorted(two_pages.iterdir())[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    idx = tmp_path / "idx"
    assert _run(capsys, "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--no-progress",
                str(two_pages))[0] == 0  # fmt: skip
    for argv in (("search", "--index", str(idx), "--explain", str(blocker), "total"),
                 ("explain", "--bundle", str(tiny_bundle), "--out", str(blocker / "sub"), "--query", "total",
                  str(a))):  # fmt: skip
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "cannot be a folder" in _one_line_error(err), err


def test_explain_says_when_the_file_changed_since_indexing(capsys, tiny_bundle: Path, two_pages: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Item 6: the maps of a file edited since it was indexed used to show another score, silently."""
    a, b = sorted(two_pages.iterdir())
    idx, maps = tmp_path / "idx", tmp_path / "maps"
    assert _run(capsys, "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--no-progress",
                str(a))[0] == 0  # fmt: skip
    code, out, err = _run(capsys, "search", "--index", str(idx), "--json", "--explain", str(maps), "total")
    assert code == 0 and "changed since" not in err
    ranked = json.loads(out)[0]["score"]
    a.write_bytes(b.read_bytes())
    code, out, err = _run(capsys, "search", "--index", str(idx), "--json", "--explain", str(maps), "total")
    assert code == 0 and json.loads(out)[0]["score"] == ranked
    note = next(x for x in err.splitlines() if "changed since it was indexed" in x)
    assert f"the index scores it {ranked:.4f}" in note


@pytest.mark.parametrize("query", ["\u200b\u200d", "\u202e\u2066 \u200f", "\ufeff"])
def test_invisible_queries_are_empty(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path, query: str) -> None:
    idx = tmp_path / "idx"
    assert _run(capsys, "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--no-progress",
                str(two_pages))[0] == 0  # fmt: skip
    code, _, err = _run(capsys, "search", "--index", str(idx), query)
    assert code == 2 and "empty query" in _one_line_error(err)
    code, _, err = _run(capsys, "search", "--index", str(idx), "--exact", "--rerank", "5", "total")
    assert code == 2 and "--rerank" in _one_line_error(err)


def test_add_with_a_bundle_takes_the_index_precision(capsys, tiny_bundle: Path, two_pages: Path, tmp_path: Path,
                                                     monkeypatch) -> None:  # fmt: skip
    """Reported: ``index add --bundle B`` on an fp32 index, without --precision, was refused where
    the machine's default is another precision. (Not reproduced here; kept as a guard.)"""
    import runtime.encoder.model as encoder_model

    monkeypatch.setattr(encoder_model, "default_precision", lambda *a, **k: "int8")
    idx = tmp_path / "idx"
    a, b = sorted(two_pages.iterdir())
    add = ("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--no-progress")
    assert _run(capsys, *add, "--precision", "fp32", str(a))[0] == 0
    code, out, err = _run(capsys, *add, str(b))
    assert code == 0 and "added 1 page(s)" in out, err
    with Index.open(idx) as index:
        assert index.meta["precision"] == "fp32"


def test_int8_rows_do_not_depend_on_the_batch(tiny_bundle: Path, two_pages: Path) -> None:
    """Dynamic int8 quantises a whole call's activations with one scale: the same page scored 1.6664
    alone and 1.6755 batched. Such graphs now see one unpadded item at a time."""
    from PIL import Image

    from runtime.encoder.model import ColLFM2

    model = ColLFM2.from_pretrained(str(tiny_bundle), precision="int8", vision_batch=4)
    assert model.one_at_a_time == {"vision", "text"}  # the tiny bundle's int8 graphs are dynamic int8
    images = [Image.open(p).convert("RGB") for p in sorted(two_pages.iterdir())] * 2
    alone = [next(iter(model.embed_images([im], batch_size=1))) for im in images]
    batched = list(model.embed_images(images, batch_size=4))
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(a, b)
    queries = ["a", "invoice total due", "what was the revenue of the river table in 2024?"]
    one_by_one = [next(iter(model.embed_queries([q]))) for q in queries]
    for a, b in zip(one_by_one, model.embed_queries(queries), strict=True):
        np.testing.assert_array_equal(a, b)


# -- benchmarks.retrieval on malformed datasets (item 13) ----------------------------------------


def _edit_file(path: Path, fn) -> None:
    path.write_bytes(fn(path.read_bytes()))


DATASET_EDITS = {
    # each: (edit of the mini dataset, what the one line says)
    "qrels score 2.5": (lambda r: _edit_file(r / "qrels" / "test.tsv", lambda b: b.replace(b"\t2\n", b"\t2.5\n")),
                        "not a whole-number grade"),
    "no queries.jsonl": (lambda r: (r / "queries.jsonl").unlink(), "queries.jsonl: missing"),
    "corpus line without _id": (lambda r: _edit_file(r / "corpus.jsonl", lambda b: b.replace(b'"_id"', b'"id"', 1)),
                                "has no '_id'"),
    "latin-1 byte": (lambda r: _edit_file(r / "queries.jsonl", lambda b: b.replace(b"total", b"tot\xe4l")),
                     "not UTF-8"),
    "empty query": (lambda r: _edit_file(r / "queries.jsonl", lambda b: b.replace(b"total amount due", b" ")),
                    "query text ' ' is empty"),
    "text null": (lambda r: _edit_file(r / "queries.jsonl", lambda b: b.replace(b'"total amount due"', b"null")),
                  "query text None"),
    "duplicate corpus ids": (lambda r: _edit_file(r / "corpus.jsonl", lambda b: b.replace(b'"revenue"', b'"invoice"')),
                             "corpus id 'invoice' appears twice"),
    "every image missing": (lambda r: shutil.rmtree(r / "images"), "none of the 8 corpus images exists"),
}  # fmt: skip


@pytest.mark.parametrize("case", DATASET_EDITS)
def test_a_malformed_dataset_is_one_line_before_any_encoding(capsys, tmp_path: Path, case: str) -> None:
    from benchmarks.retrieval import main as retrieval
    from benchmarks.retrieval import make_mini

    root = make_mini(tmp_path / "mini")
    edit, message = DATASET_EDITS[case]
    edit(root)
    # A bundle that does not exist: the dataset must be refused before the model is opened.
    code = retrieval(["--dataset", str(root), "--bundle", str(tmp_path / "no-bundle"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in _one_line_error(err), err


def test_a_dataset_read_right_despite_bom_blank_lines_and_grades(tmp_path: Path) -> None:
    """A BOM dropped the first query; a trailing blank line in test.tsv was fatal; '2.0' crashed."""
    from benchmarks.retrieval import load_dataset, make_mini

    root = make_mini(tmp_path / "mini")
    want = load_dataset(root)
    _edit_file(root / "queries.jsonl", lambda b: b"\xef\xbb\xbf" + b)
    _edit_file(root / "corpus.jsonl", lambda b: b"\xef\xbb\xbf" + b)
    _edit_file(root / "qrels" / "test.tsv", lambda b: b.replace(b"\t2\n", b"\t2.0\n") + b"\n\n")
    got = load_dataset(root)
    assert (got.queries, got.qrels, got.corpus) == (want.queries, want.qrels, want.corpus)


def test_limit_queries_must_not_be_negative(capsys, tmp_path: Path) -> None:
    from benchmarks.retrieval import main as retrieval
    from benchmarks.retrieval import make_mini

    root = make_mini(tmp_path / "mini")
    with pytest.raises(SystemExit) as exc:
        retrieval(["--dataset", str(root), "--bundle", str(tmp_path), "--limit-queries", "-1"])
    assert exc.value.code == 2 and "at least 0 (all)" in capsys.readouterr().err


def test_a_corpus_that_cannot_be_encoded_is_an_error_not_zeros(capsys, tiny_bundle: Path, tmp_path: Path) -> None:
    from benchmarks.retrieval import main as retrieval
    from benchmarks.retrieval import make_mini

    root = make_mini(tmp_path / "mini")
    for png in (root / "images").iterdir():
        png.write_bytes(b"not a png")
    code = retrieval(["--dataset", str(root), "--bundle", str(tiny_bundle), "--no-reference", "--settings", "exact",
                      "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no corpus page could be encoded (8 failed)" in err
    assert not (tmp_path / "o").exists()


# -- lower-severity items ------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_index_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """The root was 0700 and segments 0600 (mkdtemp/mkstemp) while index.sqlite was 0644."""
    ident = {"bundle_path": "/b", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
             "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip
    old = os.umask(mask)
    try:
        root = tmp_path / "idx"
        with Index.create(root, ident) as index, index.writer():
            rows = np.eye(4, 128, dtype=np.float32)
            index.add_batch([PageRecord("/a.png", 1, "h", 1, rows)])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [root, root / "segments", *root.iterdir(),
                                                        *(root / "segments").iterdir()]}  # fmt: skip
    assert set(modes.values()) <= {0o777 & ~mask, 0o666 & ~mask}, {k: oct(v) for k, v in modes.items()}
    assert modes["idx"] == modes["segments"] == 0o777 & ~mask


def test_ctrl_c_during_add_is_one_line(capsys, monkeypatch, tiny_bundle: Path, two_pages: Path,
                                       tmp_path: Path) -> None:  # fmt: skip
    """A KeyboardInterrupt printed a traceback; the index was fine, and still is."""
    import runtime.ingest.add as ingest_add

    real = ingest_add.encode_stream

    def interrupted(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt  # what SIGINT raises in the main thread, at this point
            yield item

    monkeypatch.setattr(ingest_add, "encode_stream", interrupted)
    render_page(list(SAMPLE_PAGES.values())[2]).save(two_pages / "third.png")
    idx = tmp_path / "idx"
    code, _, err = _run(capsys, "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--no-progress",
                        "--commit-pages", "1", str(two_pages))  # fmt: skip
    assert code == 130 and err.splitlines()[-1].startswith("interrupted:") and "Traceback" not in err
    assert len(_stored(idx)) == 1  # the first file committed when the second came; the second never did
