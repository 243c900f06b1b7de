"""LoRA: low-rank adapters on every Linear layer, in loralib's key layout (what MSST's `--train_lora_loralib` saves).

An adapted Linear computes with the weight W + (lora_B @ lora_A) x lora_alpha / r, where lora_A is (r, in) and
lora_B is (out, r); W stays frozen and lora_B starts at zero, so training starts from the base model. Adapter files
hold only `<module>.lora_A` and `<module>.lora_B` tensors (loralib's names), to be merged into a base checkpoint:
`merge_adapter(base, adapter, settings)` gives a plain state_dict, as fast as the base model.

The models read their Linear weights directly (packed per band group), so the adapter is a parametrization of the
weight rather than a second path through the layer. For the same reason `lora_dropout` drops input features of the
adapter with one mask per forward pass (loralib draws one per input row).
"""

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from .train_settings import Lora

PARAMETRIZED = ".parametrizations.weight."  # how torch names the parts of a parametrized weight


class LowRankAdapter(nn.Module):
    def __init__(self, out_features: int, in_features: int, settings: Lora):
        super().__init__()
        if settings.fan_in_fan_out:
            raise ValueError("lora.fan_in_fan_out is for GPT-2's Conv1D layers; these models have none: set it false")
        if settings.r < 1:
            raise ValueError(f"lora.r is {settings.r}; the rank must be at least 1")
        self.lora_A = nn.Parameter(torch.empty(settings.r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, settings.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # loralib's initialisation
        self.register_buffer("scaling", torch.tensor(settings.lora_alpha / settings.r))
        self.dropout = settings.lora_dropout

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        down = self.lora_A
        if self.training and self.dropout > 0:
            keep = torch.empty(down.shape[1], device=down.device).bernoulli_(1 - self.dropout) / (1 - self.dropout)
            down = down * keep
        return weight + (self.lora_B @ down) * self.scaling.to(weight.dtype)


def add_lora(model: nn.Module, settings: Lora) -> nn.Module:
    """Adapt every nn.Linear of `model` in place and leave only the adapters trainable."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    for module in linears:
        adapter = LowRankAdapter(module.out_features, module.in_features, settings).to(module.weight.device)
        parametrize.register_parametrization(module, "weight", adapter)
    return model


def load_adapter(model: nn.Module, adapter: dict[str, torch.Tensor]) -> int:
    """Copy a loralib-format adapter into `model`'s adapters (after `add_lora`, as MSST's `--lora_checkpoint_loralib`
    does); returns how many tensors. A tensor with no adapter of its name and shape in the model is a ValueError."""
    own = dict(model.named_parameters())
    adapter = {key.removeprefix("module."): value for key, value in adapter.items()}
    if not adapter:
        raise ValueError("the adapter file holds no lora_A/lora_B tensors")
    with torch.no_grad():
        for key, value in adapter.items():
            module, _, part = key.rpartition(".")
            target = own.get(module + PARAMETRIZED + "0." + part) if part in ("lora_A", "lora_B") else None
            if target is None or target.shape != value.shape:
                found = "no such adapter in the model" if target is None else f"the model's is {tuple(target.shape)}"
                raise ValueError(f"adapter tensor {key} {tuple(value.shape)}: {found} (is lora.r the one it was "
                                 "trained with?)")
            target.copy_(value)
    return len(adapter)


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of an adapted model's state_dict, under loralib's names (`<module>.lora_A`, `.lora_B`)."""
    return {key.replace(PARAMETRIZED + "0.", "."): value for key, value in state.items()
            if PARAMETRIZED in key and key.endswith((".lora_A", ".lora_B"))}


def merged_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An adapted model's state_dict as the plain model's, each adapter merged into its weight (others unchanged)."""
    merged = {}
    for key, value in state.items():
        if PARAMETRIZED not in key:
            merged[key] = value
        elif key.endswith(".original"):
            module = key[: key.index(PARAMETRIZED)]
            prefix = module + PARAMETRIZED + "0."
            delta = state[prefix + "lora_B"].float() @ state[prefix + "lora_A"].float() * state[prefix + "scaling"]
            merged[module + ".weight"] = (value.float() + delta).to(value.dtype)
    return merged


def merge_adapter(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], settings: Lora):
    """`base` with the loralib-format `adapter` merged in (scale `lora_alpha / r`, r from the tensors' shapes).
    An adapter tensor without its weight in the base, or of the wrong shape, is a ValueError."""
    adapter = {key.removeprefix("module."): value for key, value in adapter.items()}
    others = sorted(key for key in adapter if not key.endswith((".lora_A", ".lora_B")))
    if others:
        raise ValueError(f"the adapter file holds tensors other than lora_A/lora_B: {others[:3]}")
    if not adapter:
        raise ValueError("the adapter file holds no lora_A/lora_B tensors")
    merged = dict(base)
    for key in sorted(k for k in adapter if k.endswith(".lora_A")):
        module = key.removesuffix(".lora_A")
        down, up, weight = adapter[key], adapter.get(module + ".lora_B"), base.get(module + ".weight")
        if up is None or weight is None:
            raise ValueError(f"adapter {module}: " + ("no lora_B" if up is None else "no such weight in the base"))
        if up.shape[1] != down.shape[0] or (up.shape[0], down.shape[1]) != tuple(weight.shape):
            raise ValueError(f"adapter {module}: lora_B {tuple(up.shape)} @ lora_A {tuple(down.shape)} does not fit "
                             f"the weight {tuple(weight.shape)}")
        scaling = settings.lora_alpha / down.shape[0]
        merged[module + ".weight"] = (weight.float() + up.float() @ down.float() * scaling).to(weight.dtype)
    return merged


def adapted_checkpoint(config, checkpoint, adapter) -> dict[str, torch.Tensor]:
    """The base `checkpoint` (a path) with the adapter file `adapter` merged in, scaled by the `lora:` section of
    `config` (a path or dict), which must give `lora_alpha`: the files do not record the scale."""
    from .checkpoint import load_state_dict
    from .config import load_config
    from .train_settings import _fill

    config = config if isinstance(config, dict) else load_config(config)
    if "lora_alpha" not in (config.get("lora") or {}):
        raise ValueError("--lora needs the config's lora: section with lora_alpha (the adapter's scale is "
                         "lora_alpha / r), as in the config the adapter was trained with")
    settings = _fill(Lora, "lora", dict(config["lora"]))
    return merge_adapter(load_state_dict(checkpoint), load_state_dict(adapter), settings)
