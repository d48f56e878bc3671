"""Bit-exact numpy port of torch's CPU uint8 antialiased bilinear resize.

The upstream LFM2-VL processor resizes with
``torchvision.transforms.v2.functional.resize(uint8, BILINEAR, antialias=True)``, which on x86
AVX2 and aarch64 runs ``aten::_upsample_bilinear2d_aa`` on the uint8 tensor directly. That kernel
is a separable triangle filter with per-axis fixed-point int16 weights whose precision depends on
the axis' largest weight. PIL's resize uses a fixed 22-bit precision and so differs by +-1 on a
few percent of values; hence this port. Section numbers refer to
``shared/docs/uint8-antialias-resize.md``:

* per axis: ``scale = in/out``, ``support = max(scale, 1)``, window ``[xmin, xmin + xsize)``,
  float64 triangle weights normalised by a left-to-right sum (sections 2-3);
* ``prec`` = the largest precision <= 22 at which the axis' biggest weight stays below 2^15;
  ``W = trunc(0.5 + w * 2^prec)`` (section 4);
* horizontal pass first into a uint8 buffer, then vertical; an axis whose size does not change is
  skipped (section 5);
* ``out = clamp((2^(prec-1) + sum src*W) >> prec, 0, 255)`` (section 6).

Speed: the integer sums are evaluated as banded matrix products in floating point, which BLAS
runs near peak. That is exact, not approximate: every product and partial sum is a non-negative
integer, and we pick float32 only when the largest possible sum stays below 2^24 (else float64,
exact below 2^53), so no rounding can happen in any summation order. ``>> prec`` becomes a
multiply by the exact power of two ``2^-prec`` followed by ``floor``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["axis_weights", "resize_uint8"]

# Output rows per band: small enough that the band's input window stays narrow (few zero taps),
# large enough that each BLAS call has work to do. 16-64 measure the same on AVX2.
_BAND = 32
# Rows of the source converted to float at a time in the horizontal pass, to bound memory on
# huge scans (a 12000x12000 page would otherwise need 1.7 GB of float32).
_CHUNK_ELEMS = 1 << 22


@lru_cache(maxsize=512)
def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer filter taps of one axis: ``(xmin[out], W[out, K] int64, prec)``.

    Taps past a row's window are 0.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k = math.ceil(support) * 2 + 1

    xmins = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, k), dtype=np.float64)
    wt_max = 0.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), k)
        row = []
        total = 0.0
        for j in range(xsize):
            x = ((j + xmin) - center + 0.5) * invscale
            w = 1.0 - abs(x) if abs(x) < 1.0 else 0.0
            row.append(w)
            total += w  # left to right, as torch does: a pairwise sum can differ in the last bit
        if total != 0.0:
            row = [w / total for w in row]  # true division, not a reciprocal multiply
            wt_max = max(wt_max, max(row))
        xmins[i] = xmin
        weights[i, : len(row)] = row

    prec = 22
    for p in range(22):
        if int(0.5 + wt_max * (1 << (p + 1))) >= (1 << 15):
            prec = p
            break
    w_int = np.trunc(0.5 + weights * float(1 << prec)).astype(np.int64)
    return xmins, w_int, prec


@lru_cache(maxsize=512)
def _band_plan(in_size: int, out_size: int) -> tuple[tuple, float, type]:
    """Split the [out, in] weight matrix into dense row bands ``(o0, o1, lo, hi, W_band)``."""
    xmins, w_int, prec = axis_weights(in_size, out_size)
    k = w_int.shape[1]
    live = w_int != 0
    last = np.where(live.any(1), k - np.argmax(live[:, ::-1], axis=1), 1)
    ends = np.minimum(xmins + last, in_size)
    # Largest accumulator value: 255 * (row weight sum) + the rounding half.
    bound = 255 * int(w_int.sum(1).max()) + (1 << (prec - 1))
    dtype = np.float32 if bound < (1 << 24) else np.float64
    bands = []
    for o0 in range(0, out_size, _BAND):
        o1 = min(o0 + _BAND, out_size)
        lo = int(xmins[o0:o1].min())
        hi = max(int(ends[o0:o1].max()), lo + 1)
        band = np.zeros((o1 - o0, hi - lo), dtype=dtype)
        rows = np.repeat(np.arange(o1 - o0), k)
        cols = (xmins[o0:o1, None] + np.arange(k)[None, :] - lo).ravel()
        vals = w_int[o0:o1].ravel()
        keep = vals != 0
        band[rows[keep], cols[keep]] = vals[keep]
        bands.append((o0, o1, lo, hi, band))
    return tuple(bands), float(2.0**-prec), dtype


def _pass(x: np.ndarray, out_size: int, out: np.ndarray) -> None:
    """Resample the last axis of ``x`` [N, in] into ``out`` [out_size, N] (note: transposed).

    Producing the transpose lets the next pass read its axis as the last one again, and after
    two passes the result lands in H, W, C order with no extra copy.
    """
    bands, inv, dtype = _band_plan(x.shape[1], out_size)
    x = x.astype(dtype, copy=False)
    acc = out if out.dtype == dtype else np.empty(out.shape, dtype=dtype)
    for o0, o1, lo, hi, band in bands:
        np.matmul(band, x[:, lo:hi].T, out=acc[o0:o1])
    # (acc + 2^(prec-1)) >> prec  ==  floor(acc * 2^-prec + 0.5), exactly, for these magnitudes.
    acc *= inv
    acc += 0.5
    np.floor(acc, out=acc)
    np.minimum(acc, 255, out=acc)
    if acc is not out:
        out[...] = acc


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W x C uint8 image to ``(height, width)`` exactly as torchvision does on CPU.

    An unchanged size returns the input itself (torchvision does the same), and a pass whose axis
    keeps its size is skipped, not filtered.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_uint8 expects an HxWxC uint8 array, got {image.dtype} {image.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    in_h, in_w, c = image.shape
    if (in_h, in_w) == (height, width):
        return image

    # z[(w', c), h]: the horizontally resampled image, laid out so the vertical pass reads its
    # axis last. Filled in row chunks to bound the float copy of a huge source.
    z = np.empty((width, c, in_h), dtype=np.float32)
    rows = max(1, _CHUNK_ELEMS // max(1, in_w * c))
    for h0 in range(0, in_h, rows):
        h1 = min(in_h, h0 + rows)
        planar = image[h0:h1].transpose(2, 0, 1).copy().astype(np.float32)  # [c, hc, w]
        planar = planar.reshape(c * (h1 - h0), in_w)
        if width != in_w:
            part = np.empty((width, c * (h1 - h0)), dtype=np.float32)
            _pass(planar, width, part)
        else:
            part = planar.T
        z[:, :, h0:h1] = part.reshape(width, c, h1 - h0)
    z2 = z.reshape(width * c, in_h)
    if height != in_h:
        out = np.empty((height, width * c), dtype=np.float32)
        _pass(z2, height, out)
    else:
        out = z2.T
    return out.reshape(height, width, c).astype(np.uint8)
