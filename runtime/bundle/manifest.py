"""Reading and checking an exported bundle: ``manifest.json`` is the contract.

A bundle directory holds, per precision, ``<precision>/vision.onnx``, ``<precision>/text.onnx``
and ``<precision>/embeddings.npy``, plus the tokenizer and processor files shared by all
precisions. ``manifest.json`` lists every file with its sha256, each graph's inputs and outputs
(dtypes and named axes), the model numbers the runtime needs, the source and the validation
results. Nothing here unpickles: the manifest is JSON, the table is ``.npy`` read with
``allow_pickle=False`` and the graphs are ONNX protobufs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFilesError

__all__ = ["BUNDLE_FORMAT", "MANIFEST", "SCHEMA_VERSION", "Bundle", "open_bundle", "sha256_file"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "collfm2-edge-bundle"
# Bump when the layout or the meaning of a field changes; a runtime reads only its own version.
SCHEMA_VERSION = 1
# Files every precision shares.
SHARED = ("tokenizer.json", "preprocessor_config.json")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["precisions"])

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest["source"].get("random_weights", False))

    def precision(self, name: str | None = None) -> dict[str, Any]:
        """The manifest entry of ``name`` (default: the bundle's default precision)."""
        name = name or self.manifest["default_precision"]
        if name not in self.manifest["precisions"]:
            raise ModelFilesError(
                f"{self.path}: has no {name!r} graphs; it has {', '.join(self.precisions)} "
                f"(re-export with --precision {name})"
            )
        return self.manifest["precisions"][name]

    def methods(self, name: str) -> list[str]:
        """The method the gate chose for each graph of precision ``name`` ([] if the bundle lacks it)."""
        entry = self.manifest["precisions"].get(name) or {}
        return [str(g.get("method")) for g in (entry.get("graphs") or {}).values()]

    def file(self, rel: str) -> Path:
        return self.path / rel

    def verify(self, precision: str | None = None) -> None:
        """Check the sha256 of the shared files and of ``precision``'s files (all when None)."""
        entries = [self.precision(precision)] if precision else list(self.manifest["precisions"].values())
        rels = list(SHARED)
        for entry in entries:
            rels += [g["file"] for g in entry["graphs"].values()] + [entry["embeddings"]["file"]]
        self.verify_files(rels)

    def verify_files(self, rels: list[str]) -> None:
        """Check the sha256 of each bundle-relative path in ``rels`` against the manifest."""
        for rel in rels:
            expected = self.manifest["files"].get(rel)
            path = self.path / rel
            if expected is None:
                raise ModelFilesError(f"{self.path}: manifest lists no hash for {rel}; the bundle is malformed")
            if not path.is_file():
                raise ModelFilesError(f"{path}: missing from the bundle; re-export it")
            actual = sha256_file(path)
            if actual != expected:
                raise ModelFilesError(
                    f"{path}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...); "
                    "the file was changed or truncated, re-export the bundle"
                )


def open_bundle(path: str | Path, precision: str | None = None, verify: bool = True) -> Bundle:
    """Read ``manifest.json``, check schema and format, and (by default) the hashes of the files
    that ``precision`` uses. Raises ``ModelFilesError`` with the reason."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFilesError(f"{path}: no such bundle directory (export one with python -m export --target onnx)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ModelFilesError(f"{path}: no {MANIFEST}; not a collfm2-edge bundle (or an interrupted export)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"{mpath}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ModelFilesError(f"{mpath}: format is not {BUNDLE_FORMAT!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ModelFilesError(
            f"{mpath}: bundle schema version {version!r}, this runtime reads version {SCHEMA_VERSION}; "
            "re-export the bundle with this version of collfm2-edge"
        )
    _check_shape(mpath, manifest)
    bundle = Bundle(path, manifest)
    bundle.precision(precision)  # a clear error for a precision the bundle lacks
    if verify:
        bundle.verify(precision)
    return bundle


# The model numbers the runtime computes with: each must be a positive integer.
MODEL_INTS = ("image_token_id", "hidden_size", "dim", "max_num_patches", "tokens_per_tile", "position_grid",
              "downsample_factor")  # fmt: skip


def _check_shape(mpath: Path, m: dict[str, Any]) -> None:
    """Valid JSON is not yet a manifest: refuse, naming the field, what the runtime would trip on."""

    def bad(what: str) -> ModelFilesError:
        return ModelFilesError(f"{mpath}: {what}; the bundle is malformed (re-export it)")

    for key, kind in (("precisions", dict), ("files", dict), ("model", dict), ("source", dict),
                      ("default_precision", str)):  # fmt: skip
        if key not in m:
            raise bad(f"missing field {key!r}")
        if not isinstance(m[key], kind):
            raise bad(f"field {key!r} is a {type(m[key]).__name__}, not a {kind.__name__}")
    model = m["model"]
    for key in MODEL_INTS:
        v = model.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "image_token_id" else 1):
            raise bad(f"model.{key} is {v!r}, not a positive integer")
    buckets = model.get("patch_buckets", [model["max_num_patches"]])
    if not isinstance(buckets, list) or not buckets or not all(isinstance(b, int) and b > 0 for b in buckets):
        raise bad(f"model.patch_buckets is {buckets!r}, not a non-empty list of positive integers")
    if not m["precisions"]:
        raise bad("lists no precisions")
    for name, entry in m["precisions"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("graphs"), dict):
            raise bad(f"precisions.{name} has no graphs")
        for graph in ("vision", "text"):
            g = entry["graphs"].get(graph)
            if not isinstance(g, dict) or not isinstance(g.get("file"), str):
                raise bad(f"precisions.{name}.graphs.{graph} names no file")
        emb = entry.get("embeddings")
        if not isinstance(emb, dict) or not isinstance(emb.get("file"), str) or not isinstance(emb.get("shape"), list):
            raise bad(f"precisions.{name}.embeddings names no file and shape")
        if len(emb["shape"]) != 2 or emb["shape"][1] != model["hidden_size"]:
            raise bad(f"precisions.{name}.embeddings.shape {emb['shape']} does not fit hidden_size "
                      f"{model['hidden_size']}")  # fmt: skip
        outputs = entry["graphs"]["text"].get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            last = (outputs[0].get("shape") or [None])[-1]
            if isinstance(last, int) and last != model["dim"]:
                raise bad(f"model.dim {model['dim']} but the {name} text graph outputs {last}-d vectors")
