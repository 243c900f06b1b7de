"""Behaviour of the models beyond reference parity: sizes, errors, fast paths against plain ones, precision."""

import warnings

import pytest
import torch

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.models import attention
from bs_roformer.models.attention import RotaryEmbedding
from bs_roformer.models.loss import MultiResolutionSTFTLoss
from conftest import with_deterministic_weights

SMALL = dict(dim=32, depth=2, heads=2, dim_head=16, time_transformer_depth=1, freq_transformer_depth=1)
BANDS_256 = (2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69)  # n_fft 512
TINY_BS = dict(SMALL, stft_n_fft=512, stft_win_length=512, stft_hop_length=128, freqs_per_bands=BANDS_256)
TINY_MEL = dict(SMALL, stft_n_fft=512, stft_win_length=512, stft_hop_length=128, num_bands=16,
                attn_dropout=0.0, ff_dropout=0.0)


def snr_db(estimate, reference):
    return (10 * torch.log10(reference.pow(2).sum() / (estimate - reference).pow(2).sum())).item()


# ---- published sizes ---------------------------------------------------------------------------------------------

def test_viperx_bs_roformer_parameter_count():
    model = BSRoformer(dim=512, depth=12, stereo=True, time_transformer_depth=1, freq_transformer_depth=1,
                       stft_hop_length=441, mask_estimator_depth=2)
    assert sum(p.numel() for p in model.parameters()) == 159_758_092


def test_kim_mel_band_roformer_parameter_count():
    model = MelBandRoformer(dim=384, depth=6, stereo=True, time_transformer_depth=1, freq_transformer_depth=1,
                            num_bands=60, stft_hop_length=441, mask_estimator_depth=2)
    assert sum(p.numel() for p in model.parameters()) == 228_202_852


# ---- shapes ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_class, kwargs", [(BSRoformer, TINY_BS), (MelBandRoformer, TINY_MEL)])
@pytest.mark.parametrize("stereo, stems", [(False, 1), (True, 1), (True, 3)])
def test_output_shapes_and_loss_backward(model_class, kwargs, stereo, stems):
    model = model_class(**kwargs, stereo=stereo, num_stems=stems, match_input_audio_length=True) \
        if model_class is MelBandRoformer else model_class(**kwargs, stereo=stereo, num_stems=stems)
    channels = 2 if stereo else 1
    audio = torch.randn(2, channels, 3000)
    out = model(audio)
    expected = (2, channels, 3000) if stems == 1 else (2, stems, channels, 3000)
    assert out.shape == expected and out.dtype == torch.float32
    loss, (l1, multi) = model(audio, target=torch.randn(expected), return_loss_breakdown=True)
    assert torch.isclose(loss, l1 + multi)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_mono_input_without_channel_axis():
    model = BSRoformer(**TINY_BS)
    audio = torch.randn(2, 3000)
    assert torch.equal(model(audio), model(audio[:, None]))


def test_mel_output_length_follows_match_input_audio_length():
    audio = torch.randn(1, 3000)
    assert MelBandRoformer(**TINY_MEL)(audio).shape[-1] == 128 * (3000 // 128)
    assert MelBandRoformer(**TINY_MEL, match_input_audio_length=True)(audio).shape[-1] == 3000


# ---- clear errors --------------------------------------------------------------------------------------------------

def test_stereo_model_given_mono():
    with pytest.raises(ValueError, match=r"stereo.*2 channel\(s\), got 1"):
        BSRoformer(**TINY_BS, stereo=True)(torch.randn(1, 1, 3000))


def test_mono_model_given_stereo():
    with pytest.raises(ValueError, match=r"mono.*1 channel\(s\), got 2"):
        MelBandRoformer(**TINY_MEL)(torch.randn(1, 2, 3000))


def test_too_short_input():
    with pytest.raises(ValueError, match="200 samples is too short.*more than 256"):
        BSRoformer(**TINY_BS)(torch.randn(1, 200))
    audio = torch.randn(1, 1500)  # long enough for the model's 512-point STFT, not for the loss's 4096-point one
    with pytest.raises(ValueError, match="1500 samples is too short for the multi-resolution STFT loss.*more than 2048"):
        BSRoformer(**TINY_BS)(audio, target=audio)


def test_bands_must_cover_the_spectrum():
    with pytest.raises(ValueError, match="adding up to stft_n_fft // 2 \\+ 1 = 257.*adding up to 256"):
        BSRoformer(**{**TINY_BS, "freqs_per_bands": BANDS_256[:-1] + (68,)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input(bad):
    audio = torch.randn(1, 3000)
    audio[0, 10] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        BSRoformer(**TINY_BS)(audio)


def test_target_of_wrong_shape():
    model = BSRoformer(**TINY_BS, stereo=True, num_stems=2)
    with pytest.raises(ValueError, match=r"target must be shaped \(batch, stems, channels, samples\) = \(1, 2, 2, 3000\) to match the output, got \(1, 2, 3000\)"):
        model(torch.randn(1, 2, 3000), target=torch.randn(1, 2, 3000))


def test_harmless_config_keys_warn_and_unknown_keys_fail():
    with pytest.warns(UserWarning, match="dim_freqs_in=1025 is ignored"):
        BSRoformer(**TINY_BS, dim_freqs_in=1025)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bins stft_n_fft gives, as every published config has: no warning
        BSRoformer(**TINY_BS, dim_freqs_in=TINY_BS["stft_n_fft"] // 2 + 1)
    with pytest.warns(UserWarning, match="sage_attention=True is ignored"):
        MelBandRoformer(**TINY_MEL, sage_attention=True)
    with pytest.raises(TypeError, match="unknown model option 'dimm'"):
        BSRoformer(**TINY_BS, dimm=3)


# ---- fast paths against plain ones ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model_class, kwargs", [(BSRoformer, TINY_BS), (MelBandRoformer, TINY_MEL)])
@pytest.mark.parametrize("mask_estimator_depth", [1, 2, 3])
def test_grouped_band_math_equals_per_band_modules(model_class, kwargs, mask_estimator_depth):
    """The stacked band split and mask estimators equal running each band's classic module on its own features."""
    model = with_deterministic_weights(
        model_class(**kwargs, stereo=True, num_stems=2, mask_estimator_depth=mask_estimator_depth))
    split = model.band_split
    features = torch.randn(2, 7, split.num_features)
    gathers = split.feature_indices
    with torch.no_grad():
        plain = torch.stack([split.to_features[b](features[..., idx]) for b, idx in enumerate(gathers)], dim=2)
        assert (split(features) - plain).abs().max() < 1e-5

        tokens = torch.randn(2, 7, len(gathers), 32)
        for estimator in model.mask_estimators:
            plain = torch.zeros(2, 7, split.num_features)
            for band, idx in enumerate(gathers):
                plain[..., idx] += estimator.to_freqs[band](tokens[..., band, :])
            assert (estimator(tokens) - plain).abs().max() < 1e-5
            estimator.HIDDEN_ELEMENTS_PER_SLICE = 3 * 2 * len(gathers) * estimator.hidden  # inference: 3 frames a slice
            assert (estimator(tokens) - plain).abs().max() < 1e-5


def test_flash_attention_equals_plain_attention():
    audio = torch.randn(1, 2, 3000)
    fast = with_deterministic_weights(BSRoformer(**TINY_BS, stereo=True, flash_attn=True))
    plain = with_deterministic_weights(BSRoformer(**TINY_BS, stereo=True, flash_attn=False))
    with torch.no_grad():
        assert (fast(audio) - plain(audio)).abs().max() < 1e-6


@pytest.mark.parametrize("model_class, kwargs", [(BSRoformer, TINY_BS), (MelBandRoformer, TINY_MEL)])
@pytest.mark.parametrize("value_residual", [False, True])
# one sequence per block, a few, all in one block; and sequences padded to 64 tokens (both axes here are shorter)
@pytest.mark.parametrize("block_tokens, padded", [(1, range(0)), (40, range(0)), (4096, range(0)), (40, range(1, 64))])
@pytest.mark.parametrize("heads", [dict(), dict(heads=3, dim_head=8, flash_attn=False)])  # heads x dim_head != dim
def test_inference_in_blocks_equals_whole_tensor_forward(model_class, kwargs, value_residual, block_tokens, padded,
                                                          heads, monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_TOKENS", block_tokens)
    monkeypatch.setattr(attention, "PADDED_TO_64", padded)
    model = with_deterministic_weights(
        model_class(**dict(kwargs, **heads), stereo=True, add_value_residual=value_residual, linear_transformer_depth=1)
    ).eval()
    if value_residual:  # open the value-residual gates, which start nearly closed
        for name, parameter in model.named_parameters():
            if "to_value_residual_mix" in name:
                parameter.data.normal_()
    audio = torch.randn(2, 2, 6000) * 0.3
    calls = []
    monkeypatch.setattr(attention.Transformer, "_forward_in_blocks",
                        lambda self, *a, _f=attention.Transformer._forward_in_blocks: calls.append(1) or _f(self, *a))
    whole = model(audio)  # with autograd: the whole-tensor forward
    assert not calls
    with torch.no_grad():
        blocked = model(audio)
        assert calls  # the softmax transformers ran in blocks
        assert (blocked - whole).abs().max() < 1e-5 * whole.abs().max()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            blocked_bf16 = model(audio)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole_bf16 = model(audio)
    assert snr_db(blocked_bf16, whole_bf16.detach()) > 35


@pytest.mark.parametrize("normalized, n_fft", [(False, 2048), (True, 2048), (False, 1023)])
def test_multi_resolution_loss_equals_two_torch_stfts_per_resolution(normalized, n_fft):
    """The loss transforms `estimate - target` once per resolution, with frames cut to the window: same value and
    gradient (its backward is an inverse real FFT) as the classic statement: two centred `torch.stft`s, the
    window padded to n_fft."""
    sizes, hop = (4096, 2048, 1024, 300), 147  # 4096 > n_fft; 300 leaves uneven padding (and odd n with 1023)
    loss = MultiResolutionSTFTLoss(sizes, hop, n_fft, normalized=normalized)
    estimate = torch.randn(2, 2, 9001, requires_grad=True)
    target = torch.randn(2, 2, 9001)
    target[0] = estimate[0].detach()  # bins of modulus 0, whose gradient is 0 (not NaN)

    def plain(estimate):
        def stft(audio, size):
            return torch.stft(audio.reshape(-1, audio.shape[-1]), n_fft=max(size, n_fft), hop_length=hop,
                              win_length=size, window=torch.hann_window(size), normalized=normalized,
                              return_complex=True)
        return sum((stft(estimate, size) - stft(target, size)).abs().mean() for size in sizes)

    fast_value, plain_value = loss(estimate, target), plain(estimate)
    fast_grad, = torch.autograd.grad(fast_value, estimate)
    plain_grad, = torch.autograd.grad(plain_value, estimate)
    assert abs(fast_value.item() - plain_value.item()) <= 1e-5 * plain_value.item()
    assert (fast_grad - plain_grad).abs().max() <= 1e-4 * plain_grad.abs().max()  # as the parity tests


def test_inference_weight_cache_follows_parameter_updates():
    model = with_deterministic_weights(BSRoformer(**TINY_BS))
    audio = torch.randn(1, 3000)
    with torch.no_grad():
        model(audio)  # fills the cache
        for p in model.parameters():
            p.mul_(0.9)
        updated = model(audio)
    fresh = BSRoformer(**TINY_BS).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(updated, fresh(audio))


def test_gradient_checkpointing_gives_the_same_gradients():
    audio, target = torch.randn(1, 2, 3000), torch.randn(1, 2, 3000)
    grads = []
    for use_checkpoint in (False, True):
        model = with_deterministic_weights(MelBandRoformer(**TINY_MEL, stereo=True, use_torch_checkpoint=use_checkpoint,
                                                           match_input_audio_length=True)).train()
        model(audio, target=target).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---- value residual ------------------------------------------------------------------------------------------------

def test_value_residual_is_opt_in_and_adds_only_gates():
    plain = BSRoformer(**TINY_BS).state_dict()
    residual = BSRoformer(**TINY_BS, add_value_residual=True).state_dict()
    added = sorted(set(residual) - set(plain))
    assert set(plain) <= set(residual) and added
    assert all("to_value_residual_mix" in key for key in added)
    # the first attention layer of each axis is the source of the values and has no gate
    assert not any(key.startswith("layers.0.0.layers.0.0.to_value_residual_mix") for key in added)
    assert not any(key.startswith("layers.0.1.layers.0.0.to_value_residual_mix") for key in added)
    assert any(key.startswith("layers.1.0.layers.0.0.to_value_residual_mix") for key in added)


def test_value_residual_closed_gate_is_the_plain_model_and_open_gate_changes_it():
    audio = torch.randn(1, 3000)
    plain = with_deterministic_weights(BSRoformer(**TINY_BS))
    residual = BSRoformer(**TINY_BS, add_value_residual=True).eval()
    residual.load_state_dict(plain.state_dict(), strict=False)
    gates = [m for name, m in residual.named_modules() if name.endswith("to_value_residual_mix")]
    with torch.no_grad():
        for gate in gates:
            gate.weight.zero_()
            gate.bias.fill_(-1e4)  # sigmoid -> 0: keep each layer's own values
        assert (residual(audio) - plain(audio)).abs().max() < 1e-6
        for gate in gates:
            gate.bias.fill_(0.0)
        assert (residual(audio) - plain(audio)).abs().max() > 1e-3
    residual.train()
    residual(audio, target=torch.randn(1, 1, 3000)).backward()
    assert all(gate.weight.grad.abs().sum() > 0 for gate in gates)


# ---- precision ---------------------------------------------------------------------------------------------------

def test_rotary_angles_are_exact_for_long_sequences_under_bf16():
    rotary = RotaryEmbedding(16)
    frames = 801
    queries = torch.randn(1, frames, 2, 16).bfloat16()  # (batch, seq, heads, dim_head)
    rotated = rotary.rotate(queries.clone())  # rotated in place without autograd
    angles = torch.arange(frames, dtype=torch.float64)[:, None, None] * rotary.freqs.double()
    pairs = queries.double()[0].unflatten(-1, (-1, 2))  # (seq, heads, pairs, 2)
    expected_real = pairs[..., 0] * angles.cos() - pairs[..., 1] * angles.sin()
    ours_real = rotated.double()[0].unflatten(-1, (-1, 2))[..., 0]
    assert rotated.dtype == torch.bfloat16 and rotated.shape == queries.shape
    # only bf16 rounding of the result remains (the classic code's bf16 positions miss by up to 2 rad here)
    assert (ours_real - expected_real).abs().max() < 0.05


@pytest.mark.parametrize("model_class, kwargs", [(BSRoformer, TINY_BS), (MelBandRoformer, TINY_MEL)])
@pytest.mark.parametrize("frozen_mask_estimators", [False, True])
def test_training_after_inference_mode(model_class, kwargs, frozen_mask_estimators):
    # separating (under torch.inference_mode) must leave no cached tensor that a later training step cannot use:
    # rotary tables, and the stacked band weights that frozen mask estimators keep using from the cache
    model = model_class(**kwargs, stereo=True)
    model.mask_estimators.requires_grad_(not frozen_mask_estimators)
    audio = torch.randn(1, 2, 3000)
    with torch.inference_mode():
        model(audio)
    model(audio, target=audio).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_class, kwargs", [(BSRoformer, TINY_BS), (MelBandRoformer, TINY_MEL)])
def test_bf16_autocast_is_close_to_fp32(model_class, kwargs):
    model = with_deterministic_weights(model_class(**kwargs, stereo=True))
    audio = torch.randn(1, 2, 8000) * 0.3
    with torch.no_grad():
        reference = model(audio)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(audio)
    assert fast.dtype == torch.float32  # the iSTFT and mask multiply stay in float32
    assert snr_db(fast, reference) > 25


def test_bf16_autocast_training_step(monkeypatch):
    """A CPU training step under bf16 autocast attends in float32 (torch's bf16 CPU flash-attention backward is
    2.3x slower), inference in bf16; loss and gradients stay close to float32's."""
    model = with_deterministic_weights(BSRoformer(**TINY_BS, attn_dropout=0.0, ff_dropout=0.0)).train()
    audio, target = torch.randn(2, 3000), torch.randn(2, 1, 3000)
    attention_dtypes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kwargs: attention_dtypes.append(q.dtype) or sdpa(q, k, v, **kwargs))
    parameters = [p for p in model.parameters() if p.requires_grad]
    reference = model(audio, target=target)
    reference_grads = torch.autograd.grad(reference, parameters, allow_unused=True)
    attention_dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(audio, target=target)
    assert attention_dtypes and set(attention_dtypes) == {torch.float32}
    assert loss.dtype == torch.float32 and abs(loss.item() - reference.item()) < 0.01 * reference.item()
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    pairs = [(g, r) for g, r in zip(grads, reference_grads) if r is not None]
    assert snr_db(torch.cat([g.flatten() for g, _ in pairs]), torch.cat([r.flatten() for _, r in pairs])) > 20
    attention_dtypes.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.eval()(audio)
    assert set(attention_dtypes) == {torch.bfloat16}


def test_transformer_stack_compiles_without_graph_breaks():
    model = with_deterministic_weights(BSRoformer(**TINY_BS, add_value_residual=True, linear_transformer_depth=1))
    tokens = torch.randn(1, 9, len(TINY_BS["freqs_per_bands"]), 32)
    with torch.no_grad():
        eager = model._transform(tokens)
        model.compile_transformer_stack(backend="eager")  # fullgraph: a graph break raises
        assert (model._transform(tokens) - eager).abs().max() < 1e-5
        compiled = model._transform
        assert model.compile_transformer_stack(backend="eager")._transform is compiled
