"""Outputs, losses and gradients equal those of the reference code (fixtures made by tests/fixtures/make_reference.py).

Tolerance: 1e-5 relative to the largest reference value, in float32. Measured worst case: about 6e-7.
"""

from pathlib import Path

import pytest
import torch

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.config import MODEL_CLASSES
from bs_roformer.mel import mel_band_membership
from conftest import assert_close, with_deterministic_weights

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
# splifft_*.pt are the mask heads' fixtures (tests/test_heads.py)
CASES = sorted(path.stem for path in REFERENCE.glob("*.pt")
               if path.stem != "mel_bands" and not path.stem.startswith("splifft_"))


def load_case(name):
    case = torch.load(REFERENCE / f"{name}.pt", weights_only=True)
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in case["kwargs"].items()}
    if case["source"].startswith("bs-roformer=="):
        kwargs["zero_dc"] = False  # the classic package predates zero_dc
    if "model_type" in case:
        model_class = MODEL_CLASSES[case["model_type"]]
    else:
        model_class = BSRoformer if case["model"] == "bs" else MelBandRoformer
    return case, model_class(**kwargs)


def as_our_layout(reference_output: torch.Tensor, num_stems: int) -> torch.Tensor:
    """MSST's BSRoformer keeps a stem axis of size 1; ours (and the classic package) drop it."""
    return reference_output.squeeze(1) if num_stems == 1 and reference_output.ndim == 4 else reference_output


def test_cases_present():
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", CASES)
def test_state_dict_layout_and_parameter_count(name):
    case, model = load_case(name)
    assert [[key, list(value.shape)] for key, value in model.state_dict().items()] == [
        [key, list(shape)] for key, shape in case["keys"]
    ]
    assert sum(p.numel() for p in model.parameters()) == case["num_params"]


@pytest.mark.parametrize("name", CASES)
def test_output_matches_reference(name):
    case, model = load_case(name)
    with_deterministic_weights(model)
    with torch.no_grad():
        output = model(case["input"])
    reference = as_our_layout(case["output"], model.num_stems)
    assert output.shape[:-1] == reference.shape[:-1]
    if case["model"] == "bs" and case["source"].startswith("bs-roformer=="):
        # the classic BS iSTFT drops the samples after hop * (t // hop); ours keeps the input length (MSST)
        assert output.shape[-1] == case["input"].shape[-1]
        output = output[..., : reference.shape[-1]]
    assert output.shape == reference.shape
    assert_close(output, reference, "output")


def _loss_cases():
    for name in CASES:
        case = torch.load(REFERENCE / f"{name}.pt", weights_only=True)
        if "loss" not in case:
            continue  # the reference itself cannot compute this loss (MSST Mel, one stem)
        samples, hop = case["input"].shape[-1], case["kwargs"].get("stft_hop_length", 512)
        if case["model"] == "bs" and case["source"].startswith("bs-roformer==") and samples % hop:
            continue  # the classic BS loss runs on a shorter output than ours
        yield name


@pytest.mark.parametrize("name", list(_loss_cases()))
def test_loss_and_gradients_match_reference(name):
    case, model = load_case(name)
    with_deterministic_weights(model)
    total, (l1, multi) = model(case["input"], target=case["target"], return_loss_breakdown=True)
    total.backward()
    for ours, key in ((total, "loss"), (l1, "l1"), (multi, "multi_stft")):
        assert_close(ours.detach(), case[key], key)
    parameters = dict(model.named_parameters())
    assert case["grads"]
    for key, gradient in case["grads"].items():
        error = (parameters[key].grad - gradient).abs().max().item()
        assert error <= 1e-4 * gradient.abs().max().item(), f"gradient of {key}: error {error:.3g}"


def test_at_least_one_loss_case_per_model_and_source():
    kinds = set()
    for name in _loss_cases():
        case = torch.load(REFERENCE / f"{name}.pt", weights_only=True)
        kinds.add((case["model"], case["source"].split("@")[0].split("==")[0]))
    assert kinds == {("bs", "bs-roformer"), ("mel", "bs-roformer"), ("bs", "MSST"), ("mel", "MSST"),
                     ("bs_experimental", "MSST"), ("mel_experimental", "MSST"), ("bs_conformer", "MSST"),
                     ("mel_conformer", "MSST")}


def test_mel_bands_match_librosa():
    reference = torch.load(REFERENCE / "mel_bands.pt", weights_only=True)
    keys = [key for key in reference if key != "librosa"]
    assert len(keys) >= 6
    for key in keys:
        sample_rate, n_fft, num_bands = map(int, key.split("_"))
        assert torch.equal(mel_band_membership(sample_rate, n_fft, num_bands), reference[key]), key


def test_kim_mel_band_widths():
    widths = mel_band_membership(44100, 2048, 60).sum(dim=1).tolist()
    assert widths[:4] == [7, 6, 6, 6] and widths[-3:] == [113, 122, 130]
    assert sum(widths) == 1979
