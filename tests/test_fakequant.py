"""The eager stand-in for a recipe used by the parity harness's quantization/conversion split."""

import pytest
import torch

from edgepack.parity.fakequant import _round, fake_quantize
from edgepack.recipes import load_recipe


def test_symmetric_int4_groups_have_16_levels_and_bounded_error():
    w = torch.randn(8, 64)
    q = _round(w, 4, 32, True)
    groups = q.reshape(8, 2, 32)
    for g, orig in zip(groups.reshape(-1, 32), w.reshape(-1, 32)):
        assert len(torch.unique(g)) <= 16
        scale = orig.abs().max() / 7.5
        assert (g - orig).abs().max() <= scale / 2 + 1e-6


def test_per_channel_int8_is_one_scale_per_row():
    w = torch.randn(4, 100)  # 100 is no multiple of a group: one group per row
    q = _round(w, 8, None, True)
    for row, orig in zip(q, w):
        scale = orig.abs().max() / 127.5
        assert torch.allclose(row / scale, (row / scale).round(), atol=1e-3)


def test_asymmetric_grid_holds_zero():
    w = torch.rand(2, 32) - 0.2  # mostly positive: the grid spans [min(w, 0), max(w, 0)] in 15 steps
    q = _round(w, 4, 32, False)
    assert (q - w).abs().max() <= (w.max() - min(w.min(), 0)) / 30 + 1e-6


@pytest.fixture
def tiny_llama(tiny_checkpoint):
    from edgepack.checkpoint import resolve

    return resolve(tiny_checkpoint("llama")).load_model(dtype="float32")


def test_recipe_rounds_linear_weights_and_leaves_norms(tiny_llama):
    model = tiny_llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert fake_quantize(model, load_recipe("int4-block32"))
    up = model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(up, before["model.layers.0.mlp.up_proj.weight"])
    assert len(torch.unique(up[0, :32])) <= 16
    assert torch.equal(model.model.norm.weight, before["model.norm.weight"]), "norms are not quantized"


def test_fp32_recipe_changes_nothing(tiny_llama):
    assert not fake_quantize(tiny_llama, load_recipe("fp32"))
