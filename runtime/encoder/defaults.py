"""The one table of defaults: which (engine, precision) a CPU runs when the user names neither.

Each row is chosen by a measurement (``measured`` names the benchmark result, run on that kind of
CPU, eager fp32 and every engine side by side) or says it was not measured. The rule for every
row: never default to an (engine, precision) slower than fp32 on that kind of CPU.

``python -m runtime selftest`` prints the row this machine takes and why. ``COLLFM2_ENGINE``
overrides the table's engine (the test suite pins ``ort-cpu``, so no test's outcome depends on
the CPU it runs on); ``--engine`` and ``--precision`` override both.

A precision an index records decides the engine when none is given: ``ov/...`` was made by
OpenVINO, ``trt/...`` by TensorRT, ``int8``/``fp16``/``int8-qdq`` by ONNX Runtime; ``fp32`` is
the same vectors (gated at worst cosine 0.99999) whichever engine runs it, so the table picks.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from ..cpu import cpu_class, cpu_features, native_bf16
from .runner import RECORDED_BY

__all__ = ["TABLE", "Default", "choose", "cpu_kind", "engine_for", "openvino_installed", "slower_than_fp32"]


@dataclass(frozen=True)
class Default:
    engine: str
    precision: str | None  # None: the engine's own rule (ONNX Runtime: ``model.default_precision``)
    measured: str  # the benchmark result that chose this row; "" where none was run
    why: str


_ORT_RULE = "ONNX Runtime's own rule (int8 where the bundle's int8 graphs are all dynamic int8, else fp32)"
ENGINES_RUN = "benchmarks/results/engines-epyc-bf16-2cpu.json"
VNNI_RUN = "benchmarks/results/engines-epyc-vnni-nobf16-2cpu.json"
AVX2_RUN = "benchmarks/results/engines-epyc-avx2-2cpu.json"

TABLE: dict[str, Default] = {
    # AMD EPYC (Zen 4, AVX512_BF16, no AMX), 2 cores, one run: against eager fp32, a 512x512 page
    # OpenVINO bf16 2.45x (int8 2.55x, fp32 1.30x, ONNX Runtime fp32 1.19x), a 20-token query 4.84x
    # (int8 6.24x). int8 is faster still but loses more fidelity (worst page cosine 0.9977 vs
    # 0.9997, query 0.9961 vs 0.9990) and needs the bundle's int8 graphs; bf16 runs from the fp32
    # graphs every bundle has. Intel's AMX CPUs have AVX512_BF16 too and take this row (the issue's
    # own Xeon run: OpenVINO bf16 4.8x ONNX Runtime fp32 on a vision tile).
    "x86_64-avx512vnni+bf16": Default(
        "ov-cpu",
        "bf16",
        ENGINES_RUN,
        "OpenVINO bf16: a 512x512 page 2.5x and a 20-token query 4.8x eager fp32, from the fp32 graphs",
    ),
    # The same EPYC with AVX512BF16 hidden from our decisions (COLLFM2_CPU_HIDE; every engine then
    # runs fp32 and VNNI int8 kernels, as on a Cascade Lake or Ice Lake Xeon), one run: against
    # eager fp32, a 512x512 page OpenVINO int8 2.54x (fp32 1.45x, ONNX Runtime fp32 1.27x, its
    # int8 1.42x), a 20-token query 7.26x (fp32 3.63x, ONNX Runtime fp32 3.20x, its int8 0.58x).
    # A bundle without int8 graphs runs OpenVINO fp32 here (ov.resolve).
    "x86_64-avx512vnni": Default(
        "ov-cpu",
        "int8",
        VNNI_RUN,
        "OpenVINO int8 (weight-only graphs): a 512x512 page 2.5x and a 20-token query 7.3x eager fp32, "
        "measured with AVX512BF16 hidden",
    ),
    # AMD EPYC (Zen 3, AVX2 only), 2 cores, one run: against eager fp32, a 512x512 page ONNX
    # Runtime fp32 1.04x (OpenVINO fp32 0.99x, its int8 1.04x, ONNX Runtime int8 1.00x), a 20-token
    # query 2.45x (OpenVINO fp32 1.88x, its int8 1.85x, ONNX Runtime int8 0.34x: its text graph is
    # weight-only). Without VNNI OpenVINO's int8 gains nothing, so ONNX Runtime stays; its rule
    # picks fp32 for that bundle.
    "x86_64-avx2": Default(
        "ort-cpu",
        None,
        AVX2_RUN,
        "ONNX Runtime: fp32 a 512x512 page 1.04x and a 20-token query 2.45x eager fp32, OpenVINO no faster; "
        + _ORT_RULE,
    ),
    "x86_64-sse": Default("ort-cpu", None, "", _ORT_RULE),
    # Speed cannot be measured under emulation; ONNX Runtime int8 stays (README, Raspberry Pi).
    "aarch64-dotprod": Default("ort-cpu", None, "", "speed unmeasured on aarch64 (emulation only); " + _ORT_RULE),
    "aarch64": Default("ort-cpu", None, "", "speed unmeasured on aarch64 (emulation only); " + _ORT_RULE),
}
# x86 classes without AVX-512 VNNI, where OpenVINO's int8 measured no faster than fp32 (AVX2_RUN)
NO_VNNI = ("x86_64-avx2", "x86_64-sse")
FALLBACK = Default("ort-cpu", None, "", "a CPU the table does not know; " + _ORT_RULE)


def cpu_kind(features: set[str] | None = None, machine: str | None = None) -> str:
    """``cpu_class`` plus ``+bf16`` where the CPU computes bf16 natively (a row of ``TABLE``)."""
    feats = cpu_features() if features is None else features
    kind = cpu_class(machine, feats)
    return kind + "+bf16" if native_bf16(feats) else kind


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose(features: set[str] | None = None, machine: str | None = None) -> tuple[str, Default]:
    """This machine's row of ``TABLE`` (its kind, the row), after ``COLLFM2_ENGINE`` and what is installed."""
    kind = cpu_kind(features, machine)
    row = TABLE.get(kind, FALLBACK)
    forced = os.environ.get("COLLFM2_ENGINE", "").strip()
    if forced and forced != row.engine:
        row = Default(forced, None, "", f"COLLFM2_ENGINE={forced} overrides the table")
    elif row.engine.startswith("ov-") and not openvino_installed():
        row = Default("ort-cpu", None, "", f"the table's {row.engine} needs openvino, not installed; " + _ORT_RULE)
    return kind, row


def engine_for(precision: str | None, features: set[str] | None = None) -> str:
    """The engine to run ``precision`` (None: this machine's default) when the user names none."""
    for prefix, makers in RECORDED_BY.items():
        if precision and precision.startswith(prefix):
            return makers[0]
    if precision in (None, "fp32"):
        return choose(features)[1].engine
    if precision == "bf16":
        return "ov-cpu"  # only OpenVINO offers it
    return "ort-cpu"  # the bundle's own int8, fp16, int8-qdq graphs


def slower_than_fp32(
    engine: str,
    precision: str,
    int8_methods: list[str],
    machine: str | None = None,
    features: set[str] | None = None,
) -> str | None:
    """Why ``precision`` on ``engine`` is slower than fp32 on this kind of CPU (a one-line warning
    for a user who asked for it), or None. Each case was measured; the table never defaults to one."""
    import platform

    machine = machine or platform.machine()
    x86 = machine.lower() in ("x86_64", "amd64")
    ov_int8 = engine == "ov-cpu" and precision in ("int8", "ov/int8")
    if ov_int8 and cpu_class(machine, features) in NO_VNNI:  # both classes are x86 only
        return (
            "without AVX-512 VNNI OpenVINO's int8 measured no faster than fp32 (a page ties, a 64-token query "
            "1.4x slower, " + AVX2_RUN + "); --precision fp32 with --engine ort-cpu is faster"
        )
    if engine == "ort-cpu" and precision == "int8" and x86 and "weight-only-int8" in int8_methods:
        return (
            "this bundle's int8 text graph is weight-only (MatMulNBits), which ONNX Runtime runs slower than fp32 "
            "on x86 (a 20-token query 3.8x slower than fp32, " + ENGINES_RUN + "); --precision fp32 is faster"
        )
    if engine == "ort-cpu" and precision == "fp16":
        return "ONNX Runtime computes fp16 graphs on a CPU with casts, slower than fp32 (about 4x on a Pi 5)"
    return None
