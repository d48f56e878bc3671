"""Patch-count buckets: vision FLOPs and time on a mixed page set, bucketed vs always 1,024 patches.

The vision graph takes a dynamic patch count; ``ColLFM2`` runs each tile at the smallest bucket
(256/512/768/1024) that holds it. Padded patches are masked keys, so results are unchanged (tested
in tests/test_onnx_export.py). This script measures what that saves on pages of mixed sizes, in
one run, with FLOPs counted from the graph by shape inference at each patch count.

    python benchmarks/bench_buckets.py --bundle BUNDLE [--runs 3] [--out benchmarks/results/buckets.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (height, width) of typical inputs: a phone screenshot, a receipt, an icon-sized scan, a slide,
# a 512x512 page and an A4 page (tiled).
MIXED = {"screenshot-390x844": (844, 390), "receipt-300x900": (900, 300), "small-200x200": (200, 200),
         "slide-720x405": (405, 720), "page-512x512": (512, 512), "a4-150dpi": (1754, 1240)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/buckets.json")
    a = ap.parse_args()

    from export.flops import vision_flops_at
    from export.validate import synthetic_page
    from runtime import ColLFM2, ColLFM2Processor

    proc = ColLFM2Processor.from_pretrained(a.bundle)
    model = ColLFM2.from_pretrained(a.bundle, precision="fp32")
    buckets = list(model.patch_buckets)
    flops = {n: vision_flops_at(Path(a.bundle) / "fp32" / "vision.onnx", n) for n in buckets}
    rows, totals = [], {"bucketed": [0.0, 0.0], "full": [0.0, 0.0]}
    for name, (h, w) in MIXED.items():
        b = proc.process_images([synthetic_page(h, w, seed=1)])
        tiles = [int(ph) * int(pw) for ph, pw in b["spatial_shapes"]]
        row = {"page": name, "tiles": len(tiles), "patches": tiles}
        for mode, plan in (("bucketed", buckets), ("full", [buckets[-1]])):
            model.patch_buckets = plan
            f = sum(flops[model.bucket_for(t)] for t in tiles)
            args = (b["pixel_values"], b["pixel_attention_mask"], b["spatial_shapes"])
            model.image_tokens(*args)  # warm-up
            ts = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                model.image_tokens(*args)
                ts.append(time.perf_counter() - t0)
            row[mode] = {"gflop": f / 1e9, "ms": float(np.median(ts)) * 1e3}
            totals[mode][0] += f / 1e9
            totals[mode][1] += row[mode]["ms"]
        model.patch_buckets = buckets
        rows.append(row)
    result = {"bundle": a.bundle, "buckets": buckets, "gflop_per_tile": {n: f / 1e9 for n, f in flops.items()},
              "pages": rows, "totals": totals}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| page | tiles (patches) | vision GFLOP bucketed / 1024 | ms bucketed / 1024 |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['page']} | {r['tiles']} ({', '.join(map(str, r['patches']))}) | {r['bucketed']['gflop']:.0f} / "
              f"{r['full']['gflop']:.0f} | {r['bucketed']['ms']:.0f} / {r['full']['ms']:.0f} |")  # fmt: skip
    (fb, tb), (ff, tf) = totals["bucketed"], totals["full"]
    print(f"| **mixed set** | | {fb:.0f} / {ff:.0f} ({1 - fb / ff:.0%} fewer) | {tb:.0f} / {tf:.0f} "
          f"({tf / tb:.2f}x faster) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
