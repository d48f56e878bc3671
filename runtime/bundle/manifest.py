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

__all__ = ["BUNDLE_FORMAT", "MANIFEST", "SCHEMA_VERSION", "Bundle", "confined_name", "open_bundle", "sha256_file"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "collfm2-edge-bundle"
# Bump when the layout or the meaning of a field changes; a runtime reads only its own version.
SCHEMA_VERSION = 1
# Files every precision shares: what the processor reads. Each is verified before use when the
# manifest lists it; one present but unlisted is refused (it would change pixels or ids unseen).
SHARED = ("tokenizer.json", "preprocessor_config.json")
PROCESSOR_FILES = (*SHARED, "processor_config.json", "tokenizer_config.json", "special_tokens_map.json")
# Bounds of the model numbers: far above every LFM2-VL size, far below what would allocate
# gigabytes (position_grid 3000 asks for a 17 GiB interpolation table).
MODEL_BOUNDS = {"image_token_id": (0, 1 << 24), "hidden_size": (1, 16384), "dim": (1, 4096),
                "max_num_patches": (1, 16384), "tokens_per_tile": (1, 16384), "position_grid": (1, 128),
                "downsample_factor": (1, 8)}  # fmt: skip
MAX_MANIFEST_BYTES = 16 << 20


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
        """``rel`` inside the bundle; refused when it (or a link on the way) leads outside it."""
        path = self.path / rel
        root = self.path.resolve()
        if not path.resolve().is_relative_to(root):
            raise ModelFilesError(f"{self.path}: {rel!r} leads outside the bundle; refused")
        return path

    def verify(self, precision: str | None = None) -> None:
        """Check the sha256 of the shared files and of ``precision``'s files (all when None)."""
        entries = [self.precision(precision)] if precision else list(self.manifest["precisions"].values())
        rels = self.processor_files()
        for entry in entries:
            rels += [g["file"] for g in entry["graphs"].values()] + [entry["embeddings"]["file"]]
        self.verify_files(rels)

    def processor_files(self) -> list[str]:
        """The processor's files to verify: the listed ones, and any unlisted one is refused."""
        listed = self.manifest["files"]
        for rel in PROCESSOR_FILES:
            if rel not in listed and (rel in SHARED or self.file(rel).exists()):
                raise ModelFilesError(f"{self.path}: holds {rel} (or needs it) but the manifest lists no hash for it; "
                                      "the bundle was changed after export, re-export it")  # fmt: skip
        return [rel for rel in PROCESSOR_FILES if rel in listed]

    def verify_files(self, rels: list[str]) -> None:
        """Check the sha256 of each bundle-relative path in ``rels`` against the manifest."""
        for rel in rels:
            expected = self.manifest["files"].get(rel)
            path = self.file(rel)
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
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelFilesError(f"{mpath}: {mpath.stat().st_size} bytes, not a manifest (at most "
                                  f"{MAX_MANIFEST_BYTES >> 20} MiB)")  # fmt: skip
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"{mpath}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ModelFilesError(f"{mpath}: nested too deep to be a manifest") from None
    except OSError as exc:
        raise ModelFilesError(f"{mpath}: cannot be read ({exc.strerror or exc})") from exc
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
    for rel, digest in m["files"].items():
        if not confined_name(rel) or not isinstance(digest, str):
            raise bad(f"files lists {rel!r}: not a path inside the bundle with its sha256")
    model = m["model"]
    for key in MODEL_INTS:
        v = model.get(key)
        lo, hi = MODEL_BOUNDS[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise bad(f"model.{key} is {v!r}, not an integer in {lo}..{hi}")
    f2, top = model["downsample_factor"] ** 2, model["max_num_patches"]
    if top % f2 or model["tokens_per_tile"] != top // f2:
        raise bad(f"model.max_num_patches {top}, downsample_factor {model['downsample_factor']} and "
                  f"tokens_per_tile {model['tokens_per_tile']} disagree")  # fmt: skip
    buckets = model.get("patch_buckets", [top])
    ok = isinstance(buckets, list) and all(type(b) is int and b > 0 and b % f2 == 0 for b in buckets)
    if not ok or not buckets or buckets != sorted(set(buckets)) or buckets[-1] != top:
        raise bad(f"model.patch_buckets is {buckets!r}, not increasing multiples of {f2} ending at max_num_patches")
    if not m["precisions"]:
        raise bad("lists no precisions")
    for name, entry in m["precisions"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("graphs"), dict):
            raise bad(f"precisions.{name} has no graphs")
        if not isinstance(entry.get("session_config", {}), dict):
            raise bad(f"precisions.{name}.session_config is not an object")
        for graph in ("vision", "text"):
            g = entry["graphs"].get(graph)
            if not isinstance(g, dict) or not isinstance(g.get("file"), str) or not confined_name(g["file"]):
                raise bad(f"precisions.{name}.graphs.{graph} names no file inside the bundle")
        emb = entry.get("embeddings")
        if not isinstance(emb, dict) or not isinstance(emb.get("file"), str) or not isinstance(emb.get("shape"), list):
            raise bad(f"precisions.{name}.embeddings names no file and shape")
        if not confined_name(emb["file"]):
            raise bad(f"precisions.{name}.embeddings.file {emb['file']!r} is not a path inside the bundle")
        if len(emb["shape"]) != 2 or emb["shape"][1] != model["hidden_size"]:
            raise bad(f"precisions.{name}.embeddings.shape {emb['shape']} does not fit hidden_size "
                      f"{model['hidden_size']}")  # fmt: skip
        outputs = entry["graphs"]["text"].get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            last = (outputs[0].get("shape") or [None])[-1]
            if isinstance(last, int) and last != model["dim"]:
                raise bad(f"model.dim {model['dim']} but the {name} text graph outputs {last}-d vectors")


def confined_name(rel: object) -> bool:
    """A relative path with no ``..``: the only kind of name a manifest may give a file."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and not PureWindowsPath(rel).drive
