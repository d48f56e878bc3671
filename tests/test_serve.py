"""The resident service: search over HTTP equals the library's search, queries batched only with
equal-length company (same bits as alone), every bad request one line of JSON with the index
untouched, the token, the limits (429, 503, 413, 411), metrics, the schema, and the command's
start and SIGTERM stop."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export.demo import SAMPLE_PAGES, render_page
from runtime import ColLFM2
from runtime.serve.batching import Overloaded, QueryBatcher
from runtime.serve.http import ROUTES, ServeOptions, make_server
from runtime.serve.openapi import openapi
from runtime.serve.service import Service, ServiceConfig
from runtime.stores.local.index import Index

TOKEN = "s3cret-token"


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def index_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pages = tmp_path_factory.mktemp("serve-pages")
    for name, lines in SAMPLE_PAGES.items():
        render_page(lines).save(pages / name)
    idx = tmp_path_factory.mktemp("serve") / "idx"
    res = _cli("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--precision", "fp32", str(pages))
    assert res.returncode == 0, res.stderr
    return idx


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> ColLFM2:
    return ColLFM2.from_pretrained(tiny_bundle, precision="fp32")


class _Running:
    def __init__(self, service: Service, options: ServeOptions) -> None:
        self.service = service
        self.server = make_server(service, "127.0.0.1", 0, options)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        conn.close()
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.service.close()


@pytest.fixture(scope="module")
def running(model: ColLFM2, index_dir: Path):
    r = _Running(Service(model, "local", str(index_dir), config=ServiceConfig(window_ms=20)),
                 ServeOptions(token=TOKEN, log=False))  # fmt: skip
    yield r
    r.close()


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _error_line(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"] == "application/json", (status, body)
    msg = json.loads(body)["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_search_over_http_is_the_librarys_search(running: _Running, model: ColLFM2, index_dir: Path) -> None:
    query = "quarterly revenue table"
    status, _, body = running.request("POST", "/search", {"query": query, "k": 3})
    assert status == 200, body
    got = json.loads(body)
    with Index.open(index_dir) as idx:
        want = idx.search(list(model.embed_queries([query])), k=3)[0]
    assert got["results"] == [[h.as_dict() for h in want]]
    assert got["random_weights"] is True
    assert {"encode", "search", "total"} <= set(got["timings_ms"])
    status, _, body = running.request("POST", "/search", {"queries": [query, "a chart of sales"], "k": 2})
    assert status == 200 and len(json.loads(body)["results"]) == 2


def test_embed_queries_returns_float16_rows_with_offsets(running: _Running, model: ColLFM2) -> None:
    queries = ["invoice total", "a much longer query about the charts in this report"]
    status, headers, body = running.request("POST", "/embed/queries", {"queries": queries})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    dim = int(headers["x-collfm2-dim"])
    offsets = [int(x) for x in headers["x-collfm2-offsets"].split(",")]
    rows = np.frombuffer(body, "<f2").reshape(-1, dim)
    assert len(rows) == offsets[-1] and len(offsets) == 3
    for i, q in enumerate(queries):
        (want,) = model.embed_queries([q])
        assert np.array_equal(rows[offsets[i] : offsets[i + 1]], want.astype(np.float16))


def test_batched_queries_give_the_bits_each_gives_alone(model: ColLFM2) -> None:
    """Queries arriving together are encoded together only with others of their token count,
    so a query's vectors never depend on who else was asking."""
    queries = [f"{a} {b}" for a in ("alpha", "beta", "gamma", "delta") for b in ("table", "chart", "page", "total")]
    queries += ["one much longer query about many different things", "x"]
    sizes: list[int] = []
    batcher = QueryBatcher(lambda ids: model.encode_rows({"input_ids": ids, "attention_mask": np.ones_like(ids)}),
                           max_batch=8, window_s=0.2, on_batch=lambda n, s: sizes.append(n))  # fmt: skip
    try:
        ids = [model.processor.process_queries([q])["input_ids"][0] for q in queries]
        futures = [batcher.submit(i) for i in ids]
        got = [f.result(60) for f in futures]
    finally:
        batcher.close()
    assert max(sizes) > 1 and sum(sizes) == len(queries)  # batches did form
    for q, rows in zip(queries, got, strict=True):
        (alone,) = model.embed_queries([q])
        assert np.array_equal(rows, alone), q


def test_the_queue_is_bounded() -> None:
    gate = threading.Event()

    def slow(ids: np.ndarray) -> list[np.ndarray]:
        gate.wait(30)
        return [np.zeros((ids.shape[1], 4), np.float32) for _ in ids]

    batcher = QueryBatcher(slow, max_batch=1, window_s=0, max_waiting=2)
    try:
        first = batcher.submit(np.arange(3))
        deadline = time.monotonic() + 10
        while batcher.depth and time.monotonic() < deadline:  # the first is being encoded
            time.sleep(0.01)
        waiting = [batcher.submit(np.arange(3)) for _ in range(2)]
        with pytest.raises(Overloaded, match="waiting"):
            batcher.submit(np.arange(3))
    finally:
        gate.set()
        batcher.close()
    assert all(f.result(10).shape == (3, 4) for f in [first, *waiting])  # close() still answers the queue


def test_a_full_queue_is_429_with_retry_after(model: ColLFM2, index_dir: Path) -> None:
    service = Service(model, "local", str(index_dir), config=ServiceConfig(max_batch=1, window_ms=0, max_waiting=1))
    gate, entered = threading.Event(), threading.Event()
    real = service.batcher._encode
    service.batcher._encode = lambda ids: (entered.set(), gate.wait(30), real(ids))[2]  # hold the model busy
    r = _Running(service, ServeOptions(log=False))
    try:
        busy = [threading.Thread(target=r.request, args=("POST", "/search", {"query": f"q{i}"})) for i in range(2)]
        busy[0].start()
        assert entered.wait(30)  # the first is being encoded
        busy[1].start()
        deadline = time.monotonic() + 10
        while service.batcher.depth < 1 and time.monotonic() < deadline:  # the second waits
            time.sleep(0.01)
        status, headers, body = r.request("POST", "/search", {"query": "one more"})
        assert status == 429 and headers["retry-after"] == "1"
        _error_line(status, headers, body)
    finally:
        gate.set()
        for t in busy:
            t.join(60)
        r.close()


def test_concurrent_clients_all_get_answers(running: _Running) -> None:
    # 16 connections at once must fit the listen backlog (socketserver's 5 reset one, under load).
    assert running.server.request_queue_size == running.server.options.max_connections >= 16
    results: list[int] = []

    def client(i: int) -> None:
        for j in range(4):
            status, _, _ = running.request("POST", "/search", {"query": f"client {i} asks {j}", "k": 2})
            results.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [200] * 64


BAD_BODIES = [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"query": "a", "queries": ["b"]}', "give"),
    (b'{"queries": []}', "non-empty"),
    (b'{"queries": "text"}', "non-empty list"),
    (json.dumps({"queries": ["q"] * 65}).encode(), "at most 64"),
    (b'{"query": 7}', "must be a string"),
    (b'{"query": "a", "k": "3"}', "whole number"),
    (b'{"query": "a", "k": true}', "whole number"),
    (b'{"query": "a", "k": 0}', "between"),
    (b'{"query": "a", "k": 1000000000}', "between"),
    (b'{"query": "a", "exact": "yes"}', "true or false"),
    (b'{"query": "a", "exact": true, "rerank": 5}', "give one"),
    (b'{"query": "a", "colour": "red"}', "unknown field"),
    (b'{"query": "\\u200b\\u200f "}', "empty query"),
    (json.dumps({"query": "word " * 2000}).encode(), "characters"),
    (b'{"query": "\\ud800 text"}', "lone surrogate"),
]


@pytest.mark.parametrize(("raw", "says"), BAD_BODIES)
def test_a_bad_request_is_one_line_and_changes_nothing(running: _Running, index_dir: Path, raw: bytes,
                                                       says: str) -> None:  # fmt: skip
    before = _files(index_dir)
    status, headers, body = running.request("POST", "/search", raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400, body
    assert says in _error_line(status, headers, body)
    assert _files(index_dir) == before


def test_protocol_abuse_is_one_line_json(running: _Running) -> None:
    def raw_exchange(data: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as s:
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
         + b"\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n{}", 413),
        (b"POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
         + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", 411),
        (b"POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
         + b"\r\nConnection: close\r\n\r\n", 411),
        (b"POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
         + b"\r\nContent-Length: -4\r\nConnection: close\r\n\r\n", 400),
        (b"BREW /search HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 501),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ]  # fmt: skip
    for data, want in cases:
        status, body = raw_exchange(data)
        assert status == want, (data[:60], status, body)
        msg = json.loads(body)["error"]
        assert msg and "\n" not in msg and "<" not in msg
    for method, path, want in (("GET", "/nope", 404), ("GET", "/search", 405), ("DELETE", "/info", 405),
                               ("GET", "/info?" + "&".join(f"a{i}=1" for i in range(101)), 400)):  # fmt: skip
        status, headers, body = running.request(method, path)
        assert status == want
        _error_line(status, headers, body)
    status, headers, body = running.request("HEAD", "/healthz")
    assert status == 200 and body == b""


def test_the_token_is_required_except_for_health_and_the_schema(running: _Running) -> None:
    for token in (None, "wrong", TOKEN + "x", ""):
        status, headers, body = running.request("POST", "/search", {"query": "a"}, token=token)
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert "token" in _error_line(status, headers, body)
    status, _, body = running.request("GET", "/info", headers={"Authorization": f"Basic {TOKEN}"}, token=None)
    assert status == 401
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert running.request("GET", path, token=None)[0] == 200


def test_info_ready_metrics(running: _Running, index_dir: Path) -> None:
    status, _, body = running.request("GET", "/info")
    info = json.loads(body)
    assert status == 200 and info["index"]["pages"] == len(SAMPLE_PAGES) and info["precision"] == "fp32"
    assert info["bundle"]["random_weights"] is True and info["engine"] == "ort-cpu"
    assert running.request("GET", "/readyz")[0] == 200
    running.request("POST", "/search", {"query": "metrics please"})
    status, headers, body = running.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(r'collfm2_requests_total\{method="POST",route="/search",status="200"\} \d+', text)
    assert 'collfm2_request_seconds_bucket{route="/search",le="+Inf"}' in text
    assert re.search(r"^collfm2_pages_indexed 3$", text, re.M) and re.search(r"^collfm2_queue_depth 0$", text, re.M)
    assert re.search(r"^collfm2_queries_encoded_total [1-9]", text, re.M)


def test_the_schema_lists_every_route() -> None:
    spec = openapi("test")
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert listed == set(ROUTES)


def test_connections_over_the_limit_get_503(model: ColLFM2, index_dir: Path) -> None:
    r = _Running(Service(model, "local", str(index_dir)), ServeOptions(max_connections=1, log=False))
    try:
        with socket.create_connection(("127.0.0.1", r.port), timeout=30) as hog:
            hog.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: holds its slot
            assert b"200" in hog.recv(4096).split(b"\r\n")[0]
            status, headers, body = r.request("GET", "/healthz")
            assert status == 503 and headers["retry-after"] == "1"
            _error_line(status, headers, body)
        deadline = time.monotonic() + 10  # the slot comes back when the hog goes
        while (back := r.request("GET", "/healthz")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert back == 200
    finally:
        r.close()


def test_cors_is_off_unless_asked_for(model: ColLFM2, index_dir: Path, running: _Running) -> None:
    status, headers, _ = running.request("OPTIONS", "/search", headers={"Origin": "https://app.example"})
    assert status == 405 and "access-control-allow-origin" not in headers
    r = _Running(Service(model, "local", str(index_dir)), ServeOptions(cors_origin="https://app.example", log=False))
    try:
        status, headers, _ = r.request("OPTIONS", "/search", headers={"Origin": "https://app.example"})
        assert status == 204 and headers["access-control-allow-origin"] == "https://app.example"
        status, headers, _ = r.request("GET", "/healthz", headers={"Origin": "https://evil.example"})
        assert status == 200 and "access-control-allow-origin" not in headers
    finally:
        r.close()


def test_the_command_refuses_other_machines_without_a_token(index_dir: Path) -> None:
    res = _cli("serve", "--index", str(index_dir), "--host", "0.0.0.0", "--port", "0")
    assert res.returncode == 2 and "token" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_the_command_serves_until_sigterm(index_dir: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "runtime", "serve", "--index", str(index_dir), "--port", "0", "--token-file",
           str(token), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "the service never said where it listens"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/search", body=json.dumps({"query": "revenue"}),
                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["results"][0]
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _cli("index", "check", "--index", str(index_dir)).returncode == 0


# -- adding pages: uploads, server-side paths, jobs, removal ----------------------------------


def _multipart(files: list[tuple[str, bytes]], boundary: str = "b0undary-x") -> tuple[bytes, str]:
    head = '--{b}\r\nContent-Disposition: form-data; name="file"; filename="{n}"\r\nContent-Type: x/y\r\n\r\n'
    parts = [head.format(b=boundary, n=name).encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _png(i: int) -> bytes:
    import io

    buf = io.BytesIO()
    render_page(list(SAMPLE_PAGES.values())[i % len(SAMPLE_PAGES)]).save(buf, format="PNG")
    return buf.getvalue()


def _wait_job(r: _Running, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = r.request("GET", f"/jobs/{job_id}")
        assert status == 200, body
        job = json.loads(body)
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def fresh(model: ColLFM2, tiny_bundle: Path, tmp_path: Path):
    """A service over a new one-page index, that takes paths under tmp_path/allowed."""
    page = tmp_path / "first.png"
    page.write_bytes(_png(0))
    idx = tmp_path / "idx"
    assert _cli("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--precision", "fp32",
                str(page)).returncode == 0  # fmt: skip
    (tmp_path / "allowed").mkdir()
    config = ServiceConfig(allow_paths=(str(tmp_path / "allowed"),), commit_pages=1)
    r = _Running(Service(model, "local", str(idx), config=config), ServeOptions(log=False, max_upload_bytes=2 << 20))
    yield r, idx
    r.close()


def test_uploads_become_pages_through_a_job(fresh: tuple[_Running, Path], tmp_path: Path) -> None:
    r, idx = fresh
    before = set(tmp_path.rglob("*")) - set(idx.rglob("*"))
    body, ctype = _multipart([("a.png", _png(1)), ("../../../escape.png", _png(2)), ("same-again.png", _png(1))])
    status, headers, resp = r.request("POST", "/pages", raw=body, headers={"Content-Type": ctype})
    assert status == 202, resp
    job = json.loads(resp)
    assert headers["location"] == f"/jobs/{job['id']}" and job["names"][1] == "escape.png"
    done = _wait_job(r, job["id"])
    assert done["state"] == "done" and done["pages_done"] == 2 and done["pages_failed"] == 0, done  # same bytes: once
    assert set(tmp_path.rglob("*")) - set(idx.rglob("*")) == before  # nothing written outside the index
    stored = sorted(p.name for p in (idx / "uploads").iterdir())
    assert len(stored) == 2 and all(re.fullmatch(r"[0-9a-f]{64}\.png", n) for n in stored)
    status, _, resp = r.request("POST", "/search", {"query": "anything", "k": 10})
    paths = {h["path"] for h in json.loads(resp)["results"][0]}
    assert {str(idx / "uploads" / n) for n in stored} <= paths and len(paths) == 3
    full = json.loads(r.request("GET", f"/jobs/{job['id']}?pages=1")[2])
    assert sorted(p for p, _ in full["committed"]) == sorted(str(idx / "uploads" / n) for n in stored)
    status, _, resp = r.request("DELETE", f"/pages?path={idx / 'uploads' / stored[0]}")
    assert status == 200 and json.loads(resp) == {"removed": 1}
    status, _, resp = r.request("POST", "/search", {"query": "anything", "k": 10})
    assert len(json.loads(resp)["results"][0]) == 2
    assert _cli("index", "check", "--index", str(idx)).returncode == 0


def test_bad_uploads_are_one_line_and_change_nothing(fresh: tuple[_Running, Path]) -> None:
    r, idx = fresh
    before = _files(idx)
    cases = [
        (_multipart([("notes.png", b"just some text, not an image")]), 415, "not an image"),
        (_multipart([("empty.png", b"")]), 400, "empty"),
        ((b"--x\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nhello\r\n--x--\r\n",
          "multipart/form-data; boundary=x"), 400, "no files"),
        ((b"garbage without boundaries", "multipart/form-data"), 400, ""),
        (_multipart([("big.png", b"\x89PNG\r\n\x1a\n" + bytes(3 << 20))]), 413, "at most"),
        # Far more than the socket buffers take: the answer comes before the body is sent, and
        # the client must still get it, not a broken pipe (the server reads and drops the rest).
        (_multipart([("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(40 << 20))]), 413, "at most"),
    ]  # fmt: skip
    for (body, ctype), want, says in cases:
        status, headers, resp = r.request("POST", "/pages", raw=body, headers={"Content-Type": ctype})
        assert status == want, (ctype, resp)
        assert says in _error_line(status, headers, resp)
    assert _files(idx) == before
    for path, want in (("/jobs/0123456789abcdef", 404), ("/jobs/../../etc/passwd", 404), ("/pages?path=", 400)):
        status, headers, resp = r.request("GET" if "jobs" in path else "DELETE", path)
        assert status == want
        _error_line(status, headers, resp)


def test_a_corrupt_upload_is_a_failed_page_in_its_job(fresh: tuple[_Running, Path]) -> None:
    r, idx = fresh
    broken = _png(1)[:300]  # a PNG's header and the start of its data
    body, ctype = _multipart([("broken.png", broken), ("fine.png", _png(2))])
    job = json.loads(r.request("POST", "/pages", raw=body, headers={"Content-Type": ctype})[2])
    done = _wait_job(r, job["id"])
    assert done["state"] == "done" and done["pages_done"] == 1 and done["pages_failed"] == 1, done
    assert len(done["failures"]) == 1 and "\n" not in done["failures"][0]
    assert _cli("index", "check", "--index", str(idx)).returncode == 0


def test_server_side_paths_only_under_allow_path(fresh: tuple[_Running, Path], tmp_path: Path) -> None:
    r, idx = fresh
    allowed = tmp_path / "allowed"
    (allowed / "p.png").write_bytes(_png(2))
    (tmp_path / "secret.png").write_bytes(_png(3))
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    before = _files(idx)
    for path in (str(tmp_path / "secret.png"), str(allowed / ".." / "secret.png"), str(allowed / "link.png"),
                 "/etc/passwd"):  # fmt: skip
        status, headers, resp = r.request("POST", "/pages", {"paths": [path]})
        assert status == 403 and "allow-path" in _error_line(status, headers, resp), path
    for bad in ({"paths": []}, {"paths": [7]}, {"paths": "x"}, {"files": ["x"]}):
        assert r.request("POST", "/pages", bad)[0] == 400
    assert _files(idx) == before
    status, _, resp = r.request("POST", "/pages", {"paths": [str(allowed / "p.png")]})
    assert status == 202
    assert _wait_job(r, json.loads(resp)["id"])["pages_done"] == 1


def test_without_allow_path_no_server_side_paths(running: _Running, tmp_path: Path) -> None:
    (tmp_path / "p.png").write_bytes(_png(1))
    status, headers, resp = running.request("POST", "/pages", {"paths": [str(tmp_path / "p.png")]})
    assert status == 403 and "--allow-path" in _error_line(status, headers, resp)


@pytest.mark.parametrize("run", range(20))
def test_kill_9_during_ingestion_loses_nothing_acknowledged(run: int, tiny_bundle: Path, tmp_path: Path,
                                                            kill_points: list[float]) -> None:  # fmt: skip
    """kill -9 at a random point of an upload and its job; after a restart every page the job
    reported committed is in the index, the job says interrupted (or done), and check is clean."""
    page = tmp_path / "first.png"
    page.write_bytes(_png(0))
    idx = tmp_path / "idx"
    assert _cli("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--precision", "fp32",
                str(page)).returncode == 0  # fmt: skip
    proc, port = _start(idx)
    body, ctype = _multipart([(f"p{i}.png", _png(i) + bytes([i])) for i in range(12)])  # 12 different files
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/pages", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        assert resp.status == 202
        job_id = json.loads(resp.read())["id"]
        time.sleep(kill_points[run])
    finally:
        proc.kill()
        proc.wait(30)
    proc, port = _start(idx)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", f"/jobs/{job_id}?pages=1")
        job = json.loads(conn.getresponse().read())
        assert job["state"] in ("interrupted", "done"), job
        conn.request("POST", "/search", body=json.dumps({"query": "x", "k": 100}))
        stored = {h["path"] for h in json.loads(conn.getresponse().read())["results"][0]}
        assert {p for p, _ in job["committed"]} <= stored  # acknowledged means stored
        assert len(job["committed"]) == job["pages_done"]
        assert len(list((idx / "uploads").iterdir())) == 12  # the 202 came after every file was on disk
    finally:
        proc.terminate()
        proc.wait(60)
    assert _cli("index", "check", "--index", str(idx)).returncode == 0


@pytest.fixture(scope="module")
def kill_points() -> list[float]:
    """Seconds after the upload is acknowledged: from at once to about the job's end (12 tiny pages,
    a commit each: ~0.5 s on a 2-core Xeon), so kills land before, between and after commits."""
    import random

    rng = random.Random(24)
    return [rng.uniform(0, 0.6) for _ in range(20)]


def _start(idx: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--index", str(idx), "--port", "0", "--quiet",
                             "--commit-pages", "1"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    raise AssertionError("the service did not start")


def test_page_images_and_maps_only_for_indexed_pages(fresh: tuple[_Running, Path], tmp_path: Path) -> None:
    r, _ = fresh
    page = str(tmp_path / "first.png")
    status, headers, body = r.request("GET", f"/pages/image?path={page}&page=1&max_side=200")
    assert status == 200 and headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")
    import io

    from PIL import Image

    assert max(Image.open(io.BytesIO(body)).size) <= 200
    status, headers, body = r.request("GET", f"/pages/explain?path={page}&page=1&query=contents&token=1")
    assert status == 200 and body.startswith(b"\x89PNG") and float(headers["x-collfm2-score"]) != 0
    status, _, body = r.request("GET", f"/pages/explain?path={page}&page=1&query=contents&format=json")
    meta = json.loads(body)
    assert status == 200 and len(meta["tokens"]) > 1 and meta["stale"] is False
    (tmp_path / "other.png").write_bytes(_png(2))  # a file the index does not hold is never read
    for path, want in ((f"/pages/image?path={tmp_path / 'other.png'}", 404), ("/pages/image?path=/etc/passwd", 404),
                       (f"/pages/image?path={page}&page=2", 404), (f"/pages/image?path={page}&page=0", 400),
                       (f"/pages/image?path={page}&max_side=99999", 400), ("/pages/image", 400),
                       (f"/pages/explain?path={page}&query=x&token=first", 400),
                       (f"/pages/explain?path={page}&query=x&token=999", 400),
                       (f"/pages/explain?path={page}&query=%E2%80%8B", 400)):  # fmt: skip
        status, headers, body = r.request("GET", path)
        assert status == want, (path, body)
        _error_line(status, headers, body)
    (tmp_path / "first.png").write_bytes(_png(1))  # changed since it was indexed: shown as it is, and said
    status, headers, _ = r.request("GET", f"/pages/image?path={page}")
    assert status == 200 and headers["x-collfm2-stale"] == "true"


def test_job_events_stream_until_the_job_ends(fresh: tuple[_Running, Path]) -> None:
    r, _ = fresh
    body, ctype = _multipart([("a.png", _png(1)), ("b.png", _png(2))])
    job = json.loads(r.request("POST", "/pages", raw=body, headers={"Content-Type": ctype})[2])
    status, headers, stream = r.request("GET", f"/jobs/{job['id']}/events")
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = [json.loads(line[6:]) for line in stream.decode().split("\n\n") if line.startswith("data: ")]
    assert events and events[-1]["state"] == "done" and events[-1]["pages_done"] == 2
    assert r.request("GET", "/jobs/ffffffffffffffff/events")[0] == 404


def test_embed_images_returns_each_images_rows(running: _Running, model: ColLFM2) -> None:
    images = [("a.png", _png(0)), ("b.png", _png(2))]
    body, ctype = _multipart(images)
    status, headers, resp = running.request("POST", "/embed/images", raw=body, headers={"Content-Type": ctype})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    offsets = [int(x) for x in headers["x-collfm2-offsets"].split(",")]
    rows = np.frombuffer(resp, "<f2").reshape(-1, int(headers["x-collfm2-dim"]))
    want = list(model.embed_images([data for _, data in images]))
    assert len(offsets) == 3 and offsets[-1] == len(rows)
    for i, w in enumerate(want):
        assert np.array_equal(rows[offsets[i] : offsets[i + 1]], w.astype(np.float16))
    for files, want_status in (([("x.pdf", b"%PDF-1.4 nothing")], 415), ([("t.png", b"text")], 415),
                               ([("cut.png", _png(1)[:300])], 400),
                               ([(f"{i}.png", _png(0)) for i in range(17)], 400)):  # fmt: skip
        body, ctype = _multipart(files)
        status, hdrs, resp = running.request("POST", "/embed/images", raw=body, headers={"Content-Type": ctype})
        assert status == want_status
        _error_line(status, hdrs, resp)
    status, hdrs, resp = running.request("POST", "/embed/images", {"images": []})
    assert status == 415
