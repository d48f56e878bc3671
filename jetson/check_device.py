"""One command on a Jetson: build the engines, validate them, benchmark a page, a query and a
search with board power, and write ``benchmarks/results/<device>-<jetpack>.json``.

    python3 jetson/check_device.py --bundle BUNDLE [--profile orin-nano] [--precision fp16]
        [--runs 10] [--pages 10000] [--out benchmarks/results] [--skip-build]

Steps (each printed as it runs):

1. what the board is: ``/proc/device-tree/model``, the L4T release (``/etc/nv_tegra_release``)
   and the JetPack it belongs to, TensorRT, cuda-python, the GPU's compute capability;
2. ``python3 -m export --target trt --bundle BUNDLE --profile P --precision X --validate``: the
   engines of the installed TensorRT, on its build path, compared with ONNX Runtime fp32 on the
   validation grid (a failing engine stops here, exit 1);
3. with ``tegrastats`` sampled around each stage (``jetson/power_log.py``): p50/p95 of a 512x512
   page end to end, a 20-token query, and a search over ``--pages`` synthetic pages of 266 rows;
4. the JSON (and a table on stdout). The board's clocks are whatever they are: run
   ``sudo nvpmodel -m 0 && sudo jetson_clocks`` first for the maximum, and say so beside numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jetson"))

from power_log import Sampler  # noqa: E402

# L4T release -> JetPack (NVIDIA's JetPack archive); the longest prefix wins. An L4T not listed is
# named as such in the result file instead of guessed.
L4T_TO_JETPACK = {"35.4": "5.1.2", "35.5": "5.1.3", "35.6": "5.1.4", "36.3": "6.0", "36.4.0": "6.1",
                  "36.4.3": "6.2", "36.4.4": "6.2.1", "38.2": "7.0"}  # fmt: skip


def parse_l4t(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``"36.4.3"``."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetpack_for(l4t: str | None) -> str | None:
    if not l4t:
        return None
    for key in sorted(L4T_TO_JETPACK, key=len, reverse=True):
        if l4t == key or l4t.startswith(key + "."):
            return L4T_TO_JETPACK[key]
    return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_info() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text(errors="replace").strip("\x00 \n")
        except OSError:
            return ""

    model = read("/proc/device-tree/model") or platform.node()
    l4t = parse_l4t(read("/etc/nv_tegra_release"))
    info: dict[str, Any] = {"model": model, "l4t": l4t, "jetpack": jetpack_for(l4t), "machine": platform.machine()}
    try:
        import tensorrt

        info["tensorrt"] = str(tensorrt.__version__)
    except ImportError:
        info["tensorrt"] = None
    try:
        from runtime.encoder.trt import compute_capability, cuda_runtime

        rt = cuda_runtime()
        info["cuda_python"] = getattr(sys.modules.get("cuda.bindings"), "__version__", None)
        info["compute_capability"] = compute_capability(rt)
    except Exception as exc:  # reported, not fatal: the build step says what is missing
        info["cuda_error"] = str(exc)
    return info


def _stats(times: list[float]) -> dict[str, float]:
    arr = np.asarray(times) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)), "runs": len(times)}


def _timed(fn: Any, runs: int) -> tuple[dict[str, float], dict[str, Any]]:
    fn()  # warm-up: first-call allocations and engine context set-up
    times = []
    with Sampler() as sampler:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return _stats(times), sampler.summary()


def benchmark(bundle: Path, runs: int, pages: int) -> dict[str, Any]:
    """Page, query and search timings on the trt backend, each with its power summary."""
    from export.grid import synthetic_page
    from runtime import ColLFM2, ColLFM2Processor
    from runtime.stores.local.index import Index, PageRecord, bundle_identity

    model = ColLFM2.from_pretrained(bundle, backend="trt")
    proc = ColLFM2Processor.from_pretrained(bundle)
    page = proc.process_images([synthetic_page(512, 512, seed=9)])
    query = proc.process_queries(["what is the total amount due on the invoice this quarter"])
    out: dict[str, Any] = {"engine_set": model.precision}
    for name, batch in (("page_512", page), ("query", query)):
        stats, power = _timed(lambda b=batch: model(**b), runs)
        out[name] = {**stats, "power": power}
    (q,) = model.embed_queries(["what is the total amount due on the invoice this quarter"])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        index = Index.create(Path(tmp) / "idx", bundle_identity(model.bundle, model.precision))
        with index.writer():
            for start in range(0, pages, 500):
                recs = []
                for i in range(start, min(start + 500, pages)):
                    e = rng.standard_normal((266, model.dim)).astype(np.float32)
                    e /= np.linalg.norm(e, axis=1, keepdims=True)
                    recs.append(PageRecord(f"/bench/{i}.png", 1, f"h{i}", 0, e))
                index.add_batch(recs)
        stats, power = _timed(lambda: index.search([q], k=10), runs)
        out["search"] = {**stats, "pages": pages, "power": power}
        index.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jetson/check_device.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--profile", default="orin-nano")
    ap.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--pages", type=int, default=10000, help="synthetic pages in the search benchmark")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--skip-build", action="store_true", help="use the engines already in the bundle")
    a = ap.parse_args(argv)
    info = device_info()
    print("device:", json.dumps(info))
    build = None
    if not a.skip_build:
        cache = str(a.bundle / "trt" / "timing.cache")
        cmd = [sys.executable, "-m", "export", "--target", "trt", "--bundle", str(a.bundle), "--profile", a.profile,
               "--precision", a.precision, "--validate", "--timing-cache", cache]  # fmt: skip
        print("build + validate:", " ".join(cmd), flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=ROOT)
        build = {"command": cmd, "returncode": rc, "seconds": round(time.time() - t0, 1)}
        if rc != 0:
            print(f"error: the engine build or its validation failed (exit {rc}); see above", file=sys.stderr)
            return rc
    engines_json = a.bundle / "trt" / f"{a.profile}-{a.precision}" / "engines.json"
    engines = json.loads(engines_json.read_text()) if engines_json.is_file() else None
    print(f"benchmark: {a.runs} runs each; search over {a.pages} synthetic pages", flush=True)
    result = {"schema": "collfm2-edge-device/1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": info, "build": build, "engines": engines,
              "benchmark": benchmark(a.bundle, a.runs, a.pages)}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    name = f"{slug(info['model'])}-{('jp' + info['jetpack']) if info.get('jetpack') else 'l4t-' + str(info.get('l4t'))}"
    path = a.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    bench = result["benchmark"]
    print(f"{'stage':<10} {'p50 ms':>9} {'p95 ms':>9} {'mean W':>8}")
    for stage in ("page_512", "query", "search"):
        r = bench[stage]
        watts = r["power"].get("mean_input_w")
        print(f"{stage:<10} {r['p50_ms']:9.1f} {r['p95_ms']:9.1f} {watts if watts is None else f'{watts:8.2f}'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
