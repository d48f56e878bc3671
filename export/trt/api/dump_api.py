"""Regenerate the API surface files beside this script from official bindings wheels.

    python -m export.trt.api.dump_api WHEEL [WHEEL ...] [--pathfinder WHEEL]

For a TensorRT bindings wheel (``tensorrt-bindings``, ``tensorrt-cu12-bindings``; about 1 MB, real
pybind11 bindings) it writes ``tensorrt-<version>.json``: every class with its public members,
every enum with its values, every function. The bindings link against libnvinfer, which PyPI
does not carry (its wheels download from NVIDIA's index); the module only needs a handful of
factory symbols to import, so this builds stub libraries exporting those as ``return NULL`` (gcc)
and imports the real module against them in a subprocess. Nothing from TensorRT is run.

For a ``cuda-python`` / ``cuda-bindings`` wheel it writes ``cuda-python-<version>.json``: which
import paths exist (``cuda.bindings.runtime``/``driver``, the 12.x-only ``cuda.cudart``/``cuda``)
and the names the runner uses. cuda-bindings >= 12.9 needs ``cuda-pathfinder``
(``--pathfinder WHEEL``). Imports work without a GPU; calls return cudaErrorInsufficientDriver.

The tests build strict fakes of each release from these files (``tests/fake_trt.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).parent

# Run inside the subprocess: walk the imported module into plain JSON.
_WALK = r"""
import inspect, json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings.tensorrt as trt
out = {}
for name in sorted(n for n in dir(trt) if not n.startswith("_")):
    obj = getattr(trt, name)
    if hasattr(obj, "__members__") and isinstance(obj, type):
        out[name] = {"kind": "enum", "members": sorted(obj.__members__)}
    elif isinstance(obj, type):
        out[name] = {"kind": "class", "members": sorted(n for n in dir(obj) if not n.startswith("_"))}
    elif callable(obj):
        out[name] = {"kind": "function"}
    else:
        out[name] = {"kind": "value", "type": type(obj).__name__}
print(json.dumps(out))
"""

_CUDA_WALK = r"""
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
sys.path[:0] = sys.argv[1:]
import cuda
for p in sys.argv[1:]:
    cuda.__path__.append(p + "/cuda")
out = {"modules": {}}
for mod in ("cuda.bindings.runtime", "cuda.bindings.driver", "cuda.cudart", "cuda.cuda"):
    try:
        m = importlib.import_module(mod)
    except ImportError:
        out["modules"][mod] = None
        continue
    names = sorted(n for n in dir(m) if not n.startswith("_"))
    # The enums the runner uses, cut to the members it reads (the full lists run to thousands).
    wanted = {"cudaMemcpyKind": "", "cudaDeviceAttr": "ComputeCapability", "cudaError_t": "cudaSuccess",
              "CUresult": "CUDA_SUCCESS", "CUdevice_attribute": "COMPUTE_CAPABILITY"}
    enums = {n: sorted(v for v in getattr(m, n).__members__ if sub in v) for n, sub in wanted.items()
             if n in names and hasattr(getattr(m, n), "__members__")}
    out["modules"][mod] = {"names": names, "enums": enums}
print(json.dumps(out))
"""


def _version(wheel: Path) -> tuple[str, str]:
    """(distribution, version) from a wheel file name."""
    dist, version = wheel.name.split("-")[:2]
    return dist.replace("_", "-"), version


def _stub_libs(so: Path, where: Path) -> None:
    needed = re.findall(r"\[(libnv[^\]]+)\]", subprocess.run(["readelf", "-d", str(so)], capture_output=True,
                                                              text=True, check=True).stdout)  # fmt: skip
    syms = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True).stdout
    wanted = sorted({line.split()[-1] for line in syms.splitlines()
                     if re.search(r"\bU ((create|get|init)\w+|_ZN\d+nv\w+)$", line)})  # fmt: skip
    src = where / "stub.c"
    src.write_text("".join(f"void* {s}(void) {{ return 0; }}\n" for s in wanted))
    for lib in needed:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(where / lib), f"-Wl,-soname,{lib}", str(src)], check=True)


def dump_tensorrt(wheel: Path) -> dict:
    _, version = _version(wheel)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        zipfile.ZipFile(wheel).extractall(root / "pkg")
        (root / "stubs").mkdir()
        _stub_libs(root / "pkg" / "tensorrt_bindings" / "tensorrt.so", root / "stubs")
        res = subprocess.run([sys.executable, "-c", _WALK, str(root / "pkg")], capture_output=True, text=True,
                             env={"LD_LIBRARY_PATH": str(root / "stubs"), "PATH": "/usr/bin:/bin"})  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"{wheel.name}: could not import the bindings: {res.stderr[-2000:]}")
    return {"release": version, "source": wheel.name, "api": json.loads(res.stdout)}


def dump_cuda(wheel: Path, pathfinder: Path | None) -> dict:
    _, version = _version(wheel)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / "pkg")]
        zipfile.ZipFile(wheel).extractall(paths[0])
        if pathfinder:
            paths.append(str(Path(tmp) / "pf"))
            zipfile.ZipFile(pathfinder).extractall(paths[1])
        res = subprocess.run([sys.executable, "-c", _CUDA_WALK, *paths], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{wheel.name}: could not import: {res.stderr[-2000:]}")
    return {"release": version, "source": wheel.name, **json.loads(res.stdout)}


def _compact(data: dict) -> str:
    """JSON with one line per class, enum or module: small files and readable diffs between releases."""
    lines = ["{"]
    items = sorted(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, dict) and key in ("api", "modules"):
            lines.append(f"  {json.dumps(key)}: {{")
            inner = sorted(value.items())
            for j, (k, v) in enumerate(inner):
                lines.append(f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True)}{',' if j < len(inner) - 1 else ''}")
            lines.append(f"  }}{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}{comma}")
    return "\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.trt.api.dump_api", description=__doc__.split("\n\n")[0])
    p.add_argument("wheels", nargs="+", type=Path)
    p.add_argument("--pathfinder", type=Path, help="cuda-pathfinder wheel (cuda-bindings >= 12.9 import it)")
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args(argv)
    for wheel in a.wheels:
        dist, version = _version(wheel)
        if dist.startswith("tensorrt"):
            data, name = dump_tensorrt(wheel), f"tensorrt-{version}.json"
        elif dist in ("cuda-bindings", "cuda-python"):
            data, name = dump_cuda(wheel, a.pathfinder), f"cuda-python-{version}.json"
        else:
            raise SystemExit(f"{wheel.name}: not a TensorRT or cuda-python wheel")
        (a.out / name).write_text(_compact(data))
        print(f"wrote {a.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
