"""``python -m export.demo``: encode a few sample pages and search them, end to end.

Renders sample pages, preprocesses them with the torch-free runtime, encodes pages and queries,
and ranks pages by MaxSim with ``runtime.score``. Encoding runs on an exported bundle with
``runtime.ColLFM2`` (``--bundle``, what ``make demo`` does: no torch involved) or on a checkpoint
with the PyTorch reference (``--model``). With random weights the ranking is meaningless; the
demo says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runtime import ColLFM2Processor, UserError, score

SAMPLE_PAGES = {
    "invoice.png": ["INVOICE #2024-117", "Bill to: Example GmbH", "Item        Qty   Price", "Widget       4    12.00",
                    "Gadget       1    99.00", "", "Total amount due: 147.00 EUR"],
    "revenue_report.png": ["Quarterly revenue report", "Q1  ####", "Q2  ######", "Q3  ########", "Q4  ##########",
                           "", "Revenue grew every quarter of the year."],
    "contents.png": ["Table of contents", "1. Introduction ........ 1", "2. Methods ............. 4",
                     "3. Results ............. 9", "4. Discussion .......... 15"],
}  # fmt: skip
QUERIES = ["total amount due on the invoice", "quarterly revenue chart", "table of contents"]


def render_page(lines: list[str]) -> Image.Image:
    """A letter-size page at 72 dpi (612x792, one tile, 252 image tokens) with ``lines`` of text."""
    try:
        font = ImageFont.load_default(size=28)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    page = Image.new("RGB", (612, 792), "white")
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((40, 40 + 44 * i), line, fill="black", font=font)
    return page


def render_pages(out_dir: Path) -> list[Path]:
    """The sample pages as PNGs under ``out_dir``, plus ``report.pdf`` (two of them as a 2-page
    PDF, for the index demo). Returns the PNG paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, images = [], []
    for name, lines in SAMPLE_PAGES.items():
        path = out_dir / name
        images.append(render_page(lines))
        images[-1].save(path)
        paths.append(path)
    images[1].save(out_dir / "report.pdf", save_all=True, append_images=[images[2]], resolution=72)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="ONNX bundle directory (python -m export --target onnx): encode with ONNX Runtime")
    p.add_argument("--model", help="ColLFM2 checkpoint directory: encode with the PyTorch reference instead")
    p.add_argument("--precision", default=None, help="bundle precision (default: the bundle's default)")
    p.add_argument("--pages", default="build/sample_pages", help="where to write the sample pages")
    p.add_argument("--device", default=None, help="--model only: cpu or cuda (default: cuda when present)")
    a = p.parse_args(argv)
    if bool(a.bundle) == bool(a.model):
        p.error("give exactly one of --bundle or --model")

    try:
        t0 = time.perf_counter()
        if a.bundle:
            from runtime import ColLFM2

            model = ColLFM2.from_pretrained(a.bundle, precision=a.precision)
            random_weights = model.bundle.random_weights

            encode = model.encode_rows

            what = f"bundle {a.bundle} ({model.precision}, ONNX Runtime CPU)"
            proc_dir = a.bundle
        else:
            from .checkpoint import load_checkpoint
            from .reference import pick_device

            device, dtype = pick_device(a.device)
            loaded = load_checkpoint(a.model, device=device, dtype=dtype)
            random_weights = loaded.random_weights
            encode = loaded.model.encode
            what = f"checkpoint {a.model} (PyTorch reference on {device}): " + "; ".join(loaded.notes)
            proc_dir = a.model
        print(f"[demo] loaded {what} in {time.perf_counter() - t0:.1f}s")
        proc = ColLFM2Processor.from_pretrained(proc_dir)
        paths = render_pages(Path(a.pages))
        print(f"[demo] rendered {len(paths)} sample pages into {a.pages}/")
        docs = []
        for path in paths:
            t = time.perf_counter()
            docs += encode(proc.process_images([path]))
            print(f"[demo] encoded {path.name}: {docs[-1].shape[0]} vectors x {docs[-1].shape[1]} in "
                  f"{time.perf_counter() - t:.1f}s")  # fmt: skip
        q_emb = encode(proc.process_queries(QUERIES))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores = score(q_emb, docs)
    if random_weights:
        print("\n*** RANDOM WEIGHTS: the pipeline is real, the ranking below is meaningless. ***")
    for qi, query in enumerate(QUERIES):
        order = np.argsort(-scores[qi])
        print(f"\nquery: {query!r}")
        print(f"  {'rank':>4}  {'score':>8}  page")
        for rank, di in enumerate(order, 1):
            print(f"  {rank:>4}  {scores[qi, di]:8.3f}  {paths[di].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
