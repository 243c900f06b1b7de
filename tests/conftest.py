import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

from weights import deterministic_state_dict  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def with_deterministic_weights(model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(deterministic_state_dict(model.state_dict()), strict=True)
    return model.eval()


def assert_close(ours, reference, what, rtol=1e-5):
    """Within `rtol` of the reference's largest value (the parity fixtures' tolerance)."""
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert error <= rtol * scale, f"{what}: max error {error:.3g} > {rtol} x {scale:.3g}"
