"""The per-tile arrays that replace SigLIP2's data-dependent ops, checked against transformers."""

from __future__ import annotations

import pytest

from runtime.preprocess.image import position_weights, unshuffle_index

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("ph,pw", [(32, 32), (26, 36), (38, 26), (16, 16), (2, 64), (12, 8)])
def test_position_weights_match_siglip2_interpolation(tiny_model, ph: int, pw: int) -> None:
    emb = tiny_model.model.vision_tower.embeddings
    table = emb.position_embedding.weight.detach()  # [256, C]
    grid = int(table.shape[0] ** 0.5)
    pos = table.reshape(grid, grid, -1)
    shapes = torch.tensor([[ph, pw]])
    ref = emb.resize_positional_embeddings(pos, shapes, max_length=1024)[0]  # [1024, C]
    ours = torch.from_numpy(position_weights(ph, pw)) @ table
    assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("ph,pw", [(32, 32), (26, 36), (16, 20)])
def test_unshuffle_index_matches_get_image_features(tiny_model, ph: int, pw: int) -> None:
    """Gathering patches with our index then running the projector equals HF's image features."""
    model = tiny_model.model
    c = model.config.vision_config.hidden_size
    hidden = torch.randn(1, 1024, c)
    n_tok = (ph // 2) * (pw // 2)
    idx = torch.from_numpy(unshuffle_index(ph, pw))  # [256, 4]
    gathered = hidden[0][idx].reshape(256, 4 * c)  # token rows: concat of its 4 patches
    proj = model.multi_modal_projector
    x = proj.layer_norm(gathered)
    ours = proj.linear_2(proj.act(proj.linear_1(x)))[:n_tok]

    class _Out:
        last_hidden_state = hidden

    orig = model.vision_tower.forward
    model.vision_tower.forward = lambda **_: _Out()  # feed our hidden states to HF's unshuffle
    try:
        feats = model.get_image_features(
            pixel_values=torch.zeros(1, 1024, 768),
            spatial_shapes=torch.tensor([[ph, pw]]),
            pixel_attention_mask=torch.ones(1, 1024, dtype=torch.int32),
        ).pooler_output[0]
    finally:
        model.vision_tower.forward = orig
    assert feats.shape == ours.shape
    assert (feats - ours).abs().max().item() < 1e-5
