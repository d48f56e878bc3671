"""Reference model: strict offline loading of the published layout, and the head's maths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from export.checkpoint import (  # noqa: E402
    build_preset,
    load_checkpoint,
    normalize_key,
    resolve_base,
    save_checkpoint,
)
from export.presets import shipped_base_config  # noqa: E402
from runtime import ColLFM2Processor, ModelFilesError  # noqa: E402

TINY_BASE = "collfm2-edge/tiny-lfm2-vl"


def _batch(ckpt: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    proc = ColLFM2Processor.from_pretrained(ckpt)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(512, 512, 3), (1240, 900, 3), (120, 300, 3)]]
    return proc.process_images(imgs)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("vision_keys", ["4.57", "5.x"])
def test_disk_checkpoint_equals_in_memory_model(tmp_path: Path, vision_keys: str) -> None:
    mem = build_preset("tiny")
    ckpt = save_checkpoint(mem.model, tmp_path / "ck", base_model=TINY_BASE, vision_keys=vision_keys)
    keys = load_file(str(ckpt / "model.safetensors")).keys()
    assert any(k.startswith("model.vision_tower.vision_model.") for k in keys) == (vision_keys == "4.57")
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(ckpt / "model.safetensors")).values())
    disk = load_checkpoint(ckpt)
    _assert_same_weights(mem.model, disk.model)  # bf16-rounded preset: the round trip is lossless
    batch = _batch(ckpt)
    for a, b in zip(mem.model.encode(batch), disk.model.encode(batch), strict=True):
        # Same weights, same maths; only kernel-level float non-determinism (tensor alignment,
        # thread split of reductions) may move the last bits.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_dropped_vision_key_is_an_error_listing_it(tmp_path: Path, tiny_ckpt: Path) -> None:
    key = "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"
    ck = _rewrite(tiny_ckpt, tmp_path / "drop", lambda t: t.pop(key))
    with pytest.raises(ModelFilesError, match=r"1 missing: model\.vision_tower\.encoder\.layers\.0\.self_attn\.q_proj"):
        load_checkpoint(ck)


def test_unknown_key_and_wrong_shape_are_errors(tmp_path: Path, tiny_ckpt: Path) -> None:
    def edit(t):
        t["model.language_model.layers.99.extra.weight"] = torch.zeros(2)
        t["custom_text_proj.bias"] = torch.zeros(64, dtype=torch.bfloat16)

    ck = _rewrite(tiny_ckpt, tmp_path / "extra", edit)
    with pytest.raises(ModelFilesError) as info:
        load_checkpoint(ck)
    msg = str(info.value)
    assert "1 unexpected: model.language_model.layers.99.extra.weight" in msg
    assert "custom_text_proj.bias (64,) != (128,)" in msg
    assert "\n" not in msg


def test_upstream_strict_false_would_leave_vision_random(tiny_ckpt: Path) -> None:
    """Why we load strictly: upstream's remap + strict=False silently drops every 4.57 vision key
    under transformers 5.x, while our loader maps them and uses all of them."""
    tensors = load_file(str(tiny_ckpt / "model.safetensors"))
    fresh = build_preset("tiny", seed=123).model
    upstream_keys = {("base_model." + k if not k.startswith("custom_text_proj") else k) for k in tensors}
    wrapper_names = {"base_model." + k for k in fresh.state_dict() if not k.startswith("custom_text_proj")}
    wrapper_names |= {k for k in fresh.state_dict() if k.startswith("custom_text_proj")}
    dropped = sorted(upstream_keys - wrapper_names)
    assert dropped and all(".vision_tower.vision_model." in k for k in dropped)
    n_vision = sum(1 for k in fresh.state_dict() if k.startswith("model.vision_tower."))
    assert len(dropped) == n_vision  # the whole vision tower
    ours = {normalize_key(k) for k in tensors}
    assert ours == set(fresh.state_dict())


def test_tied_lm_head_is_accepted_untied_refused(tmp_path: Path, tiny_ckpt: Path) -> None:
    emb_key = "model.language_model.embed_tokens.weight"
    ok = _rewrite(tiny_ckpt, tmp_path / "tied", lambda t: t.__setitem__("lm_head.weight", t[emb_key].clone()))
    assert any("lm_head" in n for n in load_checkpoint(ok).notes)
    bad = _rewrite(tiny_ckpt, tmp_path / "untied", lambda t: t.__setitem__("lm_head.weight", t[emb_key] + 1))
    with pytest.raises(ModelFilesError, match="untied"):
        load_checkpoint(bad)


def test_missing_files_are_clear(tmp_path: Path, tiny_ckpt: Path) -> None:
    with pytest.raises(ModelFilesError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")
    ck = tmp_path / "noweights"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "model.safetensors").unlink()
    with pytest.raises(ModelFilesError, match=r"no model\.safetensors"):
        load_checkpoint(ck)
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFilesError, match="cannot read safetensors"):
        load_checkpoint(ck)
    (ck / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelFilesError, match="expected 'collfm2'"):
        load_checkpoint(ck)


# -- base resolution ----------------------------------------------------------------------------


def _base_dir(path: Path, weights_from: Path | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(shipped_base_config(TINY_BASE)))
    if weights_from is not None:
        t = {k: v for k, v in load_file(str(weights_from / "model.safetensors")).items() if "custom_text_proj" not in k}
        save_file(t, str(path / "model.safetensors"))
    return path


def test_base_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_base(TINY_BASE).kind == "shipped"
    snap = tmp_path / "hub" / "models--collfm2-edge--tiny-lfm2-vl"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    _base_dir(snap / "snapshots" / "abc123")
    assert resolve_base(TINY_BASE).kind == "hf-cache"
    local = _base_dir(tmp_path / "local")
    assert resolve_base(str(local)).kind == "local"
    explicit = _base_dir(tmp_path / "explicit")
    assert resolve_base(str(local), base=explicit).kind == "arg"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelFilesError, match="offline"):
        resolve_base("SomeOrg/unknown-model")


def test_head_only_projection_pt(tmp_path: Path, tiny_ckpt: Path) -> None:
    full = load_checkpoint(tiny_ckpt).model
    base = _base_dir(tmp_path / "base", weights_from=tiny_ckpt)
    ck = tmp_path / "headonly"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "model.safetensors").unlink()
    head = {"custom_text_proj": full.custom_text_proj.state_dict(), "config": {"dim": 128}}
    torch.save(head, ck / "collfm2_projection.pt")
    with pytest.raises(ModelFilesError, match="base weights"):
        load_checkpoint(ck)  # the shipped config has no weights
    loaded = load_checkpoint(ck, base=base).model
    _assert_same_weights(full, loaded)


def test_projection_pt_pickle_with_code_is_refused(tmp_path: Path, tiny_ckpt: Path) -> None:
    base = _base_dir(tmp_path / "base", weights_from=tiny_ckpt)
    ck = tmp_path / "evil"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "model.safetensors").unlink()
    torch.save({"custom_text_proj": {}, "payload": shutil.copytree}, ck / "collfm2_projection.pt")
    with pytest.raises(ModelFilesError, match="weights_only"):
        load_checkpoint(ck, base=base)


# -- forward ------------------------------------------------------------------------------------


def test_head_rows_are_unit_norm_and_padding_is_zero(tiny_ckpt: Path) -> None:
    model = load_checkpoint(tiny_ckpt).model
    proc = ColLFM2Processor.from_pretrained(tiny_ckpt)
    q = proc.process_queries(["short", "a noticeably longer query text"])
    with torch.inference_mode():
        emb = model(**{k: torch.from_numpy(v) for k, v in q.items()}).numpy()
    mask = q["attention_mask"].astype(bool)
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb[mask], axis=-1), 1.0, atol=1e-5)
    assert (emb[~mask] == 0).all()


def test_left_padded_batch_equals_single(tiny_ckpt: Path) -> None:
    model = load_checkpoint(tiny_ckpt).model
    proc = ColLFM2Processor.from_pretrained(tiny_ckpt)
    queries = ["short", "a noticeably longer query text"]
    together = model.encode(proc.process_queries(queries))
    for i, q in enumerate(queries):
        alone = model.encode(proc.process_queries([q]))[0]
        np.testing.assert_allclose(together[i], alone, atol=2e-5)


def test_bf16_path_tracks_fp32(tiny_ckpt: Path) -> None:
    """The dtype the reference uses on CUDA, exercised on CPU with the tiny model."""
    fp32 = load_checkpoint(tiny_ckpt).model
    bf16 = load_checkpoint(tiny_ckpt, dtype=torch.bfloat16).model
    batch = ColLFM2Processor.from_pretrained(tiny_ckpt).process_images([np.zeros((300, 400, 3), np.uint8)])
    a, b = fp32.encode(batch)[0], bf16.encode(batch)[0]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.min() > 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(tiny_ckpt: Path, dtype) -> None:
    cpu = load_checkpoint(tiny_ckpt).model
    gpu = load_checkpoint(tiny_ckpt, device="cuda", dtype=dtype).model
    batch = _batch(tiny_ckpt)
    for a, b in zip(cpu.encode(batch), gpu.encode(batch), strict=True):
        cos = (a * b).sum(-1)  # both unit rows
        assert cos.min() > (0.999 if dtype == torch.float32 else 0.95)
