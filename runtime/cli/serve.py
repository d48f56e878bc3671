"""``serve``: the resident search service (``runtime.serve``) over one index, until SIGTERM/Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import UserError
from .args import backend_arg, bundle_args, path_arg, positive, store_args, whole_number
from .common import exists, load_model

__all__ = ["add_serve_parser", "serve"]

TOKEN_ENV = "COLLFM2_TOKEN"
DRAIN_S = 30.0


def add_serve_parser(sub: Any) -> None:
    sv = sub.add_parser("serve", help="a resident search service over HTTP (loads the model once)")
    store_args(sv)
    backend_arg(sv, stores=True)
    bundle_args(sv, required=False)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=whole_number(0, " (0: any free port)"), default=8000, help="default 8000")
    sv.add_argument("--token-file", type=path_arg,
                    help=f"a file holding the Bearer token clients must send (or set {TOKEN_ENV}); required "
                    "when --host is not a loopback address")  # fmt: skip
    sv.add_argument("--cors-origin", help="let pages from this origin (https://app.example) call the API")
    sv.add_argument("--max-batch", type=positive, default=16, help="queries encoded in one model call (default 16)")
    sv.add_argument("--batch-window-ms", type=float, default=0.0,
                    help="how long a query waits for others to share its model call (default 0: queries that "
                    "arrive while the model is busy share its next call anyway)")  # fmt: skip
    sv.add_argument("--max-waiting", type=positive, default=64,
                    help="queries waiting to be encoded before requests get 429 (default 64)")  # fmt: skip
    sv.add_argument("--max-connections", type=positive, default=64, help="open connections (default 64; 503 beyond)")
    sv.add_argument("--allow-path", type=path_arg, action="append", default=[], metavar="DIR",
                    help="POST /pages may name files under DIR on this machine (repeatable; default: none, "
                    "uploads only)")  # fmt: skip
    sv.add_argument("--max-upload-mb", type=positive, default=100, help="largest upload body (default 100)")
    sv.add_argument("--commit-pages", type=positive, default=16, help="pages per commit of an ingestion job")
    sv.add_argument("--quiet", action="store_true", help="no line per request on stderr")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--token-file {args.token_file}: cannot be read ({exc})") from None
        if not token:
            raise UserError(f"--token-file {args.token_file}: the file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(args: argparse.Namespace) -> int:
    from ..serve.http import ServeOptions, make_server
    from ..serve.service import Service, ServiceConfig

    token = _token(args)
    if token is None and not _loopback(args.host):
        raise UserError(f"--host {args.host} lets other machines in: give a token (--token-file, or {TOKEN_ENV})")
    if args.batch_window_ms < 0 or args.batch_window_ms > 1000:
        raise UserError(f"--batch-window-ms must be between 0 and 1000, got {args.batch_window_ms}")
    if not exists(args):
        raise UserError(f"{args.index or args.url}: no index here (make one with: python -m runtime index add)")
    from ..stores.open import open_store

    with open_store(args.store, args.index, getattr(args, "url", None), args.collection) as s:  # what made it
        meta = s.meta
    model = load_model(args.bundle or meta["bundle_path"], args.precision or meta["precision"], args.threads,
                       args.engine)  # fmt: skip
    for folder in args.allow_path:
        if not Path(folder).is_dir():
            raise UserError(f"--allow-path {folder}: not a folder")
    config = ServiceConfig(max_batch=args.max_batch, window_ms=args.batch_window_ms, max_waiting=args.max_waiting,
                           allow_paths=tuple(args.allow_path), commit_pages=args.commit_pages)  # fmt: skip
    service = Service(model, args.store, args.index, getattr(args, "url", None), args.collection, config)
    try:
        options = ServeOptions(token, args.cors_origin, args.max_connections, log=not args.quiet,
                               max_upload_bytes=args.max_upload_mb << 20)  # fmt: skip
        try:
            server = make_server(service, args.host, args.port, options)
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        thread.start()
        host, port = server.server_address[:2]
        print(f"serving {args.index or args.url} on http://{host}:{port} (API: /docs)"
              + (" with a token" if token else ""), file=sys.stderr, flush=True)  # fmt: skip
        # A signal may land on any thread, and a wait without a timeout would not wake for it:
        # the handler runs only when the main thread next runs Python, so wake it twice a second.
        while not stop.wait(0.5):
            pass
        print("stopping: finishing the requests in flight", file=sys.stderr, flush=True)
        server.stopping.set()  # event streams end
        server.shutdown()  # no new connections
        if not server.drain(DRAIN_S):
            print(f"stopping: requests still running after {DRAIN_S:.0f} s", file=sys.stderr)
        server.server_close()
    finally:
        service.close()
    print("stopped", file=sys.stderr)
    return 0
