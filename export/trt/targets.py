"""What engines are built for: TensorRT releases (the JetPack each ships with, the newest ONNX
opset its parser takes, which operator matrix applies), the build path each generation takes
(weakly typed 8.x, strongly typed 10.x/11.x), and device profiles (batch and sequence ranges
sized to each board's memory). Data only: nothing here needs TensorRT."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUILD_PATHS", "DEVICE_PROFILES", "MAX_OPSET", "TRT_VERSIONS", "BuildPath", "DeviceProfile", "Release",
           "build_path", "release_for"]  # fmt: skip


@dataclass(frozen=True)
class Release:
    """A TensorRT release the project targets: where it ships and which parser matrix checks it."""

    where: str
    table: str  # key of ops.json
    max_opset: int


# JetPack -> TensorRT (NVIDIA's release notes). onnx-tensorrt's published operator matrices reachable
# here end at 10.1, so every 10.x and 11.x release is pre-flighted against that one (named in the output).
TRT_VERSIONS: dict[str, Release] = {
    "8.5": Release("JetPack 5.1 (CUDA 11.4)", "8.5", 17),
    "8.6": Release("JetPack 6.0 (CUDA 12.2)", "8.6", 17),
    "10.1": Release("desktop TensorRT 10.1", "10.1", 20),
    "10.3": Release("JetPack 6.1 / 6.2 (CUDA 12.6)", "10.1", 20),
    "10.13": Release("JetPack 7.0 / 7.1, Thor (CUDA 13.0)", "10.1", 20),
    "10.16": Release("JetPack 7.2, Orin and Thor (CUDA 13.2)", "10.1", 20),
    "11.4": Release("JetPack 7.2.2+ on AGX Orin and Thor; pip install tensorrt", "10.1", 20),
}
MAX_OPSET = {v: r.max_opset for v, r in TRT_VERSIONS.items()}


@dataclass(frozen=True)
class BuildPath:
    """How one TensorRT generation turns a bundle into engines."""

    name: str  # "weakly typed" | "strongly typed"
    releases: str
    sources: dict[str, str]  # engine precision -> the bundle precision whose ONNX graphs it builds from
    how: str

    @property
    def strongly_typed(self) -> bool:
        return self.name == "strongly typed"


_STRONG_SOURCES = {"fp16": "fp16", "int8": "int8-qdq"}
BUILD_PATHS: dict[int, BuildPath] = {
    8: BuildPath("weakly typed", "TensorRT 8.x (JetPack 5.1, 6.0)", {"fp16": "fp32", "int8": "int8-qdq"},
                 "EXPLICIT_BATCH network, BuilderFlag.FP16 (and INT8 for Q/DQ graphs); normalisation, softmax and "
                 "reduction layers pinned to fp32 with OBEY_PRECISION_CONSTRAINTS"),
    10: BuildPath("strongly typed", "TensorRT 10.x (JetPack 6.1 to 7.2)", _STRONG_SOURCES,
                  "STRONGLY_TYPED network: every layer runs in its ONNX type (the fp16 graph keeps norms, softmax "
                  "and the L2 norm in fp32; Q/DQ pairs give int8); no precision flags (weak typing is deprecated "
                  "since 10.12)"),
    11: BuildPath("strongly typed", "TensorRT 11.x (JetPack 7.2.2+)", _STRONG_SOURCES,
                  "strongly typed, as on 10.x; none of the API 11.0 removed (BuilderFlag.FP16/INT8, precision "
                  "constraints, layer precision, EXPLICIT_BATCH)"),
}  # fmt: skip


def build_path(version: str) -> BuildPath:
    """The build path of TensorRT ``version`` ("8.6.2", "10.3", "11.4.0.106", ...)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r}") from None
    if major < 8:
        raise ValueError(f"TensorRT {version} is too old: 8.5 (JetPack 5.1) is the oldest supported")
    return BUILD_PATHS[8 if major < 10 else min(major, 11)]


def release_for(version: str) -> str:
    """The ``TRT_VERSIONS`` key that covers an installed version (8.6.2 -> 8.6, 10.3.0 -> 10.3)."""
    mm = ".".join(str(version).split(".")[:2])
    if mm in TRT_VERSIONS:
        return mm
    major = int(mm.split(".")[0])
    return "11.4" if major >= 11 else "10.16" if major == 10 else "8.6"


@dataclass(frozen=True)
class DeviceProfile:
    """Shape ranges for one board, sized to its memory (fp16 weights: ~0.9 GB for both graphs)."""

    name: str
    memory_gb: int
    vision_batch: tuple[int, int, int]  # tiles per call: min, opt, max (a page is 1..11 tiles)
    query_batch: tuple[int, int, int]
    query_seq: tuple[int, int, int]
    doc_batch: tuple[int, int, int]
    doc_seq: tuple[int, int, int]  # up to the longest tiled page: 10 tiles + thumbnail ~ 2,900 tokens
    workspace_mb: int
    note: str


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "orin-nano": DeviceProfile("orin-nano", 8, (1, 4, 11), (1, 1, 8), (1, 32, 128), (1, 1, 1), (1, 300, 2900), 1024,
                               "Orin Nano 8 GB: memory shared with the OS; one page at a time"),
    "orin-nx": DeviceProfile("orin-nx", 16, (1, 8, 11), (1, 4, 16), (1, 32, 128), (1, 1, 2), (1, 300, 2900), 2048,
                             "Orin NX 16 GB"),
    "agx-orin": DeviceProfile("agx-orin", 64, (1, 11, 11), (1, 8, 32), (1, 32, 128), (1, 2, 4), (1, 300, 2900), 4096,
                              "AGX Orin 32/64 GB"),
    "desktop": DeviceProfile("desktop", 24, (1, 11, 22), (1, 16, 64), (1, 32, 128), (1, 4, 8), (1, 300, 2900), 8192,
                             "x86 + discrete GPU, >= 16 GB VRAM"),
}  # fmt: skip
