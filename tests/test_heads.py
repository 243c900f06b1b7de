"""unwa's BS-RoFormer mask heads (`mask_estimator.kind`) against splifft 0.0.9, the only public implementation
(fixtures made by tests/fixtures/make_reference_splifft.py). Tolerance: 1e-5 of the largest reference value."""

from pathlib import Path

import pytest
import torch

from bs_roformer import BSRoformer
from conftest import assert_close, with_deterministic_weights

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
CASES = sorted(path.stem for path in REFERENCE.glob("splifft_*.pt"))


def load_case(name):
    case = torch.load(REFERENCE / f"{name}.pt", weights_only=True)
    return case, with_deterministic_weights(BSRoformer(**case["kwargs"], zero_dc=False))


def test_cases_present():
    assert len(CASES) >= 2


@pytest.mark.parametrize("name", CASES)
def test_layout_equals_splifft_but_for_our_stored_rotary_frequencies(name):
    case, model = load_case(name)
    ours = [[key, list(value.shape)] for key, value in model.state_dict().items()
            if not key.endswith("rotary_embed.freqs")]
    assert ours == case["keys"]
    rotary = 2 * model.layers[0][0].layers[0][0].rotary_embed.freqs.numel()  # splifft computes them on the fly
    assert sum(p.numel() for p in model.parameters()) == case["num_params"] + rotary


@pytest.mark.parametrize("name", CASES)
def test_output_matches_splifft(name):
    case, model = load_case(name)
    with torch.no_grad():
        output = model(case["input"])
    reference = case["output"].squeeze(1) if model.num_stems == 1 else case["output"]
    assert_close(output, reference.reshape(output.shape), "output")


# the HyperACE networks' backward takes 30-60 s on a loaded 2-core machine
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if "hyperace" in name else name
                                  for name in CASES])
def test_loss_and_gradients_match_splifft(name):
    case, model = load_case(name)
    output = model(case["input"])
    target = case["target"].squeeze(1) if model.num_stems == 1 else case["target"]
    loss = (output - target.reshape(output.shape)).abs().mean()
    loss.backward()
    assert_close(loss.detach(), case["loss"], "loss")
    parameters = dict(model.named_parameters())
    assert case["grads"]
    for key, gradient in case["grads"].items():
        assert_close(parameters[key].grad, gradient, f"gradient of {key}", rtol=1e-4)
