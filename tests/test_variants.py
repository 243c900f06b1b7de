"""The Roformer variants (issue 16) beyond what the parity fixtures check: plain paths, published sizes, init."""

import torch

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.models.attention import LinearAttention
from conftest import with_deterministic_weights


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_linear_attention_temperature_starts_at_one_as_in_msst():
    assert torch.equal(LinearAttention(16, 2, 8, 0.0).temperature, torch.ones(2, 1, 1))


def test_pope_runs_the_plain_transformer_path_and_matches_with_and_without_grad():
    torch.manual_seed(0)
    model = with_deterministic_weights(BSRoformer(16, depth=1, heads=2, dim_head=8, time_transformer_depth=1,
                                                  freq_transformer_depth=1, use_pope=True))
    assert not any(t.in_blocks for axes in model.layers for t in axes)
    audio = torch.randn(1, 6000) * 0.3
    with torch.no_grad():
        without_grad = model(audio)
    assert torch.allclose(model(audio).detach(), without_grad, atol=1e-6)


def test_pope_shares_one_polar_embedding_per_axis():
    model = MelBandRoformer(16, depth=2, heads=2, dim_head=8, num_bands=8, use_pope=True)
    embeddings = {id(layer[0].pope_embed) for axes in model.layers for t in axes for layer in t.layers}
    assert len(embeddings) == 2


def test_pope_at_the_viperx_size_on_meta():
    """PoPE replaces the rotary frequencies (dim_head / 2 per axis) by a (heads, dim_head) phase bias per axis."""
    viperx = dict(dim=512, depth=12, stereo=True, time_transformer_depth=1, freq_transformer_depth=1)
    with torch.device("meta"):
        rotary = BSRoformer(**viperx)
        polar = BSRoformer(**viperx, use_pope=True)
    assert parameter_count(rotary) == 159_758_092
    assert parameter_count(polar) == 159_758_092 - 2 * 32 + 2 * 8 * 64
