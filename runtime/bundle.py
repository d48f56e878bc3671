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

from .errors import ModelFilesError

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
    for key in ("precisions", "files", "model", "source", "default_precision"):
        if key not in manifest:
            raise ModelFilesError(f"{mpath}: missing field {key!r}; the bundle is malformed")
    bundle = Bundle(path, manifest)
    bundle.precision(precision)  # a clear error for a precision the bundle lacks
    if verify:
        bundle.verify(precision)
    return bundle
