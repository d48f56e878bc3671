"""Preprocessing configuration, read from a checkpoint's processor files.

The upstream processor is ``Lfm2VlImageProcessor``; its class defaults are the fallbacks here, and
``preprocessor_config.json`` overrides them the way ``from_pretrained`` does. transformers 5.x also
lets ``processor_config.json`` carry an ``image_processor`` section; it wins over
``preprocessor_config.json`` when both exist, as in transformers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ModelFilesError

__all__ = ["DECODE_MODES", "TILE_LABEL_ORDERS", "PreprocessConfig"]

# PIL resampling enum value for BILINEAR; the only filter whose torch uint8 kernel we port.
_BILINEAR = 2
TILE_LABEL_ORDERS = ("5.x", "4.57")
DECODE_MODES = ("corrected", "upstream")


# The range of every scalar knob: wide enough for any LFM2-VL checkpoint, narrow enough that a
# hostile or damaged file cannot ask for a zero-sized patch or a gigapixel tile.
_BOUNDS: dict[str, tuple[float, float]] = {
    "downsample_factor": (1, 8), "min_tiles": (1, 256), "max_tiles": (1, 256), "min_image_tokens": (1, 16384),
    "max_image_tokens": (1, 16384), "encoder_patch_size": (1, 64), "tile_size": (16, 4096),
    "max_pixels_tolerance": (1.0, 100.0), "resample": (0, 5), "rescale_factor": (1e-6, 1.0),
    "do_image_splitting": (0, 1), "use_thumbnail": (0, 1), "do_rescale": (0, 1), "do_normalize": (0, 1),
    "do_pad": (0, 1),
}  # fmt: skip
_FLAGS = {"do_image_splitting", "use_thumbnail", "do_rescale", "do_normalize", "do_pad"}
_REALS = {"max_pixels_tolerance", "rescale_factor"}


@dataclass(frozen=True)
class PreprocessConfig:
    """Every knob of the LFM2-VL image processor that changes pixels or tokens."""

    downsample_factor: int = 2
    do_image_splitting: bool = True
    min_tiles: int = 2
    max_tiles: int = 10
    use_thumbnail: bool = True
    min_image_tokens: int = 64
    max_image_tokens: int = 256
    encoder_patch_size: int = 16
    tile_size: int = 512
    max_pixels_tolerance: float = 2.0
    resample: int = _BILINEAR
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_pad: bool = True

    @property
    def max_num_patches(self) -> int:
        """Rows of ``pixel_values`` per tile: every unit is padded to this many patches."""
        thumb = self.max_image_tokens * self.downsample_factor**2
        tile = (self.tile_size // self.encoder_patch_size) ** 2 if self.do_image_splitting else 0
        return max(thumb, tile)

    @property
    def patch_dim(self) -> int:
        return self.encoder_patch_size * self.encoder_patch_size * 3

    def validate(self) -> PreprocessConfig:
        for name, (lo, hi) in _BOUNDS.items():
            v = getattr(self, name)
            kind = bool if name in _FLAGS else (float if name in _REALS else int)
            ok = isinstance(v, bool) if kind is bool else (isinstance(v, (int, float) if kind is float else int)
                                                           and not isinstance(v, bool) and lo <= v <= hi)  # fmt: skip
            if not ok:
                want = "true or false" if kind is bool else f"a number in {lo}..{hi}"
                raise ModelFilesError(f"preprocessor config: {name} is {v!r}, not {want}")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(math.isfinite(x) and abs(x) <= 255 for x in v) or (
                    name == "image_std" and min(abs(x) for x in v) < 1e-6):  # fmt: skip
                raise ModelFilesError(f"preprocessor config: {name} is {list(v)!r}, not three finite numbers"
                                      f"{' (none 0)' if name == 'image_std' else ''}")  # fmt: skip
        if self.min_image_tokens > self.max_image_tokens:
            raise ModelFilesError("preprocessor config: min_image_tokens must be <= max_image_tokens")
        if self.resample != _BILINEAR:
            raise ModelFilesError(
                f"preprocessor config asks for resample={self.resample}; only bilinear (2) is "
                "ported bit-exactly from torch, so other filters are refused rather than approximated"
            )
        if not self.do_pad:
            raise ModelFilesError("preprocessor config sets do_pad=false; the graphs need padded tiles")
        if self.do_image_splitting and self.min_tiles > self.max_tiles:
            raise ModelFilesError("preprocessor config: min_tiles must be <= max_tiles")
        if self.tile_size % (self.encoder_patch_size * self.downsample_factor):
            raise ModelFilesError("preprocessor config: tile_size must be a multiple of patch*downsample")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key in ("image_mean", "image_std"):
                try:
                    value = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3))
                except (TypeError, ValueError):
                    raise ModelFilesError(f"preprocessor config: {key} is {value!r}, not three numbers") from None
            kwargs[key] = value
        return replace(cls(), **kwargs).validate()

    @classmethod
    def from_dir(cls, path: str | Path) -> PreprocessConfig:
        """Read ``preprocessor_config.json`` (and a 5.x ``processor_config.json`` section) in ``path``."""
        path = Path(path)
        data: dict[str, Any] = {}
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            data.update(_read_json(pre))
        proc = path / "processor_config.json"
        if proc.is_file():
            section = _read_json(proc).get("image_processor")
            if isinstance(section, dict):
                data.update(section)
        if not data:
            raise ModelFilesError(f"{path}: no preprocessor_config.json; is this a ColLFM2 checkpoint or bundle?")
        return cls.from_dict(data)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelFilesError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path}: expected a JSON object")
    return data
