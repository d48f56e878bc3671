"""Engine manifests: a TensorRT engine only runs where it was built, so the runtime checks first.

A serialized engine is tied to the TensorRT version (major.minor.patch) and the GPU's compute
capability it was built for; loading it elsewhere fails deep inside TensorRT or, worse, is
undefined. ``check_engine`` compares an engine manifest with what this device has and refuses
with the reason (``trt_runner.compute_capability`` reads the GPU's). Importable without
tensorrt or CUDA.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelFilesError

__all__ = ["ENGINE_SCHEMA_VERSION", "check_engine"]

ENGINE_SCHEMA_VERSION = 2


def check_engine(manifest: dict[str, Any], trt_version: str, compute_capability: str | None) -> None:
    """Raise ``ModelFilesError`` unless the engine was built for this TensorRT and this GPU."""
    if manifest.get("schema_version") != ENGINE_SCHEMA_VERSION:
        raise ModelFilesError(
            f"engine manifest schema {manifest.get('schema_version')!r}, this runtime reads {ENGINE_SCHEMA_VERSION}; "
            "rebuild the engines"
        )
    built = str(manifest.get("tensorrt_version"))
    if built != trt_version:
        raise ModelFilesError(
            f"engine {manifest.get('file')} was built with TensorRT {built}, this device has {trt_version}; "
            "engines only load in the exact version that built them: rebuild with python -m export --target trt"
        )
    cc = manifest.get("compute_capability")
    if compute_capability is not None and cc != compute_capability:
        raise ModelFilesError(
            f"engine {manifest.get('file')} was built for compute capability {cc}, this GPU is {compute_capability}; "
            "rebuild on this device"
        )
