"""Architectures the project ships, and the presets built from them.

``random``: the real LFM2-VL-450M architecture (450,822,656 parameters + the 128-d head) with
random weights from a fixed seed. ``tiny``: the same structure at test size. Neither needs files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BASE_CONFIG_DIR", "DEFAULT_PRESET", "PRESETS", "Preset", "shipped_base_config"]

BASE_CONFIG_DIR = Path(__file__).parent / "base_configs"
DEFAULT_PRESET = "random"


@dataclass(frozen=True)
class Preset:
    name: str
    base_model: str  # what config.json's base_model says, as in the published checkpoint
    seed: int
    description: str


PRESETS: dict[str, Preset] = {
    "random": Preset("random", "LiquidAI/LFM2-VL-450M", 0, "real LFM2-VL-450M architecture, RANDOM weights"),
    "tiny": Preset("tiny", "collfm2-edge/tiny-lfm2-vl", 0, "tiny LFM2-VL structure for tests, RANDOM weights"),
}


def shipped_base_config(base_model: str) -> dict[str, Any] | None:
    """The architecture config we ship for hub id ``base_model``, or None."""
    path = BASE_CONFIG_DIR / base_model.replace("/", "--") / "config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return data
