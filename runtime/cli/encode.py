"""``encode`` (pages to an .npz) and ``selftest`` (a bundle's fidelity on this machine)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..ingest.npz import NpzWriter
from ..ingest.sources import Failed, iter_sources
from ..ingest.stream import Encoded, encode_stream, progress
from ..stores.base import bundle_identity
from .common import load_model, report_failure

__all__ = ["encode", "selftest"]


def encode(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name the .npz file to write")
    model = load_model(args.bundle, args.precision, args.threads, args.engine)
    writer = NpzWriter(args.dtype)
    failed = 0
    bar = progress(None, "encode", enabled=False if args.no_progress else None)
    for item in encode_stream(
        model, model.processor, iter_sources(args.paths, args.dpi, args.max_file_mb), args.batch_tiles
    ):
        if isinstance(item, Failed):
            failed += 1
            report_failure(item)
            continue
        assert isinstance(item, Encoded)
        if item.source.note:
            print(f"note: {item.source.note}", file=sys.stderr)
        writer.add(item)
        bar.update()
    bar.close()
    if not len(writer):
        print("error: no page could be encoded", file=sys.stderr)
        return 2
    writer.write(out, bundle_identity(model.bundle, model.precision))
    print(f"wrote {out}: {len(writer)} pages, {writer.offsets[-1]} vectors x {writer.rows[0].shape[1]} ({args.dtype})")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
        return 1
    return 0


def selftest(args: argparse.Namespace) -> int:
    from ..encoder.selftest import format_report, selftest

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()] if args.precision else None
    report = selftest(args.bundle, precisions, args.engine, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(format_report(report)))
    return 0 if report["passed"] else 1
