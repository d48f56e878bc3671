"""What runs a graph: the ``Runner`` protocol and the one table of engines.

``ColLFM2`` takes a runner per graph (``vision``, ``text``) and never asks which engine made it.
An engine is one module under ``runtime/encoder/`` with a ``load(engine, bundle, precision,
threads, providers) -> Loaded`` function, plus one row in ``ENGINES``; nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import UserError

__all__ = ["ENGINES", "RECORDED_BY", "Engine", "Loaded", "Runner", "check_recorded", "engine"]


class Runner(Protocol):
    """One graph, ready to run: the contract's feeds in, the graph's outputs out (in order)."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class Loaded:
    """What an engine's ``load`` hands the model."""

    runners: dict[str, Runner]  # graph name -> runner
    precision: str  # what an index records as the precision (ONNX precision, or the TensorRT engine set)
    entry: dict[str, Any]  # the bundle's precision entry whose embedding table goes with these graphs
    engines: dict[str, Any] | None = None  # TensorRT: the engine set's engines.json


@dataclass(frozen=True)
class Engine:
    name: str
    module: str  # runtime.encoder.<module> holds its load()
    device: str  # "cpu" or "gpu": the default precision and tiles per vision call follow it
    providers: tuple[str, ...] = ()  # ONNX Runtime providers, in priority order
    help: str = ""  # what --engine says of it
    # The engine's own files decide the precision (TensorRT engine sets); else the bundle's graphs
    # of the asked precision run, by default the one ``default_precision`` picks for the device.
    own_precision: bool = False

    def load(self, bundle: Any, precision: str | None, threads: int | None, providers: Sequence[Any] | None) -> Loaded:
        """Open this engine's runners for ``bundle`` (its module is imported only now)."""
        module = importlib.import_module(f"{__package__}.{self.module}")
        return module.load(self, bundle, precision, threads, providers)


_CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("ort-cpu", "ort", "cpu", ("CPUExecutionProvider",), "ONNX Runtime on the CPU"),
        Engine("ort-cuda", "ort", "gpu", _CUDA, "ONNX Runtime, CUDA provider"),
        Engine("ort-trt", "ort", "gpu", ("TensorrtExecutionProvider", *_CUDA), "ONNX Runtime, TensorRT provider"),
        Engine("trt", "trt", "gpu", (), "native TensorRT engines (python -m export --target trt)", own_precision=True),
        # OpenVINO names its precisions itself (fp32, bf16, int8: runtime/encoder/ov.py).
        Engine("ov-cpu", "ov", "cpu", (), "OpenVINO on the CPU (pip install openvino)", own_precision=True),
        Engine("ov-gpu", "ov", "gpu", (), "OpenVINO on an Intel iGPU (untested here)", own_precision=True),
        Engine("ov-npu", "ov", "gpu", (), "OpenVINO on an Intel NPU (untested here)", own_precision=True),
    )
}


# Precisions an index records that only one family of engines makes.
RECORDED_BY = {"trt/": ("trt",), "ov/": ("ov-cpu", "ov-gpu", "ov-npu")}


def check_recorded(backend: str, precision: str | None) -> None:
    """A one-line error when ``precision`` (e.g. ``ov/bf16``, as an index records it) needs another engine."""
    for prefix, makers in RECORDED_BY.items():
        if precision and precision.startswith(prefix) and backend not in makers:
            raise UserError(f"precision {precision} is made by the {makers[0]} engine, not {backend}; "
                            f"pass --engine {makers[0]}")  # fmt: skip


def engine(name: str) -> Engine:
    """The engine called ``name``; a one-line error naming the others."""
    try:
        return ENGINES[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(ENGINES)}") from None
