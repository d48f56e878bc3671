"""One contract per exported graph: what goes in, what comes out, and how each side builds it.

A ``GraphSpec`` is the single place that names a graph's inputs and outputs, their dtypes and
axes (named dynamic axes, or model numbers such as ``hidden``), how the runtime builds the feeds
from a batch of tiles or sequences, the inputs the exporter traces with, and the shape ranges a
TensorRT optimisation profile takes. The exporter writes ``as_manifest()`` into the bundle; the
runtime takes the input names from the manifest, in the spec's order, and refuses a bundle whose
contract differs from the one it knows how to feed. Adding an input means adding it here (and
using it in the graph module that computes with it, ``export.graphs``).

Everything here is numpy: the export side converts the example arrays to torch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFilesError
from ..preprocess.image import position_weights, unshuffle_index

__all__ = ["GRAPH_SPECS", "TEXT", "VISION", "GraphSpec", "TensorSpec", "check_manifest_contract"]

Numbers = Mapping[str, Any]  # the bundle manifest's "model" section


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    axes: tuple[str, ...]  # dynamic axes by name ("batch", "patches", ...), or a model number ("hidden")

    def shape(self, numbers: Numbers, sizes: Mapping[str, int]) -> list[int]:
        """Concrete dims: dynamic axes from ``sizes``, model numbers from ``numbers``."""
        return [int(sizes[a]) if a in sizes else int(_number(numbers, a)) for a in self.axes]


# Model numbers an axis may name (the rest are dynamic), and how each is derived.
_NUMBERS: dict[str, Callable[[Numbers], int]] = {
    "patch_dim": lambda m: int(m["patch_dim"]),
    "grid_cells": lambda m: int(m["position_grid"]) ** 2,
    "unshuffle": lambda m: int(m["downsample_factor"]) ** 2,
    "hidden": lambda m: int(m["hidden_size"]),
    "dim": lambda m: int(m["dim"]),
}


def _number(numbers: Numbers, axis: str) -> int:
    if axis not in _NUMBERS:
        raise KeyError(f"axis {axis!r} is neither dynamic here nor a model number")
    return _NUMBERS[axis](numbers)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic: tuple[str, ...]  # the named dynamic axes
    # (numbers, per-item arguments...) -> arrays in ``inputs`` order
    build: Callable[..., tuple[np.ndarray, ...]]
    # numbers -> trace inputs in ``inputs`` order (no axis may be 1 or the maximum: it would specialise)
    example: Callable[[Numbers], tuple[np.ndarray, ...]]
    # (profile ranges, numbers) -> per optimisation profile: input name -> [min, opt, max] shapes
    trt_ranges: Callable[[Any, Numbers], list[dict[str, list[list[int]]]]]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{input: {axis index: axis name}}`` for the exporter."""
        return {t.name: {i: a for i, a in enumerate(t.axes) if a in self.dynamic} for t in self.inputs}

    def feeds(self, names: Sequence[str] | None, *args: Any, numbers: Numbers) -> dict[str, np.ndarray]:
        """The feed dict for one call: arrays from ``build``, keyed by ``names`` (the manifest's)."""
        arrays = self.build(numbers, *args)
        return dict(zip(names or self.input_names, arrays, strict=True))

    def as_manifest(self) -> dict[str, Any]:
        def one(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "dtype": t.dtype, "axes": list(t.axes)}

        return {"inputs": [one(t) for t in self.inputs], "outputs": [one(t) for t in self.outputs],
                "dynamic_axes": list(self.dynamic)}  # fmt: skip


# -- vision ----------------------------------------------------------------------------------


def _vision_build(numbers: Numbers, pixel_values: np.ndarray, mask: np.ndarray, shapes: Sequence[tuple[int, int]],
                  bucket: int, arrays: Callable[[int, int, int], tuple[np.ndarray, np.ndarray]] | None = None
                  ) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Tiles [b, >= bucket, patch_dim] at patch-count ``bucket`` -> the vision graph's inputs.

    ``arrays(ph, pw, bucket)`` may serve the per-tile-shape arrays from a cache."""
    grid, f = int(numbers["position_grid"]), int(numbers["downsample_factor"])

    def per_tile(ph: int, pw: int) -> tuple[np.ndarray, np.ndarray]:
        if arrays is not None:
            return arrays(ph, pw, bucket)
        return position_weights(ph, pw, grid, bucket), unshuffle_index(ph, pw, f, bucket // (f * f))

    tiles = [per_tile(int(h), int(w)) for h, w in shapes]
    return (
        np.ascontiguousarray(pixel_values[:, :bucket], dtype=np.float32),
        np.asarray(mask[:, :bucket], dtype=np.int64),
        np.stack([t[0] for t in tiles]),
        np.stack([t[1] for t in tiles]),
    )


def _vision_example(numbers: Numbers) -> tuple[np.ndarray, ...]:
    # A patch count below the maximum and two different tile shapes: no axis can specialise.
    n, shapes = 768, [(26, 28), (20, 36)]
    mask = np.zeros((2, n), np.int64)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
    pixels = np.random.default_rng(0).standard_normal((2, n, int(numbers["patch_dim"]))).astype(np.float32)
    return _vision_build(numbers, pixels, mask, shapes, n)


def _vision_ranges(profile: Any, numbers: Numbers) -> list[dict[str, list[list[int]]]]:
    n = int(numbers["max_num_patches"])
    lo = min(numbers.get("patch_buckets", [n]))
    patches = (lo, n, n)  # the smallest bucket to the maximum; opt: full tiles, the common case
    ranges = []
    for batch, p in zip(profile.vision_batch, patches, strict=True):
        ranges.append({t.name: t.shape(numbers, {"batch": batch, "patches": p, "tokens": p // _number(numbers,
                       "unshuffle")}) for t in VISION.inputs})  # fmt: skip
    return [{name: [r[name] for r in ranges] for name in VISION.input_names}]


VISION = GraphSpec(
    name="vision",
    inputs=(
        TensorSpec("pixel_values", "float32", ("batch", "patches", "patch_dim")),
        TensorSpec("pixel_attention_mask", "int64", ("batch", "patches")),
        TensorSpec("pos_weights", "float32", ("batch", "patches", "grid_cells")),
        TensorSpec("unshuffle_index", "int64", ("batch", "tokens", "unshuffle")),
    ),
    outputs=(TensorSpec("image_tokens", "float32", ("batch", "tokens", "hidden")),),
    dynamic=("batch", "patches", "tokens"),
    build=_vision_build,
    example=_vision_example,
    trt_ranges=_vision_ranges,
)


# -- text ------------------------------------------------------------------------------------


def _text_build(numbers: Numbers, inputs_embeds: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    return np.ascontiguousarray(inputs_embeds, dtype=np.float32), np.asarray(attention_mask, dtype=np.int64)


def _text_example(numbers: Numbers) -> tuple[np.ndarray, ...]:
    # Batch 2, sequence 9, one row left-padded: neither axis can specialise to 1.
    mask = np.ones((2, 9), np.int64)
    mask[0, :3] = 0
    embeds = np.random.default_rng(1).standard_normal((2, 9, int(numbers["hidden_size"]))).astype(np.float32)
    return embeds, mask


def _text_ranges(profile: Any, numbers: Numbers) -> list[dict[str, list[list[int]]]]:
    out = []  # two profiles: queries (short), documents (up to a 10-tile page + thumbnail)
    for batch, seq in ((profile.query_batch, profile.query_seq), (profile.doc_batch, profile.doc_seq)):
        out.append({t.name: [t.shape(numbers, {"batch": b, "sequence": s}) for b, s in zip(batch, seq, strict=True)]
                    for t in TEXT.inputs})  # fmt: skip
    return out


TEXT = GraphSpec(
    name="text",
    inputs=(
        TensorSpec("inputs_embeds", "float32", ("batch", "sequence", "hidden")),
        TensorSpec("attention_mask", "int64", ("batch", "sequence")),
    ),
    outputs=(TensorSpec("embeddings", "float32", ("batch", "sequence", "dim")),),
    dynamic=("batch", "sequence"),
    build=_text_build,
    example=_text_example,
    trt_ranges=_text_ranges,
)

GRAPH_SPECS: dict[str, GraphSpec] = {"vision": VISION, "text": TEXT}


def check_manifest_contract(where: str, contract: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The input names per graph a bundle's manifest gives, after checking that its contract is
    the one this runtime feeds (same inputs in the same order, dtypes, axes). Bundles written
    before the contract existed (no ``contract`` entry) get the spec's own names."""
    if contract is None:
        return {g: s.input_names for g, s in GRAPH_SPECS.items()}
    names = {}
    for graph, spec in GRAPH_SPECS.items():
        got = contract.get(graph) if isinstance(contract, Mapping) else None
        want = spec.as_manifest()
        if not isinstance(got, Mapping):
            raise ModelFilesError(f"{where}: the manifest's graph contract has no {graph!r}; re-export the bundle")
        for key in ("inputs", "outputs"):
            if [(t.get("dtype"), t.get("axes")) for t in got.get(key, [])] != [(t["dtype"], t["axes"]) for t in
                                                                                want[key]]:  # fmt: skip
                raise ModelFilesError(
                    f"{where}: the {graph} graph's {key} ({got.get(key)}) are not the contract this runtime feeds "
                    f"({want[key]}); use the collfm2-edge version that exported the bundle, or re-export it"
                )
        names[graph] = [t["name"] for t in got["inputs"]]
    return names
