"""Image preprocessing as pure functions of arrays: decode, plan, tile, normalise, patchify.

Each step mirrors ``transformers.models.lfm2_vl.image_processing_lfm2_vl`` (5.x; numerically the
same as 4.57's fast processor) and is tested bit for bit against it. Arrays are H x W x 3 uint8
until ``normalize_patchify``.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, InputError
from .config import DECODE_MODES, PreprocessConfig
from .resize import resize_values_many

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImagePlan",
    "ImageSource",
    "decode_image",
    "describe_source",
    "make_units",
    "normalize_patchify",
    "plan_image",
    "position_weights",
    "unshuffle_index",
]

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

# Refuse to decode more pixels than this (Pillow's own hard limit is 2x its warning limit,
# ~179 Mpx). An A3 page scanned at 600 dpi is ~70 Mpx; past this it is a bomb or a mistake.
MAX_IMAGE_PIXELS = 2 * 89_478_485


# ---------------------------------------------------------------------------------------------
# Decode


def decode_image(source: ImageSource, mode: str = "corrected", name: str | None = None) -> np.ndarray:
    """Decode ``source`` to an H x W x 3 uint8 array.

    ``mode="upstream"`` is exactly what sauerkrautlm-colpali does: ``Image.open(p).convert("RGB")``.
    ``mode="corrected"`` also applies the EXIF orientation, scales 16-bit and float images to
    8 bits (Pillow clips them, which turns a 16-bit scan white) and composites alpha on white
    (Pillow drops it, which turns transparent areas black). The two agree on ordinary RGB/L files.
    Raises :class:`ImageError` with a one-line reason for anything that is not a usable image,
    naming the image as ``name`` (default: ``describe_source(source)``; pass the file's name when
    the source is bytes or a rendered page).
    """
    if mode not in DECODE_MODES:
        raise InputError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    image = _open(source, name) if not isinstance(source, Image.Image) else source
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit before decoding; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # "Palette images with Transparency ..."
            _check_size(image, name)
            if image.mode in ("1", "L") and (mode == "upstream" or _plain(image)):
                # Grey scans, the commonest page: spread the grey bytes into RGB in numpy, the same
                # bytes convert("RGB") gives without Pillow's RGB copy and its tobytes() copy
                # (a 13,300^2 group-4 TIFF: about half the peak memory of the Pillow route).
                array = _grey_to_rgb(image)
            else:
                if image.mode == "RGB" and (mode == "upstream" or _plain(image)):
                    rgb = image  # convert("RGB") / exif_transpose would only make a copy
                elif mode == "upstream":
                    rgb = image.convert("RGB")
                else:
                    rgb = _corrected_rgb(image)
                array = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageError(f"{name}: cannot decode image ({exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"{name}: decoded to unexpected shape {array.shape}")
    return array


def describe_source(source: ImageSource) -> str:
    """How error messages name an image: its path, or its kind when it has none."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    return f"<PIL {getattr(source, 'mode', '?')} image>"


def _open(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{name}: empty input (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.exists():
            raise ImageError(f"{name}: no such file")
        if fp.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        if fp.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, image is too large to decode safely ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot open image ({exc})") from exc
    return image


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{name}: refused, {width}x{height} is {width * height / 1e6:.0f} Mpx, over the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit (downscale it first)"
        )


def _plain(image: Image.Image) -> bool:
    """An RGB/grey image that ``corrected`` mode would not change: no colour key, upright."""
    return "transparency" not in image.info and image.getexif().get(0x0112, 1) == 1


def _grey_to_rgb(image: Image.Image) -> np.ndarray:
    grey = image if image.mode == "L" else image.convert("L")  # "1" -> 0/255, as convert("RGB") does
    flat = np.frombuffer(grey.tobytes(), dtype=np.uint8).reshape(grey.size[1], grey.size[0])
    del grey
    out = np.empty((*flat.shape, 3), dtype=np.uint8)
    out[...] = flat[:, :, None]
    return out


def _corrected_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image).astype(np.float64)
        # 16-bit data; a 32-bit "I" image holding 16-bit values (PNG) is scaled the same way.
        top = 65535.0 if mode != "I" or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image).astype(np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.rint(np.nan_to_num(arr) * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ImageError(f"{name}: arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: arrays must be HxWx3 (or HxW) uint8, got shape {array.shape}")
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------------------
# Plan: how an H x W image becomes tiles. Pure integer maths, no pixels.


@dataclass(frozen=True)
class ImagePlan:
    """The processing units of one image and the token counts that follow from them.

    ``grid_rows x grid_cols`` tiles of ``tile_size`` in row-major order, then an optional
    thumbnail; or a single unit of ``resized`` size when the image is not split.
    """

    height: int
    width: int
    tiled: bool
    grid_rows: int
    grid_cols: int
    tile_size: int
    resized: tuple[int, int]  # (h, w) of the single unit, or of the thumbnail
    thumbnail: bool
    downsample_factor: int
    patch_size: int

    @property
    def unit_sizes(self) -> list[tuple[int, int]]:
        if not self.tiled:
            return [self.resized]
        sizes = [(self.tile_size, self.tile_size)] * (self.grid_rows * self.grid_cols)
        return sizes + ([self.resized] if self.thumbnail else [])

    @property
    def spatial_shapes(self) -> list[tuple[int, int]]:
        return [(h // self.patch_size, w // self.patch_size) for h, w in self.unit_sizes]

    def tokens_of(self, size: tuple[int, int]) -> int:
        ph, pw = size[0] // self.patch_size, size[1] // self.patch_size
        f = self.downsample_factor
        return math.ceil(ph / f) * math.ceil(pw / f)

    @property
    def tokens_per_tile(self) -> int:
        return self.tokens_of((self.tile_size, self.tile_size))

    @property
    def tokens_for_image(self) -> int:
        """Tokens of the single unit, or of the thumbnail (upstream's ``tokens_for_image``)."""
        return self.tokens_of(self.resized)

    @property
    def num_image_tokens(self) -> int:
        return sum(self.tokens_of(s) for s in self.unit_sizes)


def _round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor  # Python round: half to even, as upstream


def smart_resize(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """Upstream ``smart_resize``; returns ``(h, w)`` (upstream returns ``(w, h)``)."""
    f = cfg.encoder_patch_size * cfg.downsample_factor
    min_px = cfg.min_image_tokens * cfg.encoder_patch_size**2 * cfg.downsample_factor**2
    max_px = cfg.max_image_tokens * cfg.encoder_patch_size**2 * cfg.downsample_factor**2
    h_bar = max(f, _round_by_factor(height, f))
    w_bar = max(f, _round_by_factor(width, f))
    if h_bar * w_bar > max_px:
        beta = math.sqrt((height * width) / max_px)
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif h_bar * w_bar < min_px:
        beta = math.sqrt(min_px / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    return h_bar, w_bar


def _is_too_large(height: int, width: int, cfg: PreprocessConfig) -> bool:
    f = cfg.encoder_patch_size * cfg.downsample_factor
    # Upstream clamps with the patch size (16) here, not the factor (32) as in smart_resize.
    h_bar = max(cfg.encoder_patch_size, _round_by_factor(height, f))
    w_bar = max(cfg.encoder_patch_size, _round_by_factor(width, f))
    limit = cfg.max_image_tokens * cfg.encoder_patch_size**2 * cfg.downsample_factor**2 * cfg.max_pixels_tolerance
    return h_bar * w_bar > limit


@lru_cache(maxsize=16)
def _target_ratios(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    ratios = [
        (w, h)
        for n in range(min_tiles, max_tiles + 1)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if min_tiles <= w * h <= max_tiles
    ]
    # The order of equal-area entries is CPython's set order, which the tie-break below depends
    # on; sorted() is stable, so rebuilding it the same way reproduces it exactly.
    return sorted(set(ratios), key=lambda x: x[0] * x[1])


def _closest_grid(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """Upstream ``find_closest_aspect_ratio``: returns ``(grid_w, grid_h)``."""
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in _target_ratios(cfg.min_tiles, cfg.max_tiles):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * cfg.tile_size * cfg.tile_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def plan_image(height: int, width: int, cfg: PreprocessConfig) -> ImagePlan:
    """Decide tiles, thumbnail and sizes for an ``height x width`` image."""
    if height < 1 or width < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    splitting = cfg.do_image_splitting
    min_tiles, max_tiles = (cfg.min_tiles, cfg.max_tiles) if splitting else (1, 1)
    splitting = not (min_tiles == max_tiles == 1)
    resized = smart_resize(height, width, cfg)
    if splitting and _is_too_large(height, width, cfg):
        grid_w, grid_h = _closest_grid(height, width, cfg)
        plan = ImagePlan(
            height, width, True, grid_h, grid_w, cfg.tile_size, resized,
            cfg.use_thumbnail and grid_w * grid_h != 1, cfg.downsample_factor, cfg.encoder_patch_size,
        )  # fmt: skip
    else:
        plan = ImagePlan(
            height, width, False, 1, 1, cfg.tile_size, resized, False,
            cfg.downsample_factor, cfg.encoder_patch_size,
        )  # fmt: skip
    for ph, pw in plan.spatial_shapes:
        if ph * pw > cfg.max_num_patches:
            # Only extreme aspect ratios get here (the short side is clamped to one token row):
            # upstream would emit a tile larger than the encoder's padded length.
            raise ImageError(
                f"aspect ratio {width}x{height} is too extreme: a unit would need {ph * pw} patches, "
                f"over the model's {cfg.max_num_patches}; crop or split the image"
            )
    return plan


# ---------------------------------------------------------------------------------------------
# Pixels


def make_units(image: np.ndarray, plan: ImagePlan) -> list[np.ndarray]:
    """Resize and cut ``image`` (H x W x 3 uint8) into the plan's units, in order.

    Units hold uint8 values: as a uint8 array when no resize was needed, else as integral
    float32 (see ``resize_values_many``); ``normalize_patchify`` takes either. Resized units live
    in per-thread scratch buffers: consume them before the next call in the same thread.
    """
    if not plan.tiled:
        return resize_values_many(image, [plan.resized], reuse_output=True)
    size = plan.tile_size
    sizes = [(size * plan.grid_rows, size * plan.grid_cols)] + ([plan.resized] if plan.thumbnail else [])
    resized = resize_values_many(image, sizes, reuse_output=True)
    big = resized[0]
    units = [
        big[r * size : (r + 1) * size, c * size : (c + 1) * size]
        for r in range(plan.grid_rows)
        for c in range(plan.grid_cols)
    ]
    if plan.thumbnail:
        units.append(resized[1])
    return units


@lru_cache(maxsize=8)
def _norm_constants(cfg: PreprocessConfig, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std, computed in float32 the way transformers' fused path does.

    transformers folds the rescale into mean/std: ``tensor(mean) * (1/rescale_factor)`` in
    float32, then ``(x - mean) / std``.
    """
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    inv = np.float32(1.0 / cfg.rescale_factor)
    if cfg.do_rescale and cfg.do_normalize:
        mean, std = mean * inv, std * inv
    elif cfg.do_rescale:  # plain rescale: x * factor, which we express as x / (1 / factor)
        mean, std = np.zeros(3, np.float32), np.full(3, inv, np.float32)
    elif not cfg.do_normalize:
        mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    # Features are ordered (dy, dx, c): channel is the fastest axis of a patch row.
    return np.tile(mean, patch * patch), np.tile(std, patch * patch)


def normalize_patchify(unit: np.ndarray, cfg: PreprocessConfig, out: np.ndarray) -> tuple[int, int]:
    """Write one unit's normalised patches into ``out`` [max_num_patches, patch*patch*3] float32.

    ``unit`` is H x W x 3 holding uint8 values (uint8, or integral float32). Rows past the unit's
    patch count are zeroed (upstream pads with 0). Returns ``(ph, pw)``.
    """
    p = cfg.encoder_patch_size
    h, w, _ = unit.shape
    ph, pw = h // p, w // p
    n = ph * pw
    patches = out[:n].reshape(ph, pw, p, p, 3)
    # [ph, p, pw, p, 3] -> [ph, pw, dy, dx, c]: per-patch order (dy, dx, c) as upstream.
    src = unit[: ph * p, : pw * p].reshape(ph, p, pw, p, 3).transpose(0, 2, 1, 3, 4)
    np.copyto(patches, src, casting="unsafe")  # uint8 values -> float32, exact
    mean, std = _norm_constants(cfg, p)
    # float32(x) - mean, then / std: the same float32 operations as transformers' fused
    # rescale+normalise. Broadcast over whole 768-wide rows; a length-3 inner axis is ~20x slower.
    rows = out[:n]
    rows -= mean
    rows /= std
    out[n:] = 0.0
    return ph, pw


# ---------------------------------------------------------------------------------------------
# Arrays the exported vision graph takes instead of data-dependent ops (docs/reference.md §7).


@lru_cache(maxsize=64)
def _triangle_matrix(n_out: int, n_in: int) -> np.ndarray:
    """1-D antialiased bilinear weights [n_out, n_in] (align_corners=False), row-normalised."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.arange(n_in, dtype=np.float64)
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centers[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)


def position_weights(ph: int, pw: int, grid: int = 16, max_patches: int = 1024) -> np.ndarray:
    """Weights [max_patches, grid*grid] that map the learned position table to this tile.

    Row ``i*pw + j`` holds the separable triangle filter for patch (i, j), which is what SigLIP2's
    ``F.interpolate(bilinear, antialias=True)`` of the grid x grid table computes. Padding rows
    copy row 0, because upstream fills padding with the first position embedding.
    """
    wy = _triangle_matrix(ph, grid)  # [ph, grid]
    wx = _triangle_matrix(pw, grid)  # [pw, grid]
    full = np.einsum("ia,jb->ijab", wy, wx).reshape(ph * pw, grid * grid)
    out = np.empty((max_patches, grid * grid), dtype=np.float32)
    out[: ph * pw] = full
    out[ph * pw :] = full[0]
    return out


def unshuffle_index(ph: int, pw: int, factor: int = 2, max_tokens: int = 256) -> np.ndarray:
    """Patch indices [max_tokens, factor*factor] gathered into each image token.

    Token (i, j) concatenates patches (factor*i + di, factor*j + dj) for (di, dj) in row-major
    order; tokens are row-major. Rows past the tile's token count point at patch 0.
    """
    ti, tj = ph // factor, pw // factor
    i = np.arange(ti)[:, None, None, None]
    j = np.arange(tj)[None, :, None, None]
    di = np.arange(factor)[None, None, :, None]
    dj = np.arange(factor)[None, None, None, :]
    idx = ((factor * i + di) * pw + (factor * j + dj)).reshape(ti * tj, factor * factor)
    out = np.zeros((max_tokens, factor * factor), dtype=np.int64)
    out[: ti * tj] = idx
    return out
