"""ONNX Runtime runners (``ort-cpu``, ``ort-cuda``, ``ort-trt``): one session per graph of the
chosen precision, opened by ``runtime.sessions`` with the recipe's session settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelFilesError, UserError
from ..sessions import ort_session
from .runner import Engine, Loaded

__all__ = ["OrtRunner", "load"]

_INSTALL = {
    "CUDAExecutionProvider": "onnxruntime-gpu (x86: pip install onnxruntime-gpu; Jetson: NVIDIA's aarch64 build from "
    "the Jetson Zoo, PyPI has none, onnxruntime issue 20503)",
    "TensorrtExecutionProvider": "onnxruntime-gpu built with TensorRT (Jetson Zoo wheels, or a desktop build)",
}


class OrtRunner:
    """A ``Runner`` over an ``onnxruntime.InferenceSession`` (``session``, for its options)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def _check_providers(providers: Sequence[Any]) -> None:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    for p in providers:
        name = p[0] if isinstance(p, tuple) else p
        if name not in available:
            hint = f"; install {_INSTALL[name]}" if name in _INSTALL else ""
            raise UserError(
                f"ONNX Runtime provider {name} is not available here (have: {', '.join(sorted(available))})" + hint
            )


def load(
    engine: Engine, bundle: Any, precision: str | None, threads: int | None, providers: Sequence[Any] | None
) -> Loaded:
    """The runners of ``precision``'s graphs (the caller has resolved the default precision)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise UserError("onnxruntime is not installed: pip install onnxruntime") from exc
    if precision is None:
        raise ValueError("the ONNX Runtime engines need a precision")
    entry = bundle.precision(precision)
    providers = list(providers) if providers else list(engine.providers)
    _check_providers(providers)
    runners: dict[str, Any] = {}
    for graph, spec in entry["graphs"].items():
        path = bundle.file(spec["file"])
        try:
            session = ort_session(path, threads, entry.get("session_config") or {}, providers)
        except Exception as exc:  # ORT raises its own types; the file is the user's to fix
            raise ModelFilesError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
        runners[graph] = OrtRunner(session)
    return Loaded(runners, precision, entry)
