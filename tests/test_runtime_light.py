"""The runtime stays light: it imports, preprocesses and encodes with torch (and transformers) unavailable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK = """
import sys
for name in ("torch", "transformers", "torchvision", "safetensors", "onnx"):
    sys.modules[name] = None  # any import of these now raises ImportError
"""
CHECK = """
loaded = [m for m in sys.modules if sys.modules[m] is not None]
heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "transformers", "onnx"))
assert not heavy, heavy
print("ok")
"""


def _run_blocked(body: str, arg: Path, timeout: int) -> None:
    """Run ``body`` with the heavy packages blocked, then check none of them got loaded."""
    script = BLOCK + body + CHECK
    res = subprocess.run([sys.executable, "-c", script, str(arg)], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


PREPROCESS = """
import numpy as np
import runtime
from runtime import ColLFM2Processor, score
proc = ColLFM2Processor.from_pretrained(sys.argv[1])
out = proc.process_images([np.zeros((700, 900, 3), np.uint8)])
q = proc.process_queries(["hello"])
assert out["pixel_values"].shape[1:] == (1024, 768)
assert score([np.ones((2, 128), np.float32)], [np.ones((3, 128), np.float32)])[0, 0] == 256
"""


def test_runtime_imports_and_runs_without_torch(tiny_ckpt: Path) -> None:
    _run_blocked(PREPROCESS, tiny_ckpt, timeout=120)


ENCODE = """
import numpy as np
from runtime import ColLFM2, ColLFM2Processor
import importlib, pkgutil, runtime
# Every module of the package, found by walking it: a new module is covered without being listed.
modules = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
for name in modules:
    importlib.import_module(name)
assert len(modules) > 30 and "runtime.stores.local.index" in modules, modules
proc = ColLFM2Processor.from_pretrained(sys.argv[1])
for precision in ("fp32", "fp16", "int8", "int8-qdq"):
    model = ColLFM2.from_pretrained(sys.argv[1], precision=precision)
    pages = model(**proc.process_images([np.full((600, 500, 3), 200, np.uint8)]))
    queries = model(**proc.process_queries(["hello world", "a"]))
    assert pages.shape[-1] == queries.shape[-1] == 128 and np.isfinite(pages).all()
"""


def test_runtime_encodes_without_torch(tiny_bundle: Path) -> None:
    """Loading a bundle and encoding pages and queries needs neither torch nor onnx."""
    _run_blocked(ENCODE, tiny_bundle, timeout=300)
