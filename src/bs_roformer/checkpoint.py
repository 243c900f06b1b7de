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
SHARED_PER_AXIS = ("rotary_embed.freqs", "pope_embed.bias")  # one tensor per axis, stored under every layer
NOT_PARAMETERS = ("pope_embed.inv_freqs", "running_mean", "running_var", "num_batches_tracked")  # buffers


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
    """The constructor arguments a state_dict implies, with `model_type`: "bs_roformer" or "mel_band_roformer"
    (classic layout, `use_pope` when it has polar positions), "bs_roformer_experimental" or
    "mel_band_roformer_experimental" (hyper-connection keys `.branch.` / `static_alpha`, or value-residual gates in
    the blocks after the first only, with axes of several layers), "bs_conformer" or "mel_band_conformer" (conformer blocks); unwa's mask heads
    as `mask_estimator` (`mask_estimators.N.layers.*`: the axial refiner, `.segm.*`: HyperACE). STFT settings that
    leave no trace in the weights (hop, window) are not included; `stft_n_fft` (and, for Mel, `sample_rate`) are the
    smallest standard values that fit the band widths."""
    if "band_split.to_features.0.1.weight" not in state:
        raise ValueError("not a BS-/Mel-RoFormer checkpoint: no 'band_split.to_features.0.1.weight' key")
    dim = state["band_split.to_features.0.1.weight"].shape[0]
    band_inputs = [state[f"band_split.to_features.{band}.0.gamma"].numel()
                   for band in _layer_indices(state, r"band_split\.to_features\.(\d+)\.0\.gamma")]
    blocks = _layer_indices(state, r"layers\.(\d+)\.")
    axes = _layer_indices(state, r"layers\.0\.(\d+)\.")
    has_linear = any(key.startswith("layers.0.0.layers.0.0.temperature") for key in state)
    time_axis = 1 if has_linear else 0
    is_conformer = f"layers.0.{time_axis}.layers.0.attn.to_qkv.weight" in state
    streams_key = f"layers.0.{time_axis}.layers.0.0.static_alpha"
    if is_conformer:
        first_attention = f"layers.0.{time_axis}.layers.0.attn."
    elif streams_key in state:
        first_attention = f"layers.0.{time_axis}.layers.0.0.branch."
    else:
        first_attention = f"layers.0.{time_axis}.layers.0.0."
    if first_attention + "to_gates.weight" not in state:
        raise ValueError(f"unexpected transformer layout: no {first_attention}to_gates.weight key")
    heads = state[first_attention + "to_gates.weight"].shape[0]
    depth_names = ("time_conformer_depth", "freq_conformer_depth", "linear_conformer_depth") if is_conformer else (
        "time_transformer_depth", "freq_transformer_depth", "linear_transformer_depth")
    config = dict(
        dim=dim,
        depth=len(blocks),
        num_stems=len(_layer_indices(state, r"mask_estimators\.(\d+)\.")),
        **{depth_names[0]: len(_layer_indices(state, rf"layers\.0\.{time_axis}\.layers\.(\d+)\.")),
           depth_names[1]: len(_layer_indices(state, rf"layers\.0\.{time_axis + 1}\.layers\.(\d+)\.")),
           depth_names[2]: len(_layer_indices(state, r"layers\.0\.0\.layers\.(\d+)\.")) if has_linear else 0},
        heads=heads,
        dim_head=state[first_attention + "to_qkv.weight"].shape[0] // (3 * heads),
    )
    if len(axes) != (3 if has_linear else 2):
        raise ValueError(f"unexpected transformer layout: block 0 has {len(axes)} parts")
    linears = _layer_indices(state, r"mask_estimators\.0\.to_freqs\.0\.0\.(\d+)\.weight")
    is_mel = "final_norm.gamma" not in state
    if len(linears) > 1:
        config["mlp_expansion_factor"] = state["mask_estimators.0.to_freqs.0.0.0.weight"].shape[0] // dim
    if first_attention + "pope_embed.bias" in state:
        config["use_pope"] = True

    gated_blocks = {int(key.split(".")[1]) for key in state if "to_value_residual_mix" in key}
    one_layer_axes = config[depth_names[0]] == 1 and config[depth_names[1]] == 1
    if is_conformer:
        block = f"layers.0.{time_axis}.layers.0."
        depthwise = state[block + "conv.net.4.weight"]
        config.update(ff_mult=state[block + "ff1.ff.net.1.weight"].shape[0] // dim,
                      conv_expansion_factor=depthwise.shape[0] // dim, conv_kernel_size=depthwise.shape[-1])
        model_type = "mel_band_conformer" if is_mel else "bs_conformer"
    elif streams_key in state or (gated_blocks and 0 not in gated_blocks and not one_layer_axes):
        # gates in every layer after the first block and none in it: lucidrains 0.5.x and MSST's experimental
        # classes. With one-layer axes that is also `add_value_residual`'s layout and lucidrains' numerics (unwa's
        # published value-residual model); with deeper axes only the experimental type builds it
        config.update(num_residual_streams=state[streams_key].shape[0] if streams_key in state else 1)
        if gated_blocks:
            config["use_value_residual_learning"] = True
        model_type = "mel_band_roformer_experimental" if is_mel else "bs_roformer_experimental"
    else:
        if gated_blocks:
            config["add_value_residual"] = True
        model_type = "mel_band_roformer" if is_mel else "bs_roformer"

    head = _mask_head(state)
    if head is not None:
        config["mask_estimator"] = head

    if is_mel:
        extra_mask_layers = 0 if is_conformer else 1  # the Mel-Band RoFormer's MLP has one Linear layer more
        config.update(model_type=model_type, mask_estimator_depth=len(linears) - extra_mask_layers)
        config.update(_mel_layout(band_inputs))
    else:
        config.update(model_type=model_type, mask_estimator_depth=len(linears))
        config.update(_bs_layout(band_inputs))
    return config


def _mask_head(state: dict) -> dict | None:
    """The `mask_estimator` option of unwa's heads, from their keys (None for the classic per-band MLPs)."""
    refiner_layers = _layer_indices(state, r"mask_estimators\.0\.layers\.(\d+)\.")
    if refiner_layers:
        return {"kind": "axial_refiner_large_v2", "axial_refiner_depth": len(refiner_layers)}
    prototypes = "mask_estimators.0.segm.hyperace.high_order_branch.0.ahc.adaptive_hyperedge_gen.global_proto"
    if prototypes in state:
        refined = any(key.startswith("mask_estimators.0.segm.upsample_head.block1.out_conv.") for key in state)
        version = 2 if refined else 1  # v2 refines each upsampling with a TFC-TDF block
        return {"kind": f"hyperace_residual_v{version}", "num_hyperedges": state[prototypes].shape[0]}
    return None


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
    # parameters as `model.parameters()` counts them: shared position tensors once per axis, buffers not at all
    unique = sum(value.numel() for key, value in state.items() if not key.endswith(SHARED_PER_AXIS + NOT_PARAMETERS))
    for suffix in SHARED_PER_AXIS:
        shared = [key for key in state if key.endswith(suffix)]
        if shared:
            unique += 2 * state[shared[0]].numel()
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
