"""Which class of CPU this is, as far as ONNX Runtime's int8 kernels are concerned.

MLAS picks its integer GEMM by instruction set: x86 with AVX-512 VNNI (``vpdpbusd``, exact int32
accumulation), x86 with AVX2 only (``vpmaddubsw``, whose u8 x s8 pair sums saturate at 16 bits),
older x86 (SSE4.1), and aarch64 with or without the dot-product extension (``sdot``/``udot``).
The int8 recipes are chosen so their numbers do not depend on which of these runs them (see
``docs/cpu-classes.md``); the class is still recorded wherever fidelity was measured, so a claim
"validated on" names the kernels that produced it.

x86 with AVX-VNNI but no AVX-512 (Alder Lake on) is classed ``x86_64-avx2``, as numpy reports no
AVX-VNNI flag, although MLAS runs an exact VNNI kernel there; the recipes' numbers are the same.

The features come from numpy's own CPUID/HWCAP probe, not ``/proc/cpuinfo``: under qemu-user the
latter is the host's file, while CPUID and the auxiliary vector are the emulated CPU's.

``COLLFM2_CPU_HIDE`` (numpy's names, comma-separated, e.g. ``AVX512BF16``) removes features from
what this module reports, so a machine takes the decisions a CPU without them takes: the engine
table's row, OpenVINO's bf16 refusal and hints, the benchmarks' eager bf16. Nothing else changes:
the libraries still pick their own kernels by CPUID, and every engine here runs fp32 or int8
kernels unless a bf16 decision asked for more. That is how a bf16 machine measures and tests the
"AVX-512 VNNI without bf16" row. numpy's own ``NPY_DISABLE_CPU_FEATURES`` cannot hide
``AVX512BF16`` (not one of its dispatch targets).
"""

from __future__ import annotations

import os
import platform

__all__ = ["CPU_CLASSES", "cpu_class", "cpu_features", "cpu_host", "cpu_name", "hidden_features", "native_bf16"]

CPU_CLASSES = {
    "x86_64-avx512vnni": "x86 with AVX-512 VNNI (int8 dot products into int32)",
    "x86_64-avx2": "x86 with AVX2, no AVX-512 VNNI (u8 x s8 multiply-add saturating at 16 bits)",
    "x86_64-sse": "x86 without AVX2 (SSE4.1 kernels)",
    "aarch64-dotprod": "aarch64 with the dot-product extension (Cortex-A76 / Raspberry Pi 5, Jetson Orin)",
    "aarch64": "aarch64 without dot products (Cortex-A72 / Raspberry Pi 4)",
}


def hidden_features() -> set[str]:
    """The features ``COLLFM2_CPU_HIDE`` names (upper-cased numpy names; empty when unset)."""
    raw = os.environ.get("COLLFM2_CPU_HIDE", "")
    return {f.strip().upper() for f in raw.replace(" ", ",").split(",") if f.strip()}


def cpu_features() -> set[str]:
    """numpy's names of the SIMD features this CPU has (e.g. ``AVX2``, ``AVX512VNNI``, ``ASIMDDP``),
    less those ``COLLFM2_CPU_HIDE`` names."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            return set()
    return {k for k, v in feats.items() if v} - hidden_features()


def cpu_class(machine: str | None = None, features: set[str] | None = None) -> str:
    """One of ``CPU_CLASSES`` for this CPU (or for ``machine`` with ``features``), else the machine name."""
    machine = (machine or platform.machine()).lower()
    feats = cpu_features() if features is None else features
    if machine in ("x86_64", "amd64"):
        if "AVX512VNNI" in feats:
            return "x86_64-avx512vnni"
        return "x86_64-avx2" if "AVX2" in feats else "x86_64-sse"
    if machine in ("aarch64", "arm64"):
        return "aarch64-dotprod" if "ASIMDDP" in feats else "aarch64"
    return machine


def native_bf16(features: set[str] | None = None) -> bool:
    """True where the CPU computes bf16 in hardware. numpy names no AMX flag; every CPU with
    AMX-BF16 also has AVX512_BF16."""
    return "AVX512BF16" in (cpu_features() if features is None else features)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``; the platform's guess elsewhere).

    The one reader of ``/proc/cpuinfo`` in the repo: a label for reports, never a feature test
    (under qemu-user the file is the host's; features come from ``cpu_features``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_host(features: set[str] | None = None) -> dict[str, object]:
    """What reports record about the CPU they ran on: name, class and the features that change
    which kernels run (AVX-512, bf16, int8 dot products), and ``hidden`` where some were hidden."""
    feats = cpu_features() if features is None else features
    host: dict[str, object] = {
        "cpu": cpu_name(),
        "cpu_class": cpu_class(features=feats),
        "machine": platform.machine(),
        "avx512": "AVX512F" in feats,
        "bf16": native_bf16(feats),
        "int8_dot": bool({"AVX512VNNI", "AVXVNNI", "ASIMDDP"} & feats),
    }
    hidden = hidden_features()
    if hidden:  # a report measured with features hidden must say so
        host["hidden"] = sorted(hidden)
    return host
