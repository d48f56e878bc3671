"""The search service against the command line and the library: warm HTTP search, cold CLI search
and in-process encode + search on the same index, then 1..16 concurrent clients with and without
dynamic batching. Loopback only; bounded in requests.

    python benchmarks/bench_serve.py --bundle BUNDLE [--precision P] [--clients 1 4 16] [--requests 20]

Each service runs as its own process (``python -m runtime serve --port 0``), as users run it, so
the clients' threads never share its interpreter. Last, ``--ingest-pages`` synthetic pages are
uploaded as one job while one client keeps searching: pages per second, and search latency
during ingestion. Writes ``results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import timeit  # noqa: E402

WORDS = ("revenue", "invoice", "chart", "table", "total", "summary", "quarter", "contract", "figure", "budget")


def queries(n: int) -> list[str]:
    """Distinct queries of a few words, most of one token count (what dynamic batching can stack)."""
    return [f"the {WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} of page {i % 7}" for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


class Served:
    """``python -m runtime serve`` on a free loopback port, until closed."""

    def __init__(self, index: Path, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "runtime", "serve", "--index", str(index), "--port", "0", "--quiet", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.port = 0
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise SystemExit(f"the service did not start: {self.proc.stderr.read()[-2000:]}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def metrics(self) -> str:
        conn = self.connect()
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def _search(conn: http.client.HTTPConnection, q: str, k: int = 10) -> dict[str, Any]:
    conn.request("POST", "/search", body=json.dumps({"query": q, "k": k}), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {body[:200]!r}")
    return json.loads(body)


def warm_http(served: Served, qs: list[str]) -> dict[str, Any]:
    conn = served.connect()
    _search(conn, "warm up")
    times, server_ms = [], []
    for q in qs:
        t = time.perf_counter()
        out = _search(conn, q)
        times.append(time.perf_counter() - t)
        server_ms.append(out["timings_ms"]["total"])
    conn.close()
    return {"p50_ms": statistics.median(times) * 1e3, "p95_ms": _pct(times, 0.95) * 1e3,
            "server_p50_ms": statistics.median(server_ms), "requests": len(qs)}  # fmt: skip


def concurrent(served: Served, clients: int, per_client: int) -> dict[str, Any]:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    qs = queries(clients * per_client)
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = served.connect()
        _search(conn, f"warm {c}")
        start.wait()
        for j in range(per_client):
            t = time.perf_counter()
            try:
                _search(conn, qs[c * per_client + j])
            except Exception as exc:  # counted, not raised: the run goes on
                with lock:
                    errors.append(str(exc)[:200])
                continue
            with lock:
                lat.append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    text = served.metrics()
    count = re.search(r"^collfm2_query_batch_size_count (\d+)", text, re.M)
    total = re.search(r"^collfm2_query_batch_size_sum (\S+)", text, re.M)
    mean_batch = float(total.group(1)) / max(1, int(count.group(1))) if count and total else None
    return {"clients": clients, "requests": clients * per_client, "errors": len(errors), "error_samples": errors[:3],
            "qps": len(lat) / wall, "p50_ms": statistics.median(lat) * 1e3 if lat else None,
            "p99_ms": _pct(lat, 0.99) * 1e3 if lat else None, "mean_batch": mean_batch}  # fmt: skip


def ingest_while_searching(served: Served, pages: int, qs: list[str]) -> dict[str, Any]:
    """Upload ``pages`` new pages as one job; one client searches until the job ends."""
    import io

    from export.validate import synthetic_page

    boundary = "collfm2-bench"
    parts = []
    for i in range(pages):
        buf = io.BytesIO()
        synthetic_page(700, 500, seed=10_000 + i).save(buf, format="PNG")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + buf.getvalue() + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    conn = served.connect()
    conn.request("POST", "/pages", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    resp = conn.getresponse()
    job = json.loads(resp.read())
    if resp.status != 202:
        raise SystemExit(f"upload refused: {job}")
    search = served.connect()
    lat: list[float] = []
    i = 0
    while True:
        conn.request("GET", f"/jobs/{job['id']}")
        job = json.loads(conn.getresponse().read())
        if job["state"] not in ("queued", "running"):
            break
        t = time.perf_counter()
        _search(search, qs[i % len(qs)])
        lat.append(time.perf_counter() - t)
        i += 1
    conn.close()
    search.close()
    secs = job["finished"] - job["started"]
    return {"pages": job["pages_done"], "failed": job["pages_failed"], "state": job["state"], "seconds": secs,
            "pages_per_s": job["pages_done"] / secs if secs > 0 else None, "searches": len(lat),
            "search_p50_ms": statistics.median(lat) * 1e3 if lat else None,
            "search_p95_ms": _pct(lat, 0.95) * 1e3 if lat else None}  # fmt: skip


def cold_cli(index: Path, q: str, runs: int, engine: str) -> dict[str, float]:
    def once() -> None:
        res = subprocess.run([sys.executable, "-m", "runtime", "search", "--index", str(index), "--engine", engine,
                              "--json", q], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"search failed: {res.stderr[-1000:]}")

    return timeit(once, warmup=1, runs=runs)


def in_process(index: Path, qs: list[str], engine: str) -> dict[str, float]:
    from runtime import ColLFM2
    from runtime.stores.local.index import Index

    with Index.open(index) as idx:
        model = ColLFM2.from_pretrained(idx.meta["bundle_path"], precision=idx.meta["precision"], backend=engine)
        it = iter(qs * 2)
        return timeit(lambda: idx.search(list(model.embed_queries([next(it)])), k=10), warmup=1, runs=len(qs))


def build_index(bundle: Path, precision: str | None, pages: int, root: Path, engine: str) -> Path:
    from export.demo import SAMPLE_PAGES, render_page
    from export.validate import synthetic_page

    folder = root / "pages"
    folder.mkdir()
    for name, lines in SAMPLE_PAGES.items():
        render_page(lines).save(folder / name)
    for i in range(max(0, pages - len(SAMPLE_PAGES))):
        synthetic_page(700, 500, seed=i).save(folder / f"synthetic-{i:03d}.png")
    index = root / "idx"
    cmd = [sys.executable, "-m", "runtime", "index", "add", "--index", str(index), "--bundle", str(bundle),
           "--no-progress", "--engine", engine, str(folder)]  # fmt: skip
    cmd += ["--precision", precision] if precision else []
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"index add failed: {res.stderr[-2000:]}")
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--precision", help="default: the machine's default for the bundle")
    ap.add_argument("--engine", help="default: the machine's default (runtime.encoder.defaults)")
    ap.add_argument("--pages", type=int, default=8, help="pages in the index (sample pages, then synthetic ones)")
    ap.add_argument("--requests", type=int, default=20, help="sequential warm requests, and per client")
    ap.add_argument("--cold-runs", type=int, default=3, help="CLI searches timed")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--ingest-pages", type=int, default=8, help="pages uploaded as one job while searching")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="serve")
    a = ap.parse_args(argv)
    from runtime.cpu import cpu_class, cpu_name
    from runtime.encoder.defaults import engine_for

    engine = a.engine or engine_for(a.precision)

    with tempfile.TemporaryDirectory(prefix="collfm2-serve-") as tmp:
        index = build_index(a.bundle, a.precision, a.pages, Path(tmp), engine)
        meta = json.loads(subprocess.run([sys.executable, "-m", "runtime", "index", "info", "--index", str(index),
                                          "--json"], capture_output=True, text=True, cwd=ROOT).stdout)  # fmt: skip
        qs = queries(a.requests)
        print(f"index: {meta['pages']} pages, {meta['precision']}, engine {engine}", file=sys.stderr)
        cold = cold_cli(index, qs[0], a.cold_runs, engine)
        local = in_process(index, qs, engine)
        served = Served(index, ["--engine", engine])
        try:
            warm = warm_http(served, qs)
            batched = [concurrent(served, c, a.requests) for c in a.clients]
            ingest = ingest_while_searching(served, a.ingest_pages, qs) if a.ingest_pages else None
        finally:
            served.close()
        served = Served(index, ["--engine", engine, "--max-batch", "1"])
        try:
            single = [concurrent(served, c, a.requests) for c in a.clients]
        finally:
            served.close()
    result = {
        "schema": "collfm2-edge-serve/1",
        "machine": {
            "cpu": cpu_name(),
            "cpu_class": cpu_class(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "bundle": str(a.bundle),
        "precision": meta["precision"],
        "engine": engine,
        "pages": meta["pages"],
        "random_weights": meta.get("bundle_random_weights") == "true",
        "cold_cli": cold,
        "in_process": local,
        "warm_http": warm,
        "warm_http_vs_in_process": warm["p50_ms"] / local["p50_ms"],
        "cold_cli_vs_warm_http": cold["p50_ms"] / warm["p50_ms"],
        "concurrent": {"batched": batched, "one_query_per_call": single},
        "ingest": ingest,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (a.out / f"{a.name}.md").write_text(table)
    print(table)
    return 0


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Search service ({m['cpu']}, {m['cores']} cores, {m['cpu_class']})",
        "",
        f"{r['pages']} pages, {r.get('engine', 'ort-cpu')} {r['precision']}, "
        f"{'random' if r['random_weights'] else 'real'} weights; "
        "benchmarks/bench_serve.py, ratios within one run.",
        "",
        "| search | p50 ms | p95 ms |",
        "|---|---|---|",
        f"| CLI, cold (a process per search) | {r['cold_cli']['p50_ms']:.0f} | {r['cold_cli']['p95_ms']:.0f} |",
        f"| in-process encode + search | {r['in_process']['p50_ms']:.1f} | {r['in_process']['p95_ms']:.1f} |",
        f"| HTTP, warm | {r['warm_http']['p50_ms']:.1f} | {r['warm_http']['p95_ms']:.1f} |",
        "",
        f"Warm HTTP / in-process: {r['warm_http_vs_in_process']:.2f}x; cold CLI / warm HTTP: "
        f"{r['cold_cli_vs_warm_http']:.0f}x.",
        "",
        "| clients | batching | requests | errors | queries/s | p50 ms | p99 ms | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in (("dynamic", r["concurrent"]["batched"]), ("off", r["concurrent"]["one_query_per_call"])):
        for c in rows:
            batch = "-" if c["mean_batch"] is None else f"{c['mean_batch']:.1f}"
            lines.append(f"| {c['clients']} | {label} | {c['requests']} | {c['errors']} | {c['qps']:.1f} | "
                         f"{c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {batch} |")  # fmt: skip
    g = r.get("ingest")
    if g:
        p50 = "-" if g["search_p50_ms"] is None else f"{g['search_p50_ms']:.0f}"
        p95 = "-" if g["search_p95_ms"] is None else f"{g['search_p95_ms']:.0f}"
        lines += ["", f"Ingest: {g['pages']} pages uploaded as one job in {g['seconds']:.1f} s "
                  f"({g['pages_per_s']:.2f} pages/s); {g['searches']} searches meanwhile, p50 {p50} ms, p95 {p95} ms "
                  f"(idle warm p95 {r['warm_http']['p95_ms']:.0f} ms)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
