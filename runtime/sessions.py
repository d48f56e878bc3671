"""The one place ONNX Runtime sessions are made.

The encoder's runners, the MaxSim kernel, the export gate (``export.validate``), the benchmarks
and the int8 probe all open their sessions here, so what the gate and the benchmarks measure is
the session the device runs: same options, same memory behaviour.

No CPU memory arena (nor the memory pattern that needs it) by default: the arena keeps the
high-water mark of every run for the process' life, so one A4 page (S = 1,800 attention scores)
would pin a gigabyte for good; without it memory goes back after the run, at the same speed
(benchmarks/results/rss.json; DESIGN.md "No ORT memory arena").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CPU", "ort_session", "session_options"]

CPU = ("CPUExecutionProvider",)


def session_options(
    threads: int | None = None,
    session_config: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    arena: bool = False,
    quiet: bool = False,
) -> Any:
    """``onnxruntime.SessionOptions``: ``threads`` intra-op threads (None/0: one per core), the
    recipe's ``session_config`` entries (``Recipe.session_config``, the manifest's
    ``session_config``), the CPU arena only when ``arena``, warnings hidden when ``quiet``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not arena:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if threads:
        options.intra_op_num_threads = int(threads)
    if quiet:
        options.log_severity_level = 3
    items = session_config.items() if isinstance(session_config, Mapping) else session_config
    for key, value in items:
        options.add_session_config_entry(str(key), str(value))
    return options


def ort_session(
    model: str | os.PathLike | bytes,
    threads: int | None = None,
    session_config: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    providers: Sequence[Any] = CPU,
    arena: bool = False,
    quiet: bool = False,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over a file or serialised model, with ``session_options``."""
    import onnxruntime as ort

    options = session_options(threads, session_config, arena, quiet)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers))
