"""``python -m runtime``: encode, index and search pages on the device; inspect preprocessing.

    python -m runtime encode --bundle BUNDLE --out FILE.npz PATH...       # images, folders, PDFs
    python -m runtime index add --index DIR [--bundle BUNDLE] PATH...     # bundle recorded at creation
    python -m runtime index info --index DIR [--json]
    python -m runtime index remove --index DIR PATH...
    python -m runtime search --index DIR [-k 10] [--json] QUERY
    python -m runtime serve --index DIR [--port 8000]                     # HTTP service, model loaded once
    python -m runtime selftest --bundle BUNDLE [--precision P,...]        # fidelity on this machine
    python -m runtime explain --bundle BUNDLE --out DIR --query Q FILE    # similarity maps on the page
    python -m runtime preprocess --model DIR [--json] IMAGE...            # tiles, tokens, shapes per image
    python -m runtime tokenize --model DIR [--json] QUERY...              # query ids, as the model sees them

User errors print one line and exit 2. When some pages of a batch fail, each is reported on one
line, the rest are processed (and committed), and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError
from .preprocess.config import DECODE_MODES, TILE_LABEL_ORDERS
from .preprocess.processor import ColLFM2Processor


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="ColLFM2 checkpoint or export bundle directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--decode", choices=DECODE_MODES, default="corrected", help="image decoding (default: corrected)")
    p.add_argument("--tile-labels", choices=TILE_LABEL_ORDERS, default="5.x", help="row/col label order")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description="collfm2-edge runtime tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    from .cli.commands import add_parsers, run_command

    add_parsers(sub)
    pre = sub.add_parser("preprocess", help="show how images are tiled and tokenised")
    _add_model_args(pre)
    pre.add_argument("images", nargs="+")
    tok = sub.add_parser("tokenize", help="show query token ids")
    _add_model_args(tok)
    tok.add_argument("queries", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd in ("encode", "index", "search", "serve", "selftest", "explain"):
        return run_command(args)

    try:
        proc = ColLFM2Processor.from_pretrained(args.model, decode=args.decode, tile_labels=args.tile_labels)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.cmd == "tokenize":
        try:
            rows = [{"query": q, "input_ids": proc.tokenizer.query_ids(q).tolist()} for q in args.queries]
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for row in rows:
            print(json.dumps(row) if args.json else f"{len(row['input_ids']):5d} tokens  {row['input_ids']}")
        return 0

    failed = 0
    results = []
    for path in args.images:
        try:
            page = proc.process_image(path)
        except UserError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        plan = page.plan
        row = {
            "path": path,
            "size": [plan.width, plan.height],
            "grid": [plan.grid_rows, plan.grid_cols] if plan.tiled else [1, 1],
            "thumbnail": plan.thumbnail,
            "units": len(plan.unit_sizes),
            "spatial_shapes": page.spatial_shapes.tolist(),
            "image_tokens": plan.num_image_tokens,
            "sequence_length": len(page.input_ids),
        }
        results.append(row)
        if args.json:
            print(json.dumps(row))
        else:
            grid = f"{row['grid'][0]}x{row['grid'][1]} tiles" + (" + thumbnail" if plan.thumbnail else "")
            print(
                f"{path}: {plan.width}x{plan.height} -> {grid if plan.tiled else 'single unit'}, "
                f"{row['image_tokens']} image tokens, {row['sequence_length']} vectors"
            )
    if failed:
        print(f"{failed} of {len(args.images)} images failed", file=sys.stderr)
        return 1 if results else 2
    return 0


def run_main() -> int:
    """``main`` for a shell: a reader that stops early (``| head``) ends the command quietly, with
    status 1, instead of a traceback and a second error when Python flushes stdout at exit."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(run_main())
