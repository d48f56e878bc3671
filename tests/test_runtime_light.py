"""The runtime stays light: it imports and preprocesses with torch (and transformers) unavailable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
for name in ("torch", "transformers", "torchvision", "safetensors", "onnx"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
import runtime
from runtime import ColLFM2Processor, score
proc = ColLFM2Processor.from_pretrained(sys.argv[1])
out = proc.process_images([np.zeros((700, 900, 3), np.uint8)])
q = proc.process_queries(["hello"])
assert out["pixel_values"].shape[1:] == (1024, 768)
assert score([np.ones((2, 128), np.float32)], [np.ones((3, 128), np.float32)])[0, 0] == 256
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m] is not None)
assert not heavy, heavy
print("ok")
"""


def test_runtime_imports_and_runs_without_torch(tiny_ckpt: Path) -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_ckpt)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


ENCODE = """
import sys
for name in ("torch", "transformers", "torchvision", "safetensors", "onnx"):
    sys.modules[name] = None
import numpy as np
from runtime import ColLFM2, ColLFM2Processor
import runtime.__main__, runtime.cli_index, runtime.index, runtime.ingest, runtime.qdrant_store  # every module
import runtime.trt_manifest, runtime.trt_runner
proc = ColLFM2Processor.from_pretrained(sys.argv[1])
for precision in ("fp32", "fp16", "int8", "int8-qdq"):
    model = ColLFM2.from_pretrained(sys.argv[1], precision=precision)
    pages = model(**proc.process_images([np.full((600, 500, 3), 200, np.uint8)]))
    queries = model(**proc.process_queries(["hello world", "a"]))
    assert pages.shape[-1] == queries.shape[-1] == 128 and np.isfinite(pages).all()
loaded = [m for m in sys.modules if sys.modules[m] is not None]
heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "transformers", "onnx"))
assert not heavy, heavy
print("ok")
"""


def test_runtime_encodes_without_torch(tiny_bundle: Path) -> None:
    """Loading a bundle and encoding pages and queries needs neither torch nor onnx."""
    res = subprocess.run([sys.executable, "-c", ENCODE, str(tiny_bundle)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
