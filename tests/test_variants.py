"""The Roformer variants (issue 16) beyond what the parity fixtures check: plain paths, published sizes, init."""

import pytest
import torch

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.checkpoint import describe, infer_config
from bs_roformer.config import MODEL_CLASSES, load_model, model_type_of
from bs_roformer.models.attention import LinearAttention
from bs_roformer.models.bands import DEFAULT_FREQS_PER_BANDS
from bs_roformer.models.heads import AxialRefinerMaskEstimator
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


# ---- inspect: each variant recognised from a bare checkpoint ---------------------------------------------------------

INSPECT_CASES = [
    ("bs_roformer", dict(use_pope=True)),
    ("mel_band_roformer", dict(use_pope=True, num_bands=8, linear_transformer_depth=1)),
    ("bs_roformer_experimental", dict(use_value_residual_learning=True)),
    ("bs_roformer_experimental", dict(num_residual_streams=2)),
    ("mel_band_roformer_experimental", dict(num_bands=8, num_residual_streams=3, use_value_residual_learning=True)),
    ("bs_conformer", dict(time_conformer_depth=1, freq_conformer_depth=2, ff_mult=2, conv_kernel_size=7)),
    ("mel_band_conformer", dict(num_bands=8, linear_conformer_depth=1, conv_expansion_factor=1,
                                mask_estimator_depth=2)),
    ("bs_roformer", dict(mask_estimator={"kind": "axial_refiner_large_v2", "axial_refiner_depth": 2})),
]
HEAD_CASES = [  # the HyperACE networks are large (fixed widths): checked here without the rebuild and forward
    {"kind": "hyperace_residual_v1", "num_hyperedges": 16},
    {"kind": "hyperace_residual_v2", "num_hyperedges": 8},
]


@pytest.mark.parametrize("model_type, options", INSPECT_CASES)
def test_infer_config_recognises_the_variant_and_rebuilds_it(model_type, options):
    model = MODEL_CLASSES[model_type](16, depth=2, heads=2, dim_head=8, **options)
    config = infer_config(model.state_dict())
    assert config.pop("model_type") == model_type
    for key, value in options.items():
        assert config[key] == value, key
    implied = {key: value for key, value in config.items() if key not in ("stft_n_fft", "sample_rate")}
    rebuilt = MODEL_CLASSES[model_type](**implied)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert f"parameters: {parameter_count(model):,}" in describe(model.state_dict())


@pytest.mark.parametrize("model_type, options", INSPECT_CASES)
def test_load_model_selects_the_variant_from_config_keys_or_checkpoint(model_type, options):
    """A config without training.model_type: the variant's own keys (or, for PoPE, the class's keys plus the
    checkpoint) select it, and the checkpoint loads strictly."""
    bands = {"freqs_per_bands": DEFAULT_FREQS_PER_BANDS} if model_type.startswith("bs") else {}
    model_options = dict(dim=16, depth=2, heads=2, dim_head=8, **bands, **options)
    state = MODEL_CLASSES[model_type](**model_options).state_dict()
    assert model_type_of({"model": model_options}, state) == model_type
    model, _ = load_model({"model": model_options}, state)
    assert type(model) is MODEL_CLASSES[model_type]
    assert model_type_of({"model": {"dim": 16}}, state) == model_type  # nothing in the config: the checkpoint says


def test_variant_options_are_refused_where_msst_refuses_them():
    with pytest.raises(TypeError, match="zero_dc"):
        MODEL_CLASSES["bs_roformer_experimental"](16, depth=1, zero_dc=True)
    with pytest.raises(ValueError, match="linear_transformer_depth"):
        MODEL_CLASSES["mel_band_roformer_experimental"](16, depth=1, num_bands=8, linear_transformer_depth=1)
    with pytest.raises(TypeError, match="time_conformer_depth"):
        MODEL_CLASSES["bs_conformer"](16, depth=1, time_transformer_depth=1)
    with pytest.raises(ValueError, match="odd"):
        MODEL_CLASSES["mel_band_conformer"](16, depth=1, num_bands=8, conv_kernel_size=4)


# ---- published sizes, built on the meta device --------------------------------------------------------------------
# counts of `parameters()` of MSST's own classes at its pinned commit (see tests/fixtures/make_reference.py), built
# from MSST's configs/config_vocals_{bs,mel_band}_conformer.yaml and the viperx / Kim sizes with each variant's options

VIPERX = dict(dim=512, depth=12, stereo=True, time_transformer_depth=1, freq_transformer_depth=1, stft_hop_length=441,
              mask_estimator_depth=2)
KIM = dict(dim=384, depth=6, stereo=True, time_transformer_depth=1, freq_transformer_depth=1, num_bands=60,
           stft_hop_length=441, mask_estimator_depth=2)
MSST_CONFORMER_VOCALS = dict(dim=256, depth=12, stereo=True, time_conformer_depth=1, freq_conformer_depth=1,
                             stft_hop_length=441, mask_estimator_depth=2, ff_mult=4, conv_expansion_factor=2,
                             conv_kernel_size=31, dim_freqs_in=1025, sage_attention=False)
UNWA = dict(dim=256, depth=12, stereo=True, time_transformer_depth=1, freq_transformer_depth=1)
PUBLISHED_SIZES = [
    ("bs_roformer", dict(VIPERX, use_pope=True), 159_759_052),
    ("mel_band_roformer", dict(KIM, use_pope=True), 228_203_812),
    ("bs_roformer_experimental", dict(VIPERX, use_value_residual_learning=True, num_residual_streams=4), 160_021_660),
    ("mel_band_roformer_experimental", dict(KIM, use_value_residual_learning=True, num_residual_streams=4),
     228_298_788),
    ("bs_conformer", MSST_CONFORMER_VOCALS, 73_567_244),
    ("mel_band_conformer", dict(MSST_CONFORMER_VOCALS, num_bands=60), 81_843_652),
    # unwa's heads at the size of their published models (splifft 0.0.9's configs: dim 256, depth 12); splifft's
    # counts plus the 2 x 32 rotary frequencies that we store as (frozen) parameters and splifft computes
    *[("bs_roformer", dict(UNWA, mask_estimator={"kind": kind}), count + 64) for kind, count in (
        ("axial_refiner_large_v2", 59_469_068), ("hyperace_residual_v1", 68_593_164),
        ("hyperace_residual_v2", 72_042_044))],
]


@pytest.mark.filterwarnings("ignore:model option")
@pytest.mark.parametrize("model_type, options, count", PUBLISHED_SIZES)
def test_variant_builds_on_meta_with_msst_parameter_count(model_type, options, count):
    with torch.device("meta"):
        model = MODEL_CLASSES[model_type](**options)
    assert parameter_count(model) == count


# ---- fast paths ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # 6-15 s each on a loaded 2-core machine
@pytest.mark.parametrize("model_type, options", INSPECT_CASES)
def test_variant_transformer_stack_compiles_without_graph_breaks(model_type, options):
    model = with_deterministic_weights(MODEL_CLASSES[model_type](16, depth=2, heads=2, dim_head=8, **options))
    tokens = torch.randn(1, 7, len(model.band_split.band_widths), 16)
    with torch.no_grad():
        eager = model._transform(tokens)
        model.compile_transformer_stack(backend="eager")  # fullgraph: a graph break raises
        assert (model._transform(tokens) - eager).abs().max() < 1e-5


@pytest.mark.parametrize("model_type, options", INSPECT_CASES)
def test_variant_runs_the_plain_path_in_cpu_inference_with_the_values_of_training_mode(model_type, options):
    """The blocked CPU inference path is the rotary transformers' own; every variant's axes run `_forward` (the plain
    path), the same computation with and without autograd. (A mask head leaves the stack, and its fast path, as is;
    the axial refiner's transformers run it too.)"""
    model = with_deterministic_weights(MODEL_CLASSES[model_type](16, depth=2, heads=2, dim_head=8, **options))
    stack_is_plain = not any(axis.in_blocks for axes in model.layers for axis in axes[-2:])
    assert stack_is_plain == ("mask_estimator" not in options)
    audio = torch.randn(1, 5000) * 0.3
    with torch.no_grad():
        inference = model(audio)
    assert (model(audio).detach() - inference).abs().max() < 1e-5


@pytest.mark.parametrize("head", HEAD_CASES)
def test_infer_config_recognises_the_hyperace_heads(head):
    with torch.device("meta"):
        model = BSRoformer(16, depth=1, heads=2, dim_head=8, stereo=True, mask_estimator=head)
    assert infer_config(model.state_dict())["mask_estimator"] == head


def test_hyperace_heads_refuse_mono_and_unknown_options():
    with pytest.raises(ValueError, match="stereo"):
        BSRoformer(16, depth=1, mask_estimator={"kind": "hyperace_residual_v1"})
    with pytest.raises(ValueError, match="axial_refiner_depth"):
        BSRoformer(16, depth=1, mask_estimator={"kind": "hyperace_residual_v2", "axial_refiner_depth": 2})
    with pytest.raises(ValueError, match="mask_estimator.kind"):
        BSRoformer(16, depth=1, mask_estimator={"kind": "fno"})


def test_a_plain_bs_roformer_config_loads_a_checkpoint_with_an_axial_refiner_head():
    """unwa's published YAMLs carry no head option: the checkpoint's keys select the head."""
    options = dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True)
    head = {"kind": "axial_refiner_large_v2", "axial_refiner_depth": 2}
    state = BSRoformer(**options, mask_estimator=head).state_dict()
    model, config = load_model({"model": options, "training": {"model_type": "bs_roformer"}}, state)
    assert config["model"]["mask_estimator"] == head
    assert isinstance(model.mask_estimators[0], AxialRefinerMaskEstimator)


def test_the_cli_help_names_every_model_type(capsys):
    from bs_roformer.cli import main

    with pytest.raises(SystemExit):
        main(["separate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(model_type in help_text for model_type in MODEL_CLASSES)


def test_value_residual_gates_after_the_first_block_with_one_layer_axes_are_add_value_residual():
    """lucidrains 0.5.1's layout (unwa's value-residual model): with one-layer axes the same keys as our
    `add_value_residual`, whose numerics (residuals kept) are lucidrains'; MSST's experimental type drops them."""
    model = BSRoformer(16, depth=2, heads=2, dim_head=8, time_transformer_depth=1, freq_transformer_depth=1,
                       add_value_residual=True)
    config = infer_config(model.state_dict())
    assert config["model_type"] == "bs_roformer" and config["add_value_residual"]
