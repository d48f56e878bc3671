"""Index benchmarks: MaxSim search throughput over a large synthetic index, and ingest throughput.

* search: 10,000 synthetic pages x 266 rows x 128 dims stored as fp16 segments (681 MB), one
  20-token query; reports ms per search and GB/s of document vectors scanned, next to a STREAM-like
  numpy copy measured in the same run (the memory-bandwidth ceiling of a scan).
* ingest: ``index add`` of rendered pages through the tiny bundle (fp32, ONNX Runtime CPU), pages/s
  end to end (decode, preprocess, vision, text, commit). The tiny model makes this a measure of
  the pipeline's own overhead, not of the 450M model.

    python benchmarks/bench_index.py [--pages 10000] [--ingest-pages 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import timeit

IDENTITY = {"bundle_path": "-", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
            "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip


def _median_time(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up."""
    return timeit(fn, 1, repeat)["p50_ms"] / 1e3


def bench_search(n_pages: int, rows: int, repeat: int, tmp: Path) -> dict:
    from runtime.stores.local.index import Index, PageRecord

    rng = np.random.default_rng(0)
    index = Index.create(tmp / "idx", IDENTITY)
    with index.writer():
        for start in range(0, n_pages, 500):
            recs = []
            for i in range(start, min(n_pages, start + 500)):
                e = rng.standard_normal((rows, 128)).astype(np.float16)
                recs.append(PageRecord(f"/p/{i}.png", 1, f"h{i}", 0, e))
            index.add_batch(recs)
    q = rng.standard_normal((20, 128)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index.search([q], k=10)  # warm: memory maps, page cache
    secs = _median_time(lambda: index.search([q], k=10), repeat)
    doc_bytes = n_pages * rows * 128 * 2
    flops = 2 * 20 * n_pages * rows * 128
    # STREAM-like copy of a buffer the size of one search block, and a GEMM of the same shape.
    a = rng.standard_normal(doc_bytes // 8 // 4).astype(np.float32)
    b = np.empty_like(a)
    copy_s = _median_time(lambda: np.copyto(b, a), repeat)
    copy_gbs = 2 * a.nbytes / copy_s / 1e9  # read + write
    d = rng.standard_normal((1 << 18, 128)).astype(np.float32)
    gemm_s = _median_time(lambda: q @ d.T, repeat)
    index.close()
    return {
        "pages": n_pages,
        "rows_per_page": rows,
        "query_rows": 20,
        "doc_vectors_gb_fp16": doc_bytes / 1e9,
        "search_ms": secs * 1e3,
        "scan_gb_per_s": doc_bytes / secs / 1e9,
        "gflop_per_s": flops / secs / 1e9,
        "numpy_copy_gb_per_s": copy_gbs,
        "gemm_same_shape_gflop_per_s": 2 * 20 * d.shape[0] * 128 / gemm_s / 1e9,
    }


def bench_ingest(n_pages: int, tmp: Path) -> dict:
    from export.demo import SAMPLE_PAGES, render_page
    from export.onnx_export import OnnxConfig, run
    from export.recipes import Precision
    from runtime import ColLFM2, ColLFM2Processor
    from runtime.ingest.sources import iter_sources
    from runtime.ingest.stream import Encoded, encode_stream
    from runtime.stores.local.index import Index, PageRecord, bundle_identity

    bundle, _ = run(OnnxConfig("tiny", str(tmp / "bundle"), (Precision.FP32,)), log=lambda m: None)
    pages = tmp / "pages"
    pages.mkdir()
    texts = list(SAMPLE_PAGES.values())
    for i in range(n_pages):
        render_page([f"page {i}", *texts[i % len(texts)]]).save(pages / f"{i:04d}.png")
    model = ColLFM2.from_pretrained(bundle)
    proc = ColLFM2Processor.from_pretrained(bundle)
    t = time.perf_counter()
    with Index.create(tmp / "ingest", bundle_identity(model.bundle, "fp32")) as index, index.writer():
        batch = []
        for item in encode_stream(model, proc, iter_sources([pages])):
            assert isinstance(item, Encoded)
            s = item.source
            batch.append(PageRecord(s.path, s.page, s.content_hash, s.size, item.embeddings))
            if len(batch) == 16:
                index.add_batch(batch)
                batch = []
        index.add_batch(batch)
        added = len(index.pages())
    secs = time.perf_counter() - t
    return {"bundle": "tiny fp32", "pages": added, "seconds": secs, "pages_per_s": added / secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=266)
    ap.add_argument("--ingest-pages", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/index.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        search = bench_search(a.pages, a.rows, a.repeat, Path(tmp))
        ingest = bench_ingest(a.ingest_pages, Path(tmp))
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "search": search,
        "ingest": ingest,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    s, g = search, ingest
    print("| measure | value |\n|---|---|")
    print(f"| search {s['pages']:,} pages x {s['rows_per_page']} rows ({s['doc_vectors_gb_fp16']:.2f} GB fp16) | "
          f"{s['search_ms']:.0f} ms |")  # fmt: skip
    print(
        f"| document vectors scanned | {s['scan_gb_per_s']:.2f} GB/s "
        f"(numpy copy: {s['numpy_copy_gb_per_s']:.1f} GB/s) |"
    )
    print(
        f"| MaxSim arithmetic | {s['gflop_per_s']:.1f} GFLOP/s "
        f"(same-shape GEMM: {s['gemm_same_shape_gflop_per_s']:.1f}) |"
    )
    print(f"| index add, {g['bundle']} | {g['pages_per_s']:.1f} pages/s ({g['pages']} pages in {g['seconds']:.1f} s) |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
