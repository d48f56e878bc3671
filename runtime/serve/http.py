"""The HTTP front of the service, on the standard library's threading server.

Why not a framework: the runtime's users run it on Jetsons and Raspberry Pis, where every wheel
is one more thing to resolve for aarch64, and uvloop/httptools do not build on some of them.
``http.server`` costs no install and ~1 MB of RAM beside the model's hundreds; what it lacks is
added here and tested (``tests/test_serve.py``): a bounded number of connections (503 beyond),
a body limit read from Content-Length (413) and no chunked bodies (411), a socket timeout for
stalled clients, a Bearer token compared in constant time, CORS only when asked for, and a JSON
body with a one-line message for every error, the server's own (bad request line, 501) included.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import html
import json
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import InputError, StoreError, UserError
from .batching import Overloaded
from .jobs import QueueFull, sniff
from .openapi import openapi
from .service import MAX_K, MAX_QUERIES, MAX_RERANK, Forbidden, NotFound, Service, Unavailable

__all__ = ["ROUTES", "HttpError", "ServeOptions", "make_server"]

VERSION = "0.1.0"
MAX_JSON_BYTES = 1 << 20
MAX_QUERY_CHARS = 4096
# After answering a request whose body it did not read (413, 401, ...), the server reads and drops
# up to this much of it before closing: closing on unread bytes sends a reset, which can destroy
# the answer in the client's buffer, and a client still sending gets a broken pipe instead of it.
LINGER_BYTES = 64 << 20
LINGER_S = 5.0


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ServeOptions:
    """What the command line decides about the HTTP side."""

    def __init__(self, token: str | None = None, cors_origin: str | None = None, max_connections: int = 64,
                 socket_timeout_s: float = 30.0, log: bool = True,
                 max_upload_bytes: int = 100 << 20) -> None:  # fmt: skip
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.cors_origin = cors_origin
        self.max_connections = max_connections
        self.socket_timeout_s = socket_timeout_s
        self.log = log


Response = tuple[int, bytes, str, dict[str, str]]


@dataclass(frozen=True)
class Request:
    body: bytes
    params: dict[str, str]  # from the path: /jobs/{id}
    query: dict[str, list[str]]  # from the query string
    content_type: str


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return status, json.dumps(obj, allow_nan=False).encode(), "application/json", headers or {}


# -- request bodies ---------------------------------------------------------------------------


def _body_json(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"the body is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise HttpError(400, f"the body must be a JSON object, got {type(obj).__name__}")
    return obj


def _queries(body: dict[str, Any]) -> list[str]:
    if ("query" in body) == ("queries" in body):
        raise HttpError(400, 'give "query" (a string) or "queries" (a list of strings)')
    queries = [body["query"]] if "query" in body else body["queries"]
    if not isinstance(queries, list) or not queries:
        raise HttpError(400, '"queries" must be a non-empty list of strings')
    if len(queries) > MAX_QUERIES:
        raise HttpError(400, f'"queries" holds {len(queries)}; at most {MAX_QUERIES} a request')
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise HttpError(400, f"query {i} must be a string, got {type(q).__name__}")
        if len(q) > MAX_QUERY_CHARS:
            raise HttpError(400, f"query {i} is {len(q)} characters; at most {MAX_QUERY_CHARS}")
    return queries


def _int_field(body: dict[str, Any], name: str, default: int | None, least: int, most: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f'"{name}" must be a whole number, got {json.dumps(value)[:40]}')
    if not least <= value <= most:
        raise HttpError(400, f'"{name}" must be between {least} and {most}, got {value}')
    return value


def _known(body: dict[str, Any], names: set[str]) -> None:
    unknown = sorted(set(body) - names)
    if unknown:
        raise HttpError(400, f"unknown field(s): {', '.join(unknown)[:200]}")


# -- the routes -------------------------------------------------------------------------------


def _search(service: Service, r: Request) -> Response:
    req = _body_json(r.body)
    _known(req, {"query", "queries", "k", "rerank", "exact"})
    queries = _queries(req)
    k = _int_field(req, "k", 10, 1, MAX_K)
    rerank = _int_field(req, "rerank", None, 1, MAX_RERANK)
    exact = req.get("exact", False)
    if not isinstance(exact, bool):
        raise HttpError(400, f'"exact" must be true or false, got {json.dumps(exact)[:40]}')
    return _json(service.search(queries, k=int(k or 10), rerank=rerank, exact=exact))


def _embed_queries(service: Service, r: Request) -> Response:
    req = _body_json(r.body)
    _known(req, {"query", "queries"})
    vecs, _ = service.query_vectors(_queries(req))
    return _rows(vecs)


def _rows(vecs: list[np.ndarray]) -> Response:
    """Multi-vectors as little-endian fp16 rows back to back; dim and row offsets in headers."""
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vecs])])
    data = np.concatenate(vecs).astype("<f2").tobytes()
    headers = {"X-Collfm2-Dim": str(vecs[0].shape[1]), "X-Collfm2-Offsets": ",".join(map(str, offsets))}
    return 200, data, "application/octet-stream", headers


MAX_EMBED_IMAGES = 16


def _embed_images(service: Service, r: Request) -> Response:
    if not r.content_type.lower().startswith("multipart/form-data"):
        raise HttpError(415, "send the images as multipart/form-data file fields")
    files = _multipart_files(r.content_type, r.body)
    if len(files) > MAX_EMBED_IMAGES:
        raise HttpError(400, f"{len(files)} images; at most {MAX_EMBED_IMAGES} a request")
    for name, data in files:
        suffix = sniff(data)
        if suffix is None or suffix == ".pdf":
            what = (
                "a PDF (add its pages with POST /pages)" if suffix == ".pdf" else "not an image (judged by its bytes)"
            )
            raise HttpError(415, f"{name}: {what}")
    return _rows(service.image_vectors(files))


def _ready(service: Service, _: Request) -> Response:
    ok, why = service.ready()
    return _json({"ready": ok, "reason": why}, 200 if ok else 503, {} if ok else {"Retry-After": "5"})


def _docs(_: Service, __: Request) -> Response:
    spec = openapi(VERSION)
    rows = "".join(
        f"<tr><td><code>{m.upper()}</code></td><td><code>{html.escape(p)}</code></td>"
        f"<td>{html.escape(op['summary'])}</td></tr>"
        for p, ops in spec["paths"].items()
        for m, op in ops.items()
    )
    page = (f"<!doctype html><meta charset=utf-8><title>collfm2-edge API</title><h1>collfm2-edge API</h1>"
            f"<p>Schema: <a href=/openapi.json>/openapi.json</a>. Send <code>Authorization: Bearer TOKEN</code> "
            f"when the service has a token.</p><table border=1 cellpadding=4>{rows}</table>")  # fmt: skip
    return 200, page.encode(), "text/html; charset=utf-8", {}


def _add_pages(service: Service, r: Request) -> Response:
    """Uploaded files (multipart/form-data) or server-side paths ({"paths": [...]}) -> a job (202)."""
    ingest = service.ingestor
    if r.content_type.lower().startswith("multipart/form-data"):
        files = _multipart_files(r.content_type, r.body)
        stored, names = [], []
        for name, data in files:
            suffix = sniff(data)
            if suffix is None:
                raise HttpError(415, f"{name}: not an image or a PDF (judged by its bytes, not its name)")
            stored.append(str(ingest.store_upload(data, suffix)))
            names.append(name)
        job = ingest.submit(stored, names)
    else:
        req = _body_json(r.body)
        _known(req, {"paths"})
        paths = req.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise HttpError(400, '"paths" must be a non-empty list of paths on the server')
        job = ingest.submit([service.allowed_path(p) for p in paths])
    return _json(_job_view(job), 202, {"Location": f"/jobs/{job['id']}"})


def _multipart_files(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise HttpError(400, "the multipart body could not be read (check its boundary)")
    files = []
    for part in msg.iter_parts():
        filename = part.get_filename()
        if filename is None:
            continue  # a form field, not a file
        data = part.get_payload(decode=True) or b""
        name = "".join(c for c in os.path.basename(filename.replace("\\", "/")) if c.isprintable())[:200] or "file"
        if not data:
            raise HttpError(400, f"{name}: the file is empty")
        files.append((name, data))
    if not files:
        raise HttpError(400, "no files in the upload (send them as multipart/form-data file fields)")
    return files


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in job.items() if k != "committed"}
    view["committed_pages"] = len(job.get("committed", []))
    return view


def _job(service: Service, r: Request) -> Response:
    job = service.ingestor.get(r.params["id"])
    if job is None:
        raise HttpError(404, f"no such job: {r.params['id'][:40]}")
    full = r.query.get("pages", ["0"])[0] == "1"
    return _json(job if full else _job_view(job))


def _remove_pages(service: Service, r: Request) -> Response:
    paths = r.query.get("path", [])
    if not paths or not all(paths):
        raise HttpError(400, "name the pages' files: DELETE /pages?path=/stored/path[&path=...]")
    return _json({"removed": service.ingestor.remove(paths, service.config.timeout_s)})


def _one(r: Request, name: str, default: str | None = None) -> str:
    values = r.query.get(name)
    if not values:
        if default is None:
            raise HttpError(400, f"give ?{name}=...")
        return default
    return values[0]


def _page_args(r: Request) -> tuple[str, int, int]:
    page, side = _one(r, "page", "1"), _one(r, "max_side", "1600")
    if not page.isdigit() or not 1 <= int(page) <= 100_000:
        raise HttpError(400, f"page must be a page number from 1, got {page[:20]!r}")
    if not side.isdigit() or not 16 <= int(side) <= 4096:
        raise HttpError(400, f"max_side must be 16 to 4096 pixels, got {side[:20]!r}")
    return _one(r, "path"), int(page), int(side)


def _png(image: Any, headers: dict[str, str]) -> Response:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return 200, buf.getvalue(), "image/png", headers


def _page_image(service: Service, r: Request) -> Response:
    path, page, side = _page_args(r)
    image, stale = service.page_image(path, page, side)
    return _png(image, {"X-Collfm2-Stale": "true"} if stale else {})


def _page_explain(service: Service, r: Request) -> Response:
    path, page, side = _page_args(r)
    query = _queries({"query": _one(r, "query")})[0]
    which = _one(r, "token", "max")
    if which not in ("max", "sum") and not which.isdigit():
        raise HttpError(400, f"token must be max, sum or a token number, got {which[:20]!r}")
    image, meta = service.page_explain(path, page, query, which if which in ("max", "sum") else int(which), side)
    if _one(r, "format", "png") == "json":
        return _json(meta)
    return _png(
        image, {"X-Collfm2-Score": f"{meta['score']:.6f}", **({"X-Collfm2-Stale": "true"} if meta["stale"] else {})}
    )


def _job_events(service: Service, r: Request) -> Response:
    """Server-sent events: the job each time it changes, until it ends (streamed by the handler)."""
    job_id = r.params["id"]
    if service.ingestor.get(job_id) is None:
        raise HttpError(404, f"no such job: {job_id[:40]}")
    return 200, b"", "text/event-stream", {"X-Collfm2-Stream": job_id}


def _page(_: Service, __: Request) -> Response:
    """The web page: plain HTML and JS in the package, no build step."""
    from importlib.resources import files

    page = files("runtime.serve").joinpath("static/index.html").read_bytes()
    return 200, page, "text/html; charset=utf-8", {"Content-Security-Policy": CSP}


# The page loads nothing from elsewhere, and page images are blob: URLs (fetched with the token).
CSP = "default-src 'self'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


Handler = Callable[[Service, Request], Response]

# (method, path) -> (handler, needs the token); "{name}" matches one path segment
ROUTES: dict[tuple[str, str], tuple[Handler, bool]] = {
    ("POST", "/search"): (_search, True),
    ("POST", "/embed/queries"): (_embed_queries, True),
    ("POST", "/embed/images"): (_embed_images, True),
    ("POST", "/pages"): (_add_pages, True),
    ("DELETE", "/pages"): (_remove_pages, True),
    ("GET", "/jobs/{id}"): (_job, True),
    ("GET", "/jobs/{id}/events"): (_job_events, True),
    ("GET", "/pages/image"): (_page_image, True),
    ("GET", "/pages/explain"): (_page_explain, True),
    ("GET", "/info"): (lambda s, _: _json(s.info()), True),
    ("GET", "/metrics"): (lambda s, _: (200, s.metrics.text().encode(), "text/plain; version=0.0.4", {}), True),
    ("GET", "/healthz"): (lambda s, _: _json({"status": "ok"}), False),
    ("GET", "/readyz"): (_ready, True),
    ("GET", "/openapi.json"): (lambda s, _: _json(openapi(VERSION)), False),
    ("GET", "/docs"): (_docs, False),
    ("GET", "/"): (_page, False),
}
_PATTERNS = [(m, re.compile("^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[A-Za-z0-9_-]{1,64})", re.escape(p)) + "$"), p)
             for m, p in ROUTES]  # fmt: skip


def _route(method: str, path: str) -> tuple[str | None, dict[str, str], list[str]]:
    """The route template ``path`` matches for ``method``, its parameters, and the methods it allows."""
    allowed, found, params = [], None, {}
    for m, pattern, template in _PATTERNS:
        match = pattern.match(path)
        if match:
            allowed.append(m)
            if m == method:
                found, params = template, match.groupdict()
    return found, params, sorted(set(allowed))


# -- the server -------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection never holds up shutdown: draining counts requests
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: Service, options: ServeOptions) -> None:
        self.service = service
        self.options = options
        self._slots = threading.BoundedSemaphore(options.max_connections)
        self._active = 0
        self._idle = threading.Condition()
        self.stopping = threading.Event()  # set before shutdown: event streams end
        # The listen backlog (socketserver's default is 5): a burst of clients beyond it overflowed
        # the accept queue, the kernel answered with SYN cookies and a client got a reset instead
        # of an answer (16 clients at once, tests/test_serve.py). Queue as many as may be served.
        self.request_queue_size = options.max_connections
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Over the connection limit: one short answer on this thread, no handler thread.
            body = b'{"error": "too many connections; retry shortly"}'
            head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
            try:
                request.settimeout(1.0)
                request.sendall(head + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def begin(self) -> None:
        with self._idle:
            self._active += 1

    def end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is being answered (after ``shutdown``): True when none is left."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request line that cannot be parsed is answered with a status line and headers, not as
    # HTTP/0.9 (a bare body), so every client can read the error.
    default_request_version = "HTTP/1.0"
    # Headers and body go out in two writes; with Nagle's algorithm the body waits for the
    # client's delayed ACK, 40 ms a request on Linux loopback (measured: 53 ms warm search vs 1 ms
    # in-process with the tiny bundle).
    disable_nagle_algorithm = True
    server_version = "collfm2-edge/" + VERSION
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.options.socket_timeout_s  # a stalled client gives its thread back
        super().setup()

    # Every method goes through one place; unknown ones get a JSON 405 or 501 there too.
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _dispatch(self, method: str) -> None:
        self.server.begin()
        self._consumed = False
        t0 = time.perf_counter()
        path = urlsplit(self.path).path
        route = _route("GET" if method == "HEAD" else method, path)[0] or "other"
        status = 500
        try:
            status, body, ctype, headers = self._answer(method, path)
        except HttpError as exc:
            status, body, ctype, headers = _error(exc.status, str(exc), exc.headers)
        except Overloaded as exc:
            status, body, ctype, headers = _error(429, str(exc), {"Retry-After": "1"})
        except Forbidden as exc:
            status, body, ctype, headers = _error(403, str(exc))
        except NotFound as exc:
            status, body, ctype, headers = _error(404, str(exc))
        except (Unavailable, QueueFull) as exc:
            status, body, ctype, headers = _error(503, str(exc), {"Retry-After": "5"})
        except (InputError, UserError) as exc:
            # A damaged index is the server's problem, not the request's.
            status, body, ctype, headers = _error(500 if isinstance(exc, StoreError) else 400, str(exc))
        except Exception:
            traceback.print_exc(file=sys.stderr)
            status, body, ctype, headers = _error(500, "internal error; the service's log has the details")
        unread = self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers
        if not self._consumed and unread:
            self.close_connection = True  # an unread body would be taken for the next request
        stream = headers.pop("X-Collfm2-Stream", None) if status == 200 else None
        try:
            if stream is not None:
                self._stream_job(stream)
            else:
                self._send(status, body, ctype, headers, head_only=method == "HEAD")
                if not self._consumed and unread:
                    self._linger()
        finally:
            self.server.service.metrics.request(method, route, status, time.perf_counter() - t0)
            self.server.end()

    def _answer(self, method: str, path: str) -> Response:
        opts = self.server.options
        if method == "OPTIONS" and opts.cors_origin:
            return 204, b"", "text/plain", {
                "Access-Control-Allow-Methods": "GET, POST, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            }  # fmt: skip
        template, params, allowed = _route("GET" if method == "HEAD" else method, path)
        if template is None:
            if allowed:
                raise HttpError(405, f"{method} is not allowed on {path[:200]}; use {', '.join(allowed)}",
                                {"Allow": ", ".join(allowed)})  # fmt: skip
            raise HttpError(404, f"no such endpoint: {path[:200]}")
        found = ROUTES[("GET" if method == "HEAD" else method, template)]
        handler, needs_token = found
        if needs_token and opts.token is not None:
            given = self.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), opts.token.encode()):
                raise HttpError(401, "missing or wrong token (send Authorization: Bearer TOKEN)",
                                {"WWW-Authenticate": "Bearer"})  # fmt: skip
        uploads = template in ("/pages", "/embed/images")
        limit = self.server.options.max_upload_bytes if uploads else MAX_JSON_BYTES
        body = self._read_body(limit) if method == "POST" else b""
        try:
            query = parse_qs(urlsplit(self.path).query, max_num_fields=100)
        except ValueError:
            raise HttpError(400, "too many query parameters (at most 100)") from None
        return handler(self.server.service, Request(body, params, query, self.headers.get("Content-Type", "")))

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HttpError(411, "chunked bodies are not taken; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(411, "send Content-Length")
        try:
            n = int(length)
        except ValueError:
            raise HttpError(400, f"Content-Length is not a number: {length[:40]!r}") from None
        if n < 0:
            raise HttpError(400, "Content-Length is negative")
        if n > limit:
            raise HttpError(413, f"the body is {n} bytes; at most {limit}")
        try:
            data = self.rfile.read(n)
        except TimeoutError:
            self.close_connection = True
            raise HttpError(408, "the body did not arrive in time") from None
        if len(data) != n:
            self.close_connection = True
            raise HttpError(400, f"the body ended after {len(data)} of {n} bytes")
        self._consumed = True
        return data

    def _linger(self) -> None:
        """Read and drop what is left of an unread body, bounded in bytes and time."""
        try:
            self.wfile.flush()
            left, deadline = LINGER_BYTES, time.monotonic() + LINGER_S
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return
                self.connection.settimeout(wait)
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:  # timed out or the client went away: the close follows either way
            return

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str], head_only: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            origin = self.server.options.cors_origin
            if origin and self.headers.get("Origin") == origin:
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Vary", "Origin")
            for name, value in headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not head_only:
                self.wfile.write(body)
        except OSError:  # the client went away: nothing to tell it
            self.close_connection = True

    def _stream_job(self, job_id: str, poll_s: float = 0.2, limit_s: float = 3600.0) -> None:
        """``text/event-stream`` of one job: an event whenever it changes, the last when it ends."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            origin = self.server.options.cors_origin
            if origin and self.headers.get("Origin") == origin:
                self.send_header("Access-Control-Allow-Origin", origin)
            self.end_headers()
            last, deadline = None, time.monotonic() + limit_s
            while time.monotonic() < deadline:
                job = self.server.service.ingestor.get(job_id)
                text = json.dumps(_job_view(job)) if job else json.dumps({"id": job_id, "state": "gone"})
                if text != last:
                    self.wfile.write(f"data: {text}\n\n".encode())
                    self.wfile.flush()
                    last = text
                if job is None or job["state"] not in ("queued", "running") or self.server.stopping.is_set():
                    return
                time.sleep(poll_s)
        except OSError:  # the client went away
            return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class's own errors (bad request line, header too long, unsupported method):
        # JSON like every other answer, never its HTML page.
        self.close_connection = True
        _, body, ctype, headers = _error(code, message or HTTPStatus(code).phrase)
        self._send(code, body, ctype, headers)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.options.log:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    line = " ".join(str(message).split())[:500]  # one line, bounded
    return _json({"error": line}, status, headers)


def make_server(service: Service, host: str, port: int, options: ServeOptions) -> _Server:
    """A server bound to (host, port) (port 0: any free one), not yet serving."""
    return _Server((host, port), service, options)
