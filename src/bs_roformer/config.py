"""MSST-style YAML configs, and building a model from a config and a checkpoint with errors that say what is wrong.

Configs have sections `audio`, `model` (constructor arguments), `training` (`instruments`, `target_instrument`,
`model_type`, ...), `inference` (`chunk_size`, `num_overlap`, `batch_size`). Published configs tag tuples with
`!!python/tuple`, which `yaml.safe_load` refuses; the loader here accepts that one tag and nothing else that would
construct Python objects.
"""

import inspect
import warnings
from pathlib import Path

import torch
import yaml

from .checkpoint import infer_config, load_state_dict
from .models import BSRoformer, MelBandRoformer
from .models.conformer import BSConformer, MelBandConformer
from .models.experimental import BSRoformerExperimental, MelBandRoformerExperimental

# training.model_type -> class; the names are MSST's
MODEL_CLASSES = {
    "bs_roformer": BSRoformer,
    "mel_band_roformer": MelBandRoformer,
    "bs_roformer_experimental": BSRoformerExperimental,
    "mel_band_roformer_experimental": MelBandRoformerExperimental,
    "bs_conformer": BSConformer,
    "mel_band_conformer": MelBandConformer,
}


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus `!!python/tuple`."""


_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node, deep=True))
)


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        config = yaml.load(path.read_text(), Loader=_ConfigLoader)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not a valid YAML config: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{path} has no 'model:' section with the model's constructor arguments")
    return config


# model keys that only a variant takes, so that a config without training.model_type still selects it
CONFORMER_KEYS = ("time_conformer_depth", "freq_conformer_depth", "linear_conformer_depth", "conv_kernel_size",
                  "conv_expansion_factor")
EXPERIMENTAL_KEYS = ("use_value_residual_learning", "num_residual_streams")


def _model_type_from_keys(model: dict) -> str | None:
    kind = "bs" if "freqs_per_bands" in model else "mel" if "num_bands" in model else None
    if kind is None:
        return None
    if any(key in model for key in CONFORMER_KEYS):
        return {"bs": "bs_conformer", "mel": "mel_band_conformer"}[kind]
    if any(key in model for key in EXPERIMENTAL_KEYS):
        return {"bs": "bs_roformer_experimental", "mel": "mel_band_roformer_experimental"}[kind]
    return {"bs": "bs_roformer", "mel": "mel_band_roformer"}[kind]


def model_type_of(config: dict, state: dict | None = None, override: str | None = None) -> str:
    """`override`, else `training.model_type`, else what the model keys (or the checkpoint) say."""
    model_type = override or (config.get("training") or {}).get("model_type")
    if model_type is None:
        model_type = _model_type_from_keys(config["model"])
    if model_type is None:
        if state is None:
            raise ValueError("cannot tell the model type: set training.model_type (one of "
                             f"{', '.join(sorted(MODEL_CLASSES))}), or pass --model-type")
        model_type = infer_config(state)["model_type"]
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model type {model_type!r} is not supported; use one of "
                         f"{', '.join(sorted(MODEL_CLASSES))}")
    return model_type


def stem_names(config: dict) -> list[str]:
    """The model's output stems: `training.target_instrument` for a one-stem model, else `training.instruments`."""
    training = config.get("training") or {}
    if training.get("target_instrument"):
        return [training["target_instrument"]]
    instruments = list(training.get("instruments") or [])
    num_stems = config["model"].get("num_stems", 1)
    return instruments[:num_stems] if len(instruments) >= num_stems else [f"stem{i}" for i in range(num_stems)]


def setting(config: dict, section: str, key: str, kind: type, default):
    """`config[section][key]` as `kind` (int or float), else `default`; a value that is not a number is a ValueError
    naming the key."""
    value = (config.get(section) or {}).get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{section}.{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def check_model_options(model_class: type, options: dict, model_type: str | None = None):
    """Unknown keys and values of the wrong type in a config's `model:` section, named, as a ValueError (which says
    so when the keys are another model type's)."""
    from .models.roformer import IGNORED_CONFIG_KEYS, Roformer

    parameters = {}  # of the public constructors: the class and the bases it passes options on to, up to Roformer
    for cls in model_class.__mro__:
        if cls is Roformer:
            break
        if "__init__" in cls.__dict__:
            parameters = {**inspect.signature(cls.__init__).parameters, **parameters}
    for key, value in options.items():
        if key not in parameters or parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
            if key in IGNORED_CONFIG_KEYS:
                continue
            looks_like = _model_type_from_keys(options)
            if looks_like and model_type and looks_like != model_type:
                raise ValueError(f"model.{key} is not an option of {model_class.__name__}: the config's model "
                                 f"section is a {looks_like}'s; use --model-type {looks_like} (or training."
                                 f"model_type: {looks_like})")
            raise ValueError(f"unknown model option model.{key} (= {value!r}) for {model_class.__name__}; "
                             "check its spelling against the model's published config")
        parameter = parameters[key]
        expected = parameter.annotation if parameter.annotation in (bool, int, float) else \
            type(parameter.default) if isinstance(parameter.default, (bool, int, float)) else None
        if expected is bool and not isinstance(value, bool):
            raise ValueError(f"model.{key} must be true or false, got {value!r}")
        if expected in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                         or (expected is int and value != int(value))):
            kind = "an integer" if expected is int else "a number"
            raise ValueError(f"model.{key} must be {kind}, got {value!r}")


def build_model(config: dict, model_type: str) -> torch.nn.Module:
    model_class = MODEL_CLASSES[model_type]
    check_model_options(model_class, config["model"], model_type)
    return model_class(**config["model"])


def _explain_mismatch(config: dict, model: torch.nn.Module, model_type: str, state: dict) -> str | None:
    """Which config values disagree with what the checkpoint's tensors imply, or None if the layouts agree."""
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in state.items()}
    if ours == theirs:
        return None
    if state and all(key.endswith((".lora_A", ".lora_B")) for key in state):
        return ("the checkpoint is a LoRA adapter (only lora_A/lora_B tensors): give its base model's checkpoint "
                "instead, and this file with --lora (separate, evaluate) or --lora-checkpoint (train --lora)")
    try:
        implied = infer_config(state)
    except ValueError as error:
        return f"the checkpoint does not look like a Roformer: {error}"
    if implied["model_type"] != model_type:
        return (f"the config builds a {model_type} but the checkpoint holds a {implied['model_type']} "
                f"(set training.model_type: {implied['model_type']})")
    built = infer_config(model.state_dict())
    problems = []
    for key, value in implied.items():
        if built.get(key) != value and key not in ("stft_n_fft", "sample_rate"):
            given = config["model"].get(key, f"{built.get(key)!r} (the default)")
            problems.append(f"model.{key} is {given} but the checkpoint implies {value!r}")
    if not problems:  # the band layout differs for a reason the two keys above explain
        for key in ("stft_n_fft", "sample_rate"):
            if key in implied and built.get(key) != implied[key]:
                problems.append(f"model.{key} gives other bands than the checkpoint, which fit {key} = {implied[key]}")
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if not problems:
        problems.append(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
    return "; ".join(problems)


def warn_if_trained_without_zero_dc(checkpoint_name: str):
    """A published checkpoint known by its file name that was trained without MSST's `zero_dc` (the default here,
    as in MSST) gives wrong output with a config that does not say `zero_dc: false`."""
    from .pretrained import entry_for_checkpoint_file

    entry = entry_for_checkpoint_file(checkpoint_name)
    shipped = entry is not None and entry["config"] is not None and Path(entry["config"]).is_file()
    if shipped and load_config(entry["config"])["model"].get("zero_dc") is False:
        warnings.warn(f"{checkpoint_name} looks like the published model {entry['id']}, which was trained without "
                      "zero_dc: add `zero_dc: false` to the config's model section, or use -n " + entry["id"],
                      stacklevel=3)


def with_mask_head_of(config: dict, state: dict, model_type: str) -> dict:
    """The config, with the checkpoint's `mask_estimator` head when the config names none: the published YAMLs of
    unwa's HyperACE and Large v2 models are plain bs_roformer configs (their head came with a replaced model file),
    so only the checkpoint tells."""
    if model_type != "bs_roformer" or "mask_estimator" in config["model"]:
        return config
    try:
        head = infer_config(state).get("mask_estimator")
    except ValueError:  # not a Roformer: the mismatch check says so
        return config
    return config if head is None else {**config, "model": {**config["model"], "mask_estimator": head}}


def load_model(config: str | Path | dict, checkpoint: str | Path | dict, model_type: str | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the model a config describes, load the checkpoint strictly, return (model in eval mode, config)."""
    config = config if isinstance(config, dict) else load_config(config)
    state = checkpoint if isinstance(checkpoint, dict) else load_state_dict(checkpoint)
    model_type = model_type_of(config, state, model_type)
    if not isinstance(checkpoint, dict) and "zero_dc" not in config["model"]:
        warn_if_trained_without_zero_dc(Path(checkpoint).name)
    config = with_mask_head_of(config, state, model_type)
    model = build_model(config, model_type)
    problem = _explain_mismatch(config, model, model_type, state)
    if problem:
        raise ValueError(f"the checkpoint does not fit the config: {problem}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config
