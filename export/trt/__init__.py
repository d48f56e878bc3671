"""``--target trt``: TensorRT engine plans, a pre-flight check that needs no TensorRT, and the builder.

Everything here except ``build_engine``'s real run works without ``tensorrt``: the device
profiles (batch and sequence ranges sized to each board's memory), the build path each TensorRT
generation takes (``BUILD_PATHS``), the engine plan derived from a bundle's manifest, and a
static check of each ONNX graph against what TensorRT's ONNX parser supports
(``export/trt/ops.json``, the operator matrices of onnx-tensorrt 8.5, 8.6 and 10.1).
``build_engine`` drives the ``tensorrt`` Python API; the tests run it against a strict fake of
each release's API surface (``export/trt/api/``). Engines build on a Jetson or an x86 box with
the same TensorRT version.
"""

from .build import build_engine
from .plan import EngineSpec, Problem, plan_engines
from .preflight import preflight
from .run import TrtConfig, plan_and_check, run_trt
from .targets import BUILD_PATHS, DEVICE_PROFILES, TRT_VERSIONS, BuildPath, DeviceProfile, build_path, release_for

__all__ = [
    "BUILD_PATHS",
    "DEVICE_PROFILES",
    "TRT_VERSIONS",
    "BuildPath",
    "DeviceProfile",
    "EngineSpec",
    "Problem",
    "TrtConfig",
    "build_engine",
    "build_path",
    "plan_and_check",
    "plan_engines",
    "preflight",
    "release_for",
    "run_trt",
]
