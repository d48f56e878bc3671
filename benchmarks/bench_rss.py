"""Peak RSS of a runtime process against the size of the bundle files it loads.

For each precision, a fresh Python process (torch and onnx blocked from importing, as on a device)
opens the bundle, encodes a query, a 512x512 page and then an A4 page, and reports its resident
memory after each step and the peak so far (``VmHWM``), next to the bytes of that precision's
files (graphs + embedding table). The issue's target is peak RSS <= 1.3x the files.

RSS counts file pages a process maps, which the kernel can drop and read again: OpenVINO maps
its compiled graphs from the compile cache. ``peak_anon_mb`` is the memory that cannot be dropped.
``--limit-mb N`` (root, a memory cgroup) runs each child again inside a cgroup of N MB after
dropping the page cache, so the file pages it maps are charged to it, and records whether it
finished, in how long, and with how many pages read back from disk (major faults).

    python benchmarks/bench_rss.py --bundle DIR [--precisions fp32,fp16,int8] [--engine ov-cpu]
        [--limit-mb 2400] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
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


def memory_cgroup(limit_mb: int) -> Path:
    """A fresh memory cgroup limited to ``limit_mb`` (cgroup v1's memory hierarchy, else v2's)."""
    v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
    controllers = (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").is_file() else []
    if (v1 / "memory.limit_in_bytes").is_file():
        group, knob = v1 / f"collfm2-bench-{os.getpid()}", "memory.limit_in_bytes"
    elif "memory" in controllers:
        group, knob = v2 / f"collfm2-bench-{os.getpid()}", "memory.max"
    else:
        raise SystemExit("bench_rss: --limit-mb needs a memory cgroup (cgroup v1 memory or v2 with memory)")
    try:
        group.mkdir(exist_ok=True)
        (group / knob).write_text(str(limit_mb * 2**20))
    except OSError as exc:
        raise SystemExit(f"bench_rss: --limit-mb needs root to make a memory cgroup ({exc})") from None
    return group


def run_limited(code: str, limit_mb: int) -> dict[str, Any]:
    """``code`` in a child inside a ``limit_mb`` cgroup, after dropping the page cache."""
    group = memory_cgroup(limit_mb)
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_majflt
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                             preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))  # fmt: skip
    finally:
        elapsed = time.perf_counter() - t0
        group.rmdir()
    return {"limit_mb": limit_mb, "finished": res.returncode == 0, "returncode": res.returncode,
            "seconds": elapsed, "major_faults": resource.getrusage(resource.RUSAGE_CHILDREN).ru_majflt - before,
            "steps": json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None}  # fmt: skip


def measure(bundle: Path, precision: str, threads: int, engine: str = "ort-cpu",
            limit_mb: int | None = None) -> dict[str, Any]:  # fmt: skip
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
    out = {"files_mb": size_mb, "peak_rss_mb": peak, "ratio": peak / size_mb, "steps": steps,
           "peak_rss_mb_query_and_512": peak_512, "ratio_query_and_512": peak_512 / size_mb,
           "peak_anon_mb": max(s["RssAnon"] for s in steps.values())}  # fmt: skip
    if limit_mb:
        out["limited"] = run_limited(code, limit_mb)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core)")
    ap.add_argument("--engine", default="ort-cpu", help="ort-cpu (default) or ov-cpu (precisions fp32,bf16,int8)")
    ap.add_argument("--limit-mb", type=int, default=None,
                    help="also run each inside a memory cgroup of this many MB, page cache dropped (root)")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/rss.json"))
    a = ap.parse_args(argv)
    bundle = Path(a.bundle)
    # ONNX Runtime's rows keep their plain precision names (the file's earlier schema).
    prefix = "" if a.engine == "ort-cpu" else f"{a.engine}-"
    result = {prefix + p: measure(bundle, p, a.threads, a.engine, a.limit_mb) for p in a.precisions.split(",")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| precision | files MB | RSS after load | peak: query + 512² page | peak: + A4 page | RSS at end "
          "| peak anon | in a memory limit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for p, r in result.items():
        s, lim = r["steps"], r.get("limited")
        limited = "" if not lim else (
            f"{lim['limit_mb']} MB: {'finished' if lim['finished'] else 'killed'} in {lim['seconds']:.1f} s, "
            f"{lim['major_faults']} major faults")  # fmt: skip
        print(f"| {p} | {r['files_mb']:.0f} | {s['loaded']['VmRSS']:.0f} | {r['peak_rss_mb_query_and_512']:.0f} "
              f"({r['ratio_query_and_512']:.2f}x) | {r['peak_rss_mb']:.0f} ({r['ratio']:.2f}x) | "
              f"{s['page_a4']['VmRSS']:.0f} | {r['peak_anon_mb']:.0f} | {limited} |")  # fmt: skip
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
