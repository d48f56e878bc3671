"""Similarity maps: each tile's cells land where the tile came from, the thumbnail stays apart,
single-unit pages and patch buckets give the same maps, and the CLI writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import InputError
from runtime.explain import Explanation, explain, normalise, render, similarity_maps, write_maps
from runtime.preprocess.layout import page_layout

IMAGE_TOKEN = 396


def _coded_rows(n_rows: int, layout: tuple, dim: int = 8) -> np.ndarray:
    """Rows whose first dimension encodes (unit, row, column) of each image token: a map built
    from them says exactly which token landed in each cell."""
    rows = np.zeros((n_rows, dim), np.float32)
    rows[:, 1] = -1.0  # text rows: never an image cell
    for u, (start, h, w) in enumerate(layout):
        i, j = np.divmod(np.arange(h * w), w)
        rows[start : start + h * w, 0] = u * 10_000 + i * 100 + j
        rows[start : start + h * w, 1] = 0.0
    return rows


@pytest.fixture(scope="module")
def processor(tiny_bundle: Path):
    from runtime import ColLFM2Processor

    return ColLFM2Processor.from_pretrained(tiny_bundle)


def test_tiles_land_where_they_were_cut(processor) -> None:
    page = processor.process_image(np.zeros((1754, 1240, 3), np.uint8))  # A4 at 150 dpi
    plan = page.plan
    assert (plan.grid_rows, plan.grid_cols, plan.thumbnail) == (3, 2, True)
    layout = page_layout(page.input_ids, page.spatial_shapes, IMAGE_TOKEN)
    rows = _coded_rows(len(page.input_ids), layout)
    query = np.eye(8, dtype=np.float32)[:2]  # token 0 reads the code, token 1 the text marker
    page_map, thumb = similarity_maps(query, rows, layout, (3, 2), True)
    h, w = layout[0][1:]
    assert page_map.shape == (2, 3 * h, 2 * w)
    for r in range(3):
        for c in range(2):
            cell = page_map[0, r * h : (r + 1) * h, c * w : (c + 1) * w]
            i, j = np.mgrid[0:h, 0:w]
            np.testing.assert_array_equal(cell, (r * 2 + c) * 10_000 + i * 100 + j)
    th, tw = layout[6][1:]
    assert thumb.shape == (2, th, tw)
    np.testing.assert_array_equal(thumb[0], 6 * 10_000 + np.mgrid[0:th, 0:tw][0] * 100 + np.mgrid[0:th, 0:tw][1])
    assert (page_map[1] == 0).all() and (thumb[1] == 0).all()  # no text row reached a cell


def test_drawn_tile_covers_its_page_region() -> None:
    height, width, rows_, cols, h, w = 300, 200, 3, 2, 4, 4
    page_map = np.zeros((1, rows_ * h, cols * w), np.float32)
    page_map[0, 2 * h : 3 * h, 1 * w : 2 * w] = 1.0  # only tile (2, 1) matches
    thumb = np.zeros((1, 3, 2), np.float32)
    expl = Explanation("q", ["q"], page_map, thumb, (rows_, cols), (height, width), 1.0)
    img = np.asarray(render(expl, Image.new("RGB", (width, height), "black"), 0, alpha=1.0))
    body = img[img.shape[0] - height :, :width].astype(int)  # under the caption bar, left of the thumbnail
    hot, cold = body[250, 150], body[50, 50]
    assert hot[0] > 200 and hot[2] < 100 and cold[2] > cold[1]  # viridis top (yellow) vs bottom (purple)
    region = (body == hot).all(axis=-1)
    ys, xs = np.nonzero(region)
    assert ys.min() in (200, 201) and ys.max() == height - 1  # row 2 of 3: pixels 200..299
    assert xs.min() in (100, 101) and xs.max() == width - 1  # column 1 of 2: pixels 100..199
    assert img.shape[1] > width  # the thumbnail's panel is drawn beside the page


def test_single_unit_page_and_bad_layouts(processor) -> None:
    page = processor.process_image(np.zeros((300, 420, 3), np.uint8))
    assert not page.plan.tiled
    layout = page_layout(page.input_ids, page.spatial_shapes, IMAGE_TOKEN)
    rows = _coded_rows(len(page.input_ids), layout)
    page_map, thumb = similarity_maps(np.eye(8, dtype=np.float32)[:1], rows, layout, (1, 1), False)
    (_, h, w) = layout[0]
    assert thumb is None and page_map.shape == (1, h, w)
    assert (h, w) == (page.plan.resized[0] // 32, page.plan.resized[1] // 32)
    np.testing.assert_array_equal(page_map[0], np.mgrid[0:h, 0:w][0] * 100 + np.mgrid[0:h, 0:w][1])
    with pytest.raises(InputError, match="layout has 1 unit"):
        similarity_maps(np.eye(8, dtype=np.float32)[:1], rows, layout, (3, 2), True)
    with pytest.raises(InputError, match="rows"):
        similarity_maps(np.eye(8, dtype=np.float32)[:1], rows[:10], layout, (1, 1), False)


def test_normalise_and_combine() -> None:
    np.testing.assert_allclose(normalise(np.array([[1.0, 3.0], [2.0, 5.0]])), [[0, 0.5], [0.25, 1]])
    assert (normalise(np.full((2, 2), 7.0)) == 0).all()
    maps = np.stack([np.eye(2), 2 * np.eye(2)[::-1]]).astype(np.float32)
    expl = Explanation("q", ["a", "b"], maps, None, (1, 1), (2, 2), 0.0)
    np.testing.assert_array_equal(expl.combined("max")[0], [[1, 2], [2, 1]])
    np.testing.assert_array_equal(expl.combined("sum")[0], [[1, 2], [2, 1]])
    with pytest.raises(InputError):
        expl.combined("mean")


def test_explain_on_a_real_page_matches_maxsim_and_buckets(tiny_bundle: Path, tmp_path: Path) -> None:
    from export.demo import SAMPLE_PAGES, render_page
    from runtime import ColLFM2

    model = ColLFM2.from_pretrained(tiny_bundle, precision="fp32")
    image = render_page(next(iter(SAMPLE_PAGES.values())))
    expl = explain(model, "total amount due", image)
    (q,) = model.embed_queries(["total amount due"])
    (rows,) = model.embed_images([image])
    assert len(expl.tokens) == len(q) and expl.tokens[0] == "<|startoftext|>"
    assert expl.score == pytest.approx(float((rows @ q.T).max(axis=0).sum()), rel=1e-5)
    # every page cell's value is one image row's similarity: the image rows' max is the map's max
    layout = page_layout(model.processor.process_image(image).input_ids,
                         model.processor.process_image(image).spatial_shapes, IMAGE_TOKEN)  # fmt: skip
    start, h, w = layout[0]
    np.testing.assert_allclose(expl.page.max(axis=(1, 2)), (rows[start : start + h * w] @ q.T).max(axis=0), atol=1e-5)
    # stored fp16 rows (an index) give the same maps, within fp16
    stored = explain(model, "total amount due", image, rows=rows.astype(np.float16))
    np.testing.assert_allclose(stored.page, expl.page, atol=2e-3)
    with pytest.raises(InputError, match="do not match"):
        explain(model, "total amount due", image, rows=rows[:-1])
    # the largest patch bucket (padded patches are masked keys) draws the same map
    buckets = model.patch_buckets
    try:
        model.patch_buckets = [buckets[-1]]
        padded = explain(model, "total amount due", image)
    finally:
        model.patch_buckets = buckets
    np.testing.assert_allclose(padded.page, expl.page, atol=1e-4)
    files = write_maps(expl, image.convert("RGB"), tmp_path, "invoice")
    want = {"invoice.max.png", "invoice.sum.png", "invoice.npz", "invoice.t00-startoftext.png"}
    assert {f.name for f in files} >= want
    saved = np.load(tmp_path / "invoice.npz")
    np.testing.assert_array_equal(saved["page"], expl.page)
    assert list(saved["tokens"]) == expl.tokens


def test_cli_explain_and_search_explain(tiny_bundle: Path, tmp_path: Path) -> None:
    from export.demo import SAMPLE_PAGES, render_page

    pages = tmp_path / "pages"
    pages.mkdir()
    for name, lines in SAMPLE_PAGES.items():
        render_page(lines).save(pages / f"{name}.png")
    big = Image.new("RGB", (1240, 1754), "white")
    big.paste(render_page(next(iter(SAMPLE_PAGES.values()))), (0, 0))
    big.save(pages / "a4.png")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=300)

    idx, b = str(tmp_path / "idx"), str(tiny_bundle)
    assert cli("index", "add", "--index", idx, "--bundle", b, "--precision", "fp32", str(pages)).returncode == 0
    res = cli("search", "--index", idx, "-k", "2", "--explain", str(tmp_path / "hits"), "invoice")
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in (tmp_path / "hits").iterdir())
    assert len([n for n in names if n.endswith(".max.png")]) == 2 and names[0].startswith("01-")
    res = cli("explain", "--index", idx, "--out", str(tmp_path / "one"), "--query", "total", str(pages / "a4.png"))
    assert res.returncode == 0, res.stderr
    saved = np.load(tmp_path / "one" / "a4.npz")
    assert tuple(saved["tiles"]) == (3, 2) and "thumbnail" in saved
    assert Image.open(tmp_path / "one" / "a4.max.png").size[0] > 1240  # page + thumbnail panel
    for args, message in ((["--query", "total", str(pages)], "a folder"),
                          (["--query", "total", "--page", "2", str(pages / "a4.png")], "has no page 2"),
                          (["--query", " ", str(pages / "a4.png")], "empty query"),
                          (["--query", "total", str(tmp_path / "nope.png")], "nope.png")):  # fmt: skip
        res = cli("explain", "--bundle", b, "--out", str(tmp_path / "x"), *args)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = cli("explain", "--out", str(tmp_path / "x"), "--query", "total", str(pages / "a4.png"))
    assert res.returncode == 2 and "--bundle" in res.stderr
