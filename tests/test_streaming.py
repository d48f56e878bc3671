"""The streaming embed API (``ColLFM2.embed_images``/``embed_queries``) and flat memory through the
real ingest path (``index add``), not just ``Index.add_batch``."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.validate import synthetic_page
from runtime import ColLFM2, InputError


def _rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


@pytest.fixture(scope="module")
def fp32(tiny_bundle: Path) -> ColLFM2:
    return ColLFM2.from_pretrained(tiny_bundle, precision="fp32")


def test_embed_images_equals_the_batch_api(fp32: ColLFM2, tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    synthetic_page(300, 420, seed=1).save(path)
    buf = io.BytesIO()
    synthetic_page(200, 200, seed=2).save(buf, format="PNG")
    images = [str(path), buf.getvalue(), synthetic_page(700, 500, seed=3),
              np.random.default_rng(4).integers(0, 256, (64, 90, 3), dtype=np.uint8)]  # fmt: skip
    want = fp32.encode_rows(fp32.processor.process_images(images))
    for batch_size in (1, 3):
        got = list(fp32.embed_images(iter(images), batch_size=batch_size))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and np.abs(g - w).max() < 1e-5
    queries = ["net income", "x", "a longer query about the shipping address on page two"]
    qb = fp32.processor.process_queries(queries)
    for g, w in zip(fp32.embed_queries(queries, batch_size=2), fp32.encode_rows(qb), strict=True):
        assert g.shape == w.shape and np.abs(g - w).max() < 1e-5


def test_embed_errors_are_input_errors(fp32: ColLFM2) -> None:
    stream = fp32.embed_images([synthetic_page(100, 100), b"not an image"])
    assert next(stream).shape[1] == 128
    with pytest.raises(InputError, match=r"image 1 <bytes>"):
        next(stream)
    with pytest.raises(InputError, match="batch_size"):
        next(fp32.embed_images([synthetic_page(100, 100)], batch_size=0))
    with pytest.raises(InputError, match="empty query"):
        list(fp32.embed_queries([" "]))


def _pages(n: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 256, (int(rng.integers(40, 90)), int(rng.integers(40, 90)), 3), dtype=np.uint8)


def test_embed_images_over_1000_pages_keeps_memory_flat(fp32: ColLFM2) -> None:
    """A generator of 1,000 pages through the streaming path: nothing accumulates per page (a page's
    rows are ~30 KB, so keeping them would add ~30 MB; preprocessing buffers are reused)."""
    import tracemalloc

    seen, kept = 0, 0
    tracemalloc.start()
    try:
        for i, rows in enumerate(fp32.embed_images(_pages(1100, 0), batch_size=4)):
            assert rows.ndim == 2 and rows.shape[1] == 128
            seen += 1
            kept += rows.nbytes
            if i == 99:
                warm_rss, (warm_traced, _) = _rss_mb(), tracemalloc.get_traced_memory()
        traced = (tracemalloc.get_traced_memory()[0] - warm_traced) / 2**20
    finally:
        tracemalloc.stop()
    rss = _rss_mb() - warm_rss
    # numpy reports its buffers to tracemalloc: what the stream keeps alive shows byte for byte.
    assert seen == 1100 and traced < 0.1 * kept / 2**20, f"{traced:.1f} MB still allocated of {kept / 2**20:.0f} MB"
    assert rss < 0.05 * warm_rss, f"RSS grew {rss:.1f} MB over 1,000 streamed pages"


def test_index_add_of_1000_pages_keeps_memory_flat(tiny_bundle: Path, tmp_path: Path) -> None:
    """The README's claim, through ``index add`` itself: preprocessing thread, batching, commits."""
    from runtime.__main__ import main

    for name, n, seed in (("warm", 100, 1), ("many", 1000, 2)):
        folder = tmp_path / name
        folder.mkdir()
        for i, arr in enumerate(_pages(n, seed)):
            Image.fromarray(arr).save(folder / f"{i:04d}.png")
    idx = str(tmp_path / "idx")
    assert main(["index", "add", "--index", idx, "--bundle", str(tiny_bundle), "--precision", "fp32",
                 "--no-progress", str(tmp_path / "warm")]) == 0  # fmt: skip
    before = _rss_mb()
    assert main(["index", "add", "--index", idx, "--no-progress", str(tmp_path / "many")]) == 0
    growth = _rss_mb() - before
    assert growth < 0.05 * before, f"RSS grew {growth:.1f} MB over 1,000 pages (from {before:.0f} MB)"


def test_results_come_in_input_order(fp32: ColLFM2, tmp_path: Path) -> None:
    """A failure never overtakes the pages before it (they are batched; it is not)."""
    from runtime.ingest.sources import iter_sources
    from runtime.ingest.stream import Encoded, encode_stream

    for name, img in (("a.png", synthetic_page(120, 100, seed=1)), ("c.png", synthetic_page(100, 140, seed=2))):
        img.save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"broken")
    order = [(type(i).__name__, Path(i.source.path if isinstance(i, Encoded) else i.path).name)
             for i in encode_stream(fp32, fp32.processor, iter_sources([tmp_path]), batch_tiles=8)]  # fmt: skip
    assert order == [("Encoded", "a.png"), ("Failed", "b.png"), ("Encoded", "c.png")]
