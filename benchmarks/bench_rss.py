"""Peak RSS of a runtime process against the size of the bundle files it loads.

For each precision, a fresh Python process (torch and onnx blocked from importing, as on a device)
opens the bundle, encodes a query, a 512x512 page and then an A4 page, and reports its resident
memory after each step and the peak so far (``VmHWM``), next to the bytes of that precision's
files (graphs + embedding table). The issue's target is peak RSS <= 1.3x the files.

    python benchmarks/bench_rss.py --bundle DIR [--precisions fp32,fp16,int8] [--engine ov-cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child. Blocking torch proves the figure is the runtime's own, not a leftover import.
CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "transformers"):
            raise ImportError(f"{{name}} is blocked in the RSS benchmark")
        return None
sys.meta_path.insert(0, _Block())

def rss():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return out

import numpy as np
steps = {{"start": rss()}}
from runtime import ColLFM2, ColLFM2Processor
steps["imported"] = rss()
model = ColLFM2.from_pretrained({bundle!r}, precision={precision!r}, threads={threads}, backend={engine!r})
proc = ColLFM2Processor.from_pretrained({bundle!r})
steps["loaded"] = rss()
rng = np.random.default_rng(0)
model(**proc.process_queries(["what is the total amount due on the invoice from last march"]))
steps["query"] = rss()
model(**proc.process_images([rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)]))
steps["page_512"] = rss()
model(**proc.process_images([rng.integers(0, 256, (1754, 1240, 3), dtype=np.uint8)]))
steps["page_a4"] = rss()
print(json.dumps(steps))
"""


def files_of(manifest: dict[str, Any], precision: str, engine: str = "ort-cpu") -> list[str]:
    """The bundle files ``engine`` loads for ``precision`` (graphs and the embedding table)."""
    if engine.startswith("ov-"):
        from runtime.encoder.ov import PRECISIONS

        return PRECISIONS[precision].bundle_files(manifest)
    entry = manifest["precisions"][precision]
    return [g["file"] for g in entry["graphs"].values()] + [entry["embeddings"]["file"]]


def measure(bundle: Path, precision: str, threads: int, engine: str = "ort-cpu") -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = files_of(manifest, precision, engine)
    size_mb = sum((bundle / f).stat().st_size for f in files) / 2**20
    code = CHILD.format(root=str(ROOT), bundle=str(bundle), precision=precision, threads=threads, engine=engine)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"bench_rss: the {engine} {precision} child failed: {res.stderr.strip().splitlines()[-1]}")
    steps = json.loads(res.stdout.strip().splitlines()[-1])
    # VmHWM only grows, so its value after a step is the peak of everything up to that step.
    peak_512, peak = steps["page_512"]["VmHWM"], steps["page_a4"]["VmHWM"]
    return {"files_mb": size_mb, "peak_rss_mb": peak, "ratio": peak / size_mb, "steps": steps,
            "peak_rss_mb_query_and_512": peak_512, "ratio_query_and_512": peak_512 / size_mb}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core)")
    ap.add_argument("--engine", default="ort-cpu", help="ort-cpu (default) or ov-cpu (precisions fp32,bf16,int8)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/rss.json"))
    a = ap.parse_args(argv)
    bundle = Path(a.bundle)
    # ONNX Runtime's rows keep their plain precision names (the file's earlier schema).
    prefix = "" if a.engine == "ort-cpu" else f"{a.engine}-"
    result = {prefix + p: measure(bundle, p, a.threads, a.engine) for p in a.precisions.split(",")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| precision | files MB | RSS after load | peak: query + 512² page | peak: + A4 page | RSS at end |")
    print("|---|---|---|---|---|---|")
    for p, r in result.items():
        s = r["steps"]
        print(f"| {p} | {r['files_mb']:.0f} | {s['loaded']['VmRSS']:.0f} | {r['peak_rss_mb_query_and_512']:.0f} "
              f"({r['ratio_query_and_512']:.2f}x) | {r['peak_rss_mb']:.0f} ({r['ratio']:.2f}x) | "
              f"{s['page_a4']['VmRSS']:.0f} |")  # fmt: skip
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
