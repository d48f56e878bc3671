"""Shared fixtures: tiny checkpoints written to disk, and the upstream processors as oracles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# transformers imports torchvision whenever it is installed. The torchvision that pairs with the
# local CPU torch 2.13 wheel on PyPI (0.28.0) is a CUDA build whose C ops cannot load, and its
# import then dies in torchvision/_meta_registrations.py ("operator torchvision::nms does not
# exist"). That module only registers fake kernels for those C ops (nms, roi_align, ...), which
# nothing here calls: the resize that LFM2-VL's processor uses is F.interpolate, pure torch. So
# we stub it before anything imports transformers. See export/_compat.py.
from export._compat import patch_torchvision

patch_torchvision()

# The default engine follows the CPU (runtime.encoder.defaults): pinned here, for this process and
# every command the tests start, so no outcome depends on the machine. tests/test_defaults.py
# runs the table itself with the CPU's features given.
os.environ["COLLFM2_ENGINE"] = "ort-cpu"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset written in the published layout (4.57 vision key names)."""
    from export.checkpoint import build_preset, save_checkpoint

    loaded = build_preset("tiny")
    return save_checkpoint(
        loaded.model, tmp_path_factory.mktemp("ckpt") / "tiny", base_model="collfm2-edge/tiny-lfm2-vl"
    )


@pytest.fixture(scope="session")
def tiny_ckpt_nothumb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.checkpoint import build_preset, save_checkpoint

    loaded = build_preset("tiny")
    return save_checkpoint(
        loaded.model,
        tmp_path_factory.mktemp("ckpt") / "tiny-nothumb",
        base_model="collfm2-edge/tiny-lfm2-vl",
        use_thumbnail=False,
    )


@pytest.fixture(scope="session")
def tiny_model():
    from export.checkpoint import build_preset

    return build_preset("tiny").model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset exported in every precision, gated and validated (about 25 s)."""
    from export.onnx_export import OnnxConfig, run
    from export.recipes import Precision

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    cfg = OnnxConfig("tiny", str(out), tuple(Precision), validate=True)
    path, passed = run(cfg, log=lambda msg: None)
    assert passed, "the tiny bundle failed its own validation"
    return path
