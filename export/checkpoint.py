"""Load and write ColLFM2 checkpoints in the layout sauerkrautlm-colpali 0.1.0 publishes.

Layout (``docs/checkpoint-layout.md``)::

    config.json              {"model_type": "collfm2", "base_model": "LiquidAI/LFM2-VL-450M", ...}
    model.safetensors        the whole model, bf16: model.vision_tower.*, model.multi_modal_projector.*,
                             model.language_model.*, custom_text_proj.{weight,bias}; no lm_head (tied)
    collfm2_projection.pt    (fallback, head only; a pickle, loaded with weights_only=True)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    preprocessor_config.json, processor_config.json

Differences from upstream, on purpose:

* **Strict.** Upstream loads with ``strict=False``; under transformers 5.x the 4.57 vision key
  names (``model.vision_tower.vision_model.*``) silently miss and leave the vision tower random.
  We accept both namings, then require every checkpoint tensor to be used and every parameter
  to be loaded, or raise ``ModelFilesError`` listing the keys.
* **Offline.** The architecture is not in the checkpoint; upstream downloads ``base_model``.
  We resolve it from: an explicit ``base`` dir, ``base_model`` as a local dir, the local
  Hugging Face cache, then the configs this project ships. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ModelFilesError, UserError

from ._compat import patch_torchvision
from .presets import PRESETS, Preset, shipped_base_config
from .tokenizer import build_synthetic_tokenizer, write_tokenizer_files

patch_torchvision()

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from .reference import HEAD_DIM, ColLFM2Reference, build_config  # noqa: E402

__all__ = [
    "PROCESSOR_FILES",
    "BaseSource",
    "LoadedModel",
    "atomic_dir",
    "build_preset",
    "load_checkpoint",
    "load_for_writing",
    "load_model",
    "normalize_key",
    "resolve_base",
    "save_checkpoint",
    "write_processor_files",
]

_VISION_457 = "model.vision_tower.vision_model."
_VISION_5X = "model.vision_tower."


@dataclass(frozen=True)
class BaseSource:
    """Where the base architecture came from: ``kind`` in {arg, local, hf-cache, shipped}."""

    kind: str
    location: str
    config: dict[str, Any] = field(repr=False)
    weights_dir: Path | None = None  # a directory that also holds base weights, if any


@dataclass
class LoadedModel:
    model: ColLFM2Reference
    source: str  # preset name or checkpoint path
    base: BaseSource | None
    random_weights: bool
    base_model: str  # config.json's base_model, carried to any checkpoint written from this one
    preset: str | None = None  # the preset the weights came from, when random
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Base architecture resolution


def _config_in_dir(path: Path) -> dict[str, Any] | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text(encoding="utf-8"))
    if data.get("model_type") == "collfm2":
        raise ModelFilesError(f"{path}: is a ColLFM2 checkpoint, not an LFM2-VL base")
    return data


def _hf_cache_dir(repo_id: str) -> Path | None:
    """The newest cached snapshot of ``repo_id`` holding a config.json, without network."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    # Read the cache location now, not at huggingface_hub's import, so HF_HUB_CACHE set later counts.
    cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except Exception:  # a malformed repo id; the cache simply has nothing for it
        return None
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found).parent
    return None


def resolve_base(base_model: str, base: str | Path | None = None, checkpoint_dir: Path | None = None) -> BaseSource:
    """Find the LFM2-VL architecture for ``base_model`` offline, in the documented order."""
    tried = []
    if base is not None:
        path = Path(base)
        data = _config_in_dir(path)
        if data is None:
            raise ModelFilesError(f"--base {path}: no config.json there")
        return BaseSource("arg", str(path), data, path)
    candidates = [Path(base_model)]
    if checkpoint_dir is not None and not Path(base_model).is_absolute():
        candidates.insert(0, checkpoint_dir / base_model)
    for path in candidates:
        if path.is_dir():
            data = _config_in_dir(path)
            if data is not None:
                return BaseSource("local", str(path), data, path)
        tried.append(f"local dir {path}")
    cached = _hf_cache_dir(base_model)
    if cached is not None:
        data = _config_in_dir(cached)
        if data is not None:
            return BaseSource("hf-cache", str(cached), data, cached)
    tried.append("the Hugging Face cache")
    shipped = shipped_base_config(base_model)
    if shipped is not None:
        return BaseSource("shipped", f"collfm2-edge's config for {base_model}", shipped, None)
    tried.append("the configs shipped with collfm2-edge")
    raise ModelFilesError(
        f"cannot find the architecture of base_model {base_model!r} offline (tried {', '.join(tried)}); "
        "pass --base DIR with its config.json"
    )


# ---------------------------------------------------------------------------------------------
# Keys


def normalize_key(key: str) -> str:
    """Map any published spelling of a tensor name to ``ColLFM2Reference``'s parameter name."""
    for prefix in ("base_model.model.custom_text_proj.", "model.custom_text_proj."):
        if key.startswith(prefix):
            return "custom_text_proj." + key[len(prefix) :]
    if key.startswith("base_model."):
        key = key[len("base_model.") :]
    if key.startswith(_VISION_457):
        key = _VISION_5X + key[len(_VISION_457) :]  # transformers 4.57 -> 5.x naming
    return key


def _head_keys(model: ColLFM2Reference) -> set[str]:
    return {k for k in model.state_dict() if k.startswith("custom_text_proj.")}


def _load_state(model: ColLFM2Reference, tensors: dict[str, torch.Tensor], where: str, head_only: bool = False) -> None:
    expected = model.state_dict()
    want = _head_keys(model) if head_only else set(expected)
    problems = []
    unexpected = sorted(set(tensors) - want)
    missing = sorted(want - set(tensors))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_preview(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing: {_preview(missing)}")
    shapes = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} with wrong shapes: {_preview(shapes)}")
    if problems:
        raise ModelFilesError(f"{where}: checkpoint does not match the architecture: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in tensors.items():
            expected[k].copy_(v.to(expected[k].dtype))


def _preview(items: list[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _read_safetensors(path: Path, model: ColLFM2Reference) -> tuple[dict[str, torch.Tensor], list[str]]:
    """All tensors of ``path`` under normalised names; a tied lm_head copy is dropped."""
    notes = []
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                name = normalize_key(key)
                if name in tensors:
                    raise ModelFilesError(f"{path}: two tensors map to {name!r}")
                tensors[name] = f.get_tensor(key)
    except ModelFilesError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError
        raise ModelFilesError(f"{path}: cannot read safetensors ({exc})") from exc
    for name in [k for k in tensors if k in ("lm_head.weight", "model.lm_head.weight")]:
        embed = tensors.get("model.language_model.embed_tokens.weight")
        lm_head = tensors.pop(name)
        if embed is None or not torch.equal(lm_head, embed):
            raise ModelFilesError(f"{path}: has an untied {name}; ColLFM2 ties it to the embeddings")
        notes.append(f"dropped {name} (identical to the tied embeddings)")
    return tensors, notes


# ---------------------------------------------------------------------------------------------
# Build / load


def _round_to_bf16_(model: torch.nn.Module) -> None:
    """Make fp32 weights exactly representable in bf16, so a bf16 checkpoint round-trips."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def build_preset(name: str, seed: int | None = None, attn_implementation: str = "sdpa") -> LoadedModel:
    """A preset model in memory, fp32 on CPU, weights rounded to bf16 like a saved checkpoint."""
    if name not in PRESETS:
        raise ModelFilesError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or a checkpoint dir")
    preset: Preset = PRESETS[name]
    base = resolve_base(preset.base_model)
    config = build_config(base.config, attn_implementation)
    torch.manual_seed(preset.seed if seed is None else seed)
    model = ColLFM2Reference(config).eval()
    _round_to_bf16_(model)
    return LoadedModel(
        model, name, base, random_weights=True, base_model=preset.base_model, preset=name, notes=[preset.description]
    )


def load_checkpoint(
    path: str | Path,
    base: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a published-layout ColLFM2 checkpoint directory strictly and offline."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFilesError(f"{path}: not a directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelFilesError(f"{path}: no config.json; not a ColLFM2 checkpoint")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelFilesError(f"{cfg_file}: invalid JSON ({exc})") from exc
    if cfg.get("model_type") != "collfm2":
        raise ModelFilesError(f"{cfg_file}: model_type is {cfg.get('model_type')!r}, expected 'collfm2'")
    base_model = cfg.get("base_model", "LiquidAI/LFM2-VL-450M")
    source = resolve_base(base_model, base, checkpoint_dir=path)
    config = build_config(source.config, attn_implementation)
    with torch.device("meta"):
        model = ColLFM2Reference(config)
    model = model.to_empty(device="cpu").to(torch.float32)
    _reinit_buffers(model)
    notes = [f"architecture from {source.kind}: {source.location}"]

    full = path / "model.safetensors"
    head = path / "collfm2_projection.pt"
    if full.is_file():
        tensors, extra = _read_safetensors(full, model)
        notes += extra
        _load_state(model, tensors, str(full))
        notes.append(f"loaded {len(tensors)} tensors from model.safetensors (strict)")
    elif head.is_file():
        if source.weights_dir is None or not (source.weights_dir / "model.safetensors").is_file():
            raise ModelFilesError(
                f"{path}: only has the head (collfm2_projection.pt); the base weights must come from a local "
                f"LFM2-VL directory with model.safetensors (--base DIR), and {source.location} has none"
            )
        base_tensors, extra = _read_safetensors(source.weights_dir / "model.safetensors", model)
        notes += extra
        base_tensors = {k: v for k, v in base_tensors.items() if not k.startswith("custom_text_proj.")}
        head_tensors = _read_projection(head)
        _load_state(model, {**base_tensors, **head_tensors}, f"{source.weights_dir} + {head}")
        notes.append("loaded base weights + head from collfm2_projection.pt")
    else:
        raise ModelFilesError(f"{path}: no model.safetensors (nor collfm2_projection.pt)")
    model = model.to(device=device, dtype=dtype).eval()
    provenance = cfg.get("collfm2_edge") or {}
    random_weights = bool(provenance.get("random_weights", False))
    if random_weights:
        notes.append(f"RANDOM WEIGHTS (written from preset {provenance.get('preset')!r})")
    return LoadedModel(model, str(path), source, random_weights, base_model, provenance.get("preset"), notes=notes)


def _reinit_buffers(model: ColLFM2Reference) -> None:
    """Recompute non-persistent buffers (RoPE inv_freq) that meta init left as garbage.

    They are not in checkpoints; rebuilding the small module that owns them on CPU is the one
    way that stays right whatever RoPE variant the config picks.
    """
    for _name, module in list(model.named_modules()):
        if "inv_freq" in dict(module.named_buffers(recurse=False)):
            fresh = type(module)(module.config)
            for buf_name, buf in fresh.named_buffers(recurse=False):
                setattr(module, buf_name, buf)


def _read_projection(path: Path) -> dict[str, torch.Tensor]:
    """Upstream's head-only fallback. It is a pickle: never unpickle arbitrary objects."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFilesError(f"{path}: refused or unreadable with weights_only=True ({exc})") from exc
    state = data.get("custom_text_proj") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ModelFilesError(f"{path}: expected a dict with a 'custom_text_proj' state dict")
    return {f"custom_text_proj.{k}": v for k, v in state.items()}


def load_model(spec: str | Path, base: str | Path | None = None, **kwargs: Any) -> LoadedModel:
    """``spec`` is a preset name (``random``, ``tiny``) or a checkpoint directory."""
    if isinstance(spec, str) and spec in PRESETS and not Path(spec).is_dir():
        loaded = build_preset(spec, attn_implementation=kwargs.pop("attn_implementation", "sdpa"))
        device, dtype = kwargs.get("device", "cpu"), kwargs.get("dtype", torch.float32)
        loaded.model.to(device=device, dtype=dtype)
        return loaded
    return load_checkpoint(spec, base=base, **kwargs)


def load_for_writing(
    spec: str, base: str | None, out: str | Path, force: bool, what: str, log: Callable[[str], None]
) -> LoadedModel:
    """The load step of every export target: refuse an existing ``out`` without ``force``, load
    ``spec`` and say what came in, and warn loudly when the weights are random. ``what`` names the
    artifact being written (``"checkpoint"``, ``"bundle"``) in the warning."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it")
    t0 = time.perf_counter()
    log(f"loading {spec} ...")
    loaded = load_model(spec, base=base)
    log(f"loaded in {time.perf_counter() - t0:.1f}s; " + "; ".join(loaded.notes))
    if loaded.random_weights:
        log(f"WARNING: RANDOM WEIGHTS. This {what} has the real architecture but no trained weights;")
        log("         its embeddings and rankings are meaningless. Use it to test the pipeline, not to search.")
    return loaded


# ---------------------------------------------------------------------------------------------
# Write


def preprocessor_config(use_thumbnail: bool = True) -> dict[str, Any]:
    """``preprocessor_config.json`` for presets: Lfm2VlImageProcessor's defaults, spelled out."""
    return {
        "image_processor_type": "Lfm2VlImageProcessor",
        "processor_class": "Lfm2VlProcessor",
        "downsample_factor": 2,
        "do_image_splitting": True,
        "min_tiles": 2,
        "max_tiles": 10,
        "use_thumbnail": use_thumbnail,
        "min_image_tokens": 64,
        "max_image_tokens": 256,
        "encoder_patch_size": 16,
        "tile_size": 512,
        "max_pixels_tolerance": 2.0,
        "do_resize": True,
        "size": {"height": 512, "width": 512},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
    }


def save_checkpoint(
    model: ColLFM2Reference,
    out_dir: str | Path,
    base_model: str,
    vision_keys: str = "4.57",
    tokenizer_dir: str | Path | None = None,
    use_thumbnail: bool = True,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a published-layout checkpoint (bf16 safetensors + processor files).

    ``vision_keys="4.57"`` writes ``model.vision_tower.vision_model.*`` as the published file
    presumably has; ``"5.x"`` writes the newer names. Tokenizer and processor files are copied
    from ``tokenizer_dir`` when given, else the synthetic tokenizer is written. The directory
    appears atomically: it is built beside the target and renamed at the end.
    """
    if vision_keys not in ("4.57", "5.x"):
        raise ValueError("vision_keys must be '4.57' or '5.x'")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ModelFilesError(f"{out_dir}: already exists (pass overwrite=True / --force)")
    with atomic_dir(out_dir) as tmp:
        state = {}
        for key, value in model.state_dict().items():
            if vision_keys == "4.57" and key.startswith(_VISION_5X):
                key = _VISION_457 + key[len(_VISION_5X) :]
            state[key] = value.detach().to("cpu", torch.bfloat16).contiguous()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = {
            "model_type": "collfm2",
            "base_model": base_model,
            "dim": HEAD_DIM,
            "torch_dtype": "bfloat16",
        }
        if provenance:
            # Upstream reads only model_type and base_model; this extra section lets every later
            # step say plainly that the weights are random.
            config["collfm2_edge"] = provenance
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_processor_files(tmp, tokenizer_dir, use_thumbnail)
    return out_dir


PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
)  # fmt: skip


def write_processor_files(out_dir: Path, tokenizer_dir: str | Path | None, use_thumbnail: bool = True) -> None:
    """Tokenizer + processor files: copied from ``tokenizer_dir``, else the synthetic set for presets."""
    if tokenizer_dir is not None:
        for name in PROCESSOR_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, out_dir / name)
        return
    write_tokenizer_files(build_synthetic_tokenizer(), out_dir)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(use_thumbnail), indent=2) + "\n", encoding="utf-8"
    )
    (out_dir / "processor_config.json").write_text(
        json.dumps({"processor_class": "Lfm2VlProcessor"}, indent=2) + "\n", encoding="utf-8"
    )


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Build a directory beside ``out_dir`` and rename it into place only if the block succeeds.

    An interrupted run leaves a hidden ``.name.*`` temp dir, never a half-written ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        # mkdtemp makes a private dir; these are meant to be shared like any model dir.
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
