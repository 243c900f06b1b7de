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
