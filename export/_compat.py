"""Import transformers safely next to the CPU torch wheel.

On these x86 machines torch is the local CPU wheel 2.13.0, and the only torchvision that pairs
with it on PyPI (0.28.0, needed by transformers' LFM2-VL image processor in the parity tests) is
a CUDA build. Its C extension cannot load, and ``torchvision/_meta_registrations.py`` then dies
at import with ``operator torchvision::nms does not exist`` while registering fake kernels for
those missing C ops. transformers imports torchvision whenever it is installed, so without care
even the model code would fail to import.

We pre-register an empty ``torchvision._meta_registrations`` module. It only holds fake-tensor
kernels for torchvision's compiled detection ops (nms, roi_align, ...), which nothing here calls;
the resize path that the parity tests compare against is pure torch (``F.interpolate``). Where
torchvision is absent or works, this changes nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_done = False


def patch_torchvision() -> None:
    global _done
    if _done:
        return
    _done = True
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    # A torchvision whose C ops load (a matching CPU build) needs nothing from us.
    for lib in Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"):
        try:
            torch.ops.load_library(str(lib))
            return
        except (OSError, RuntimeError):
            break
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
