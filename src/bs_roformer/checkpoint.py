"""Reading published checkpoints, and what their tensors say about the model that made them.

Checkpoints circulate as bare state_dicts or wrapped (`state_dict`, `model_state_dict`, `state`, `model`), with
`module.` prefixes from DataParallel/DDP, in fp16 or fp32, as `.ckpt`/`.pth`/`.pt` or `.safetensors`.
"""

import re
from collections import Counter
from pathlib import Path

import torch

from .mel import mel_band_membership

WRAPPER_KEYS = ("state_dict", "model_state_dict", "state", "model")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint file, unwrapped and without `module.` prefixes (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable .safetensors file ({error}); download it again") from None
    else:
        state = _load_tensors_only(path)
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path} holds no state_dict (expected a dict of tensors, possibly under {WRAPPER_KEYS})")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_tensors_only(path: Path):
    """torch.load with weights_only=True: a pickle that holds Python objects other than tensors and containers is
    refused before any of its code can run."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found:
            raise ValueError(
                f"refused {path}: the checkpoint holds Python objects ({found.group(1)}), not only tensors, and "
                "loading it could run code. Use a checkpoint from the model's publisher, or convert this one once, "
                "with a tool you trust, to .safetensors") from None
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (it cannot be unpickled)") from None
    except Exception as error:  # zip and pickle layers raise many types for files that are not checkpoints
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None


def _layer_indices(state: dict, pattern: str) -> list[int]:
    return sorted({int(match.group(1)) for key in state if (match := re.match(pattern, key))})


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments a classic-layout state_dict implies, with `model_type` ("bs_roformer" or
    "mel_band_roformer"). STFT settings that leave no trace in the weights (hop, window) are not included;
    `stft_n_fft` (and, for Mel, `sample_rate`) are the smallest standard values that fit the band widths."""
    if "band_split.to_features.0.1.weight" not in state:
        raise ValueError("not a BS-/Mel-RoFormer checkpoint: no 'band_split.to_features.0.1.weight' key")
    dim = state["band_split.to_features.0.1.weight"].shape[0]
    band_inputs = [state[f"band_split.to_features.{band}.0.gamma"].numel()
                   for band in _layer_indices(state, r"band_split\.to_features\.(\d+)\.0\.gamma")]
    blocks = _layer_indices(state, r"layers\.(\d+)\.")
    axes = _layer_indices(state, r"layers\.0\.(\d+)\.")
    has_linear = any(key.startswith("layers.0.0.layers.0.0.temperature") for key in state)
    time_axis = 1 if has_linear else 0
    first_attention = f"layers.0.{time_axis}.layers.0.0."
    heads = state[first_attention + "to_gates.weight"].shape[0]
    config = dict(
        dim=dim,
        depth=len(blocks),
        num_stems=len(_layer_indices(state, r"mask_estimators\.(\d+)\.")),
        time_transformer_depth=len(_layer_indices(state, rf"layers\.0\.{time_axis}\.layers\.(\d+)\.")),
        freq_transformer_depth=len(_layer_indices(state, rf"layers\.0\.{time_axis + 1}\.layers\.(\d+)\.")),
        linear_transformer_depth=len(_layer_indices(state, r"layers\.0\.0\.layers\.(\d+)\.")) if has_linear else 0,
        heads=heads,
        dim_head=state[first_attention + "to_qkv.weight"].shape[0] // (3 * heads),
    )
    if len(axes) != (3 if has_linear else 2):
        raise ValueError(f"unexpected transformer layout: block 0 has {len(axes)} parts")
    linears = _layer_indices(state, r"mask_estimators\.0\.to_freqs\.0\.0\.(\d+)\.weight")
    is_mel = "final_norm.gamma" not in state
    if len(linears) > 1:
        config["mlp_expansion_factor"] = state["mask_estimators.0.to_freqs.0.0.0.weight"].shape[0] // dim
    if any("to_value_residual_mix" in key for key in state):
        config["add_value_residual"] = True

    if is_mel:
        config.update(model_type="mel_band_roformer", mask_estimator_depth=len(linears) - 1)
        config.update(_mel_layout(band_inputs))
    else:
        config.update(model_type="bs_roformer", mask_estimator_depth=len(linears))
        config.update(_bs_layout(band_inputs))
    return config


def _bs_layout(band_inputs: list[int]) -> dict:
    # a band's input is 2 (real, imag) x bins x channels; the bins add up to n_fft // 2 + 1 for a power-of-two n_fft
    for channels in (2, 1):
        if all(width % (2 * channels) == 0 for width in band_inputs):
            bins = [width // (2 * channels) for width in band_inputs]
            n_fft = 2 * (sum(bins) - 1)
            if n_fft > 0 and n_fft & (n_fft - 1) == 0:
                return dict(stereo=channels == 2, freqs_per_bands=tuple(bins), stft_n_fft=n_fft)
    raise ValueError(f"band widths {band_inputs[:4]}... fit no power-of-two STFT, mono or stereo")


def _mel_layout(band_inputs: list[int]) -> dict:
    for channels in (2, 1):
        if not all(width % (2 * channels) == 0 for width in band_inputs):
            continue
        widths = [width // (2 * channels) for width in band_inputs]
        for n_fft in (2048, 4096, 1024, 512, 8192, 256):
            for sample_rate in (44100, 48000, 32000, 22050, 16000):
                if mel_band_membership(sample_rate, n_fft, len(widths)).sum(dim=1).tolist() == widths:
                    return dict(stereo=channels == 2, num_bands=len(widths), stft_n_fft=n_fft,
                                sample_rate=sample_rate)
    raise ValueError(f"band widths {band_inputs[:4]}... match no Mel filterbank tried (n_fft 256-8192, 16-48 kHz)")


def describe(state: dict[str, torch.Tensor]) -> str:
    """A human-readable summary: the implied configuration, parameter count and stored precision."""
    config = infer_config(state)
    # rotary frequencies are stored once per attention layer but are one (untrained) tensor per axis
    rotary = [key for key in state if key.endswith("rotary_embed.freqs")]
    unique = sum(value.numel() for key, value in state.items() if key not in rotary)
    if rotary:
        unique += 2 * state[rotary[0]].numel()
    dtypes = Counter(str(value.dtype).removeprefix("torch.") for value in state.values())
    lines = [f"architecture: {config.pop('model_type')}"]
    for key, value in config.items():
        if key == "freqs_per_bands":
            value = f"{len(value)} bands: {value}"
        lines.append(f"{key}: {value}")
    lines.append(f"parameters: {unique:,}")
    lines.append("stored as: " + ", ".join(f"{dtype} ({count} tensors)" for dtype, count in dtypes.items()))
    return "\n".join(lines)


def implied_yaml(state: dict[str, torch.Tensor], source: str | Path = "the checkpoint") -> str:
    """An MSST YAML config that builds a model this checkpoint loads into strictly. What the weights do not record
    (the hop length, the sample rate of a BS model, chunking, stem names) is set to the published models' usual
    values and marked."""
    import yaml

    model = infer_config(state)
    model_type = model.pop("model_type")
    sample_rate = model.pop("sample_rate", None) if model_type == "bs_roformer" else model.get("sample_rate")
    if "freqs_per_bands" in model:
        model["freqs_per_bands"] = list(model["freqs_per_bands"])
    model.update(stft_hop_length=441, stft_win_length=model["stft_n_fft"])
    stems = [f"stem{index}" for index in range(model["num_stems"])] if model["num_stems"] > 1 else ["vocals"]
    rate = sample_rate or 44100
    config = {
        "audio": {"sample_rate": rate, "chunk_size": 8 * rate,
                  "num_channels": 2 if model["stereo"] else 1},
        "model": model,
        "training": {"model_type": model_type, "instruments": stems,
                     **({"target_instrument": stems[0]} if len(stems) == 1 else {})},
        "inference": {"num_overlap": 2, "batch_size": 1},
    }
    unrecorded = ("# Not recorded in the weights, set to the published models' usual values (check the model's page):\n"
                  "#   model.stft_hop_length (441 for most published models, 512 for some); model.zero_dc (false\n"
                  "#   for checkpoints trained with older code, e.g. viperx's and Kim's); audio.sample_rate"
                  f"{'' if sample_rate else ' (44100)'};\n"
                  "#   audio.chunk_size; inference; the stem names (training.instruments).\n")
    return f"# Config implied by {source} (bs-roformer inspect --yaml)\n{unrecorded}" + yaml.safe_dump(
        config, sort_keys=False, default_flow_style=None, width=120)
