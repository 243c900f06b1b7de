"""The training settings, checked: one dataclass per YAML section, field names the published MSST keys.

`read_settings(config)` turns a config dict into `Settings` (`.training`, `.augmentations`, `.lora`, `.optimizer`,
plus the `audio:` values training reads). Every key MSST reads has a field here or is listed in `UNSUPPORTED` (an
error that says so) or in `NO_EFFECT` (accepted, doing nothing here, as in MSST). Any other key warns, naming it.

Meanings follow MSST: an epoch is `num_steps` batches (so `num_steps / gradient_accumulation_steps` optimizer
steps), the run is `num_epochs` epochs, validation runs at the end of each epoch, and the default scheduler is
ReduceLROnPlateau (mode max) on `metric_for_scheduler`, stepped once per epoch. A Roformer trains on its own loss;
`use_standard_loss` (MSST's `--use_standard_loss`) replaces it with the `loss` terms of `losses.py`, weighted by
their `<loss>_coef`, which read `q` and `coarse_loss_clip`.

Configs written for this project before it followed MSST have no `num_epochs` and meant by `num_steps` the whole run:
such a config is read as one epoch of `num_steps` batches with the old defaults (AdamW, warm-up + cosine, no AMP),
with one warning saying so. Their old augmentation keys (`gain_db`, `channel_swap`, `polarity`) are converted to
MSST's (`loudness`, `channel_shuffle`, `random_polarity`), with a warning.

`augmentations:` per stem (`all:`, overridden key by key by a section named after the stem) reads MSST's
audiomentations transforms (`AUDIOMENTATIONS_EFFECTS`) and pedalboard effects (`PEDALBOARD_EFFECTS`), and at the top
level `mp3_compression_on_mixture` (`MIXTURE_AUDIOMENTATIONS`). Each is a probability; one switched on (above 0)
needs every parameter key MSST reads for it, typed, and its package importable (the `augment` extra; the MP3 backend's
module too), else a ValueError saying what to add or install. A switched-off one may keep its parameters.
"""

import dataclasses
import importlib
import math
import warnings
from dataclasses import dataclass, field

OPTIMIZERS = ("adam", "adamw", "radam", "rmsprop", "sgd", "prodigy")
SCHEDULERS = ("ReduceLROnPlateau", "linear_scheduler", "cosine")
METRICS = ("sdr", "si_sdr", "l1_freq", "bleedless", "fullness")
DATASET_TYPES = (1, 2, 3, 4, 6, 7)
# MSST's `--loss` terms (losses.py), each weighted by `training.<loss>_coef`
LOSSES = ("masked_loss", "mse_loss", "l1_loss", "multistft_loss", "spec_masked_loss", "spec_rmse_loss")
# MSST's other terms come from packages that need torchaudio, which this project keeps out
LOSSES_NEEDING_TORCHAUDIO = {"log_wmse_loss": "torch-log-wmse", "l1_snr_loss": "torch-l1-snr",
                             "l1_snr_db_loss": "torch-l1-snr", "stft_l1_snr_db_loss": "torch-l1-snr",
                             "multi_l1_snr_db_loss": "torch-l1-snr"}

# keys MSST reads that we understand but do not implement: a config that sets them trains differently here
UNSUPPORTED = {
    "normalize": "per-batch mean/std normalisation of the inputs is not implemented",
    "precompute_chunks": "precomputed loud chunks are not implemented (chunks are drawn at random)",
    "k_sdr": "the k_sdr metric is not implemented",
}
# keys MSST reads that do nothing here: log_wmse_loss's filter switch (that loss is refused, see losses.py), MSST's
# bookkeeping, and the legacy augmentation keys MSST itself ignores
NO_EFFECT = {
    "bypass_filter", "read_metadata_procs", "augmentation", "augmentation_type",
    "use_mp3_compress", "augmentation_mix", "augmentation_loudness", "augmentation_loudness_type",
    "augmentation_loudness_min", "augmentation_loudness_max", "num_precompute_chunks", "precompute_batch_for_chunks",
}
# the config's top-level sections: `model:` and `inference:` are read where the model is built and where it separates
SECTIONS = {"audio", "model", "training", "augmentations", "inference", "optimizer", "lora", "loss_multistft"}
# `audio:` keys the trainer reads, and those MSST's configs carry for other architectures (MDX23C's STFT, the
# channel count inference.py reads) that a Roformer's model section settles
AUDIO_KEYS = {"chunk_size", "sample_rate", "min_mean_abs"}
AUDIO_NO_EFFECT = {"num_channels", "hop_length", "n_fft", "dim_t", "dim_f"}
AUGMENTATIONS_UNSUPPORTED = {
    "chunk_size_augm": "random chunk lengths per batch are not implemented",
}
# MSST's audiomentations transforms per stem, in the order MSST applies them (after random_polarity, before the
# pedalboard effects): (audiomentations class, {its argument: the MSST key giving it}, fixed arguments). p=1 on the
# transform itself, since the probability is drawn before it is called. They need the `augment` extra.
AUDIOMENTATIONS_EFFECTS = {
    "pitch_shift": ("PitchShift", {"min_semitones": "pitch_shift_min_semitones",
                                   "max_semitones": "pitch_shift_max_semitones"}, {}),
    "seven_band_parametric_eq": ("SevenBandParametricEQ", {"min_gain_db": "seven_band_parametric_eq_min_gain_db",
                                                           "max_gain_db": "seven_band_parametric_eq_max_gain_db"}, {}),
    "tanh_distortion": ("TanhDistortion", {"min_distortion": "tanh_distortion_min",
                                           "max_distortion": "tanh_distortion_max"}, {}),
    "mp3_compression": ("Mp3Compression", {"min_bitrate": "mp3_compression_min_bitrate",
                                           "max_bitrate": "mp3_compression_max_bitrate",
                                           "backend": "mp3_compression_backend"}, {}),
    "gaussian_noise": ("AddGaussianNoise", {"min_amplitude": "gaussian_noise_min_amplitude",
                                            "max_amplitude": "gaussian_noise_max_amplitude"}, {}),
    "time_stretch": ("TimeStretch", {"min_rate": "time_stretch_min_rate", "max_rate": "time_stretch_max_rate"},
                     {"leave_length_unchanged": True}),
}
# the one audiomentations transform MSST applies to the mixture (top level of `augmentations:`), same layout
MIXTURE_AUDIOMENTATIONS = {
    "mp3_compression_on_mixture": ("Mp3Compression", {"min_bitrate": "mp3_compression_on_mixture_bitrate_min",
                                                      "max_bitrate": "mp3_compression_on_mixture_bitrate_max",
                                                      "backend": "mp3_compression_on_mixture_backend"}, {}),
}
# Mp3Compression's backends: the module each imports, and how to install it
MP3_BACKENDS = {
    "fast-mp3-augment": ("fast_mp3_augment", "pip install 'bs-roformer-fast[augment]'"),
    "pydub": ("pydub", "pip install pydub (it also needs ffmpeg)"),
}
# compat: MSST's configs name `lameenc`, which audiomentations >= 0.42 runs only with LAME's encoder delay kept (the
# audio several hundred samples late: an MP3'd mixture would no longer line up with its stems); fast-mp3-augment runs
# the same LAME encoder and removes the delay, so it stands in
MP3_BACKEND_STAND_INS = {"lameenc": "fast-mp3-augment"}
# MSST's pedalboard effects, in the order MSST applies them: (pedalboard class, its arguments, the keys' middle part
# per argument: `<effect>_<part>_min` and `_max` bound the uniform draw). They need the `augment` extra.
PEDALBOARD_EFFECTS = {
    "pedalboard_reverb": ("Reverb", {"room_size": "room_size", "damping": "damping", "wet_level": "wet_level",
                                     "dry_level": "dry_level", "width": "width"}),
    "pedalboard_chorus": ("Chorus", {"rate_hz": "rate_hz", "depth": "depth", "centre_delay_ms": "centre_delay_ms",
                                     "feedback": "feedback", "mix": "mix"}),
    "pedalboard_phazer": ("Phaser", {"rate_hz": "rate_hz", "depth": "depth",
                                     "centre_frequency_hz": "centre_frequency_hz", "feedback": "feedback",
                                     "mix": "mix"}),
    "pedalboard_distortion": ("Distortion", {"drive_db": "drive_db"}),
    "pedalboard_pitch_shift": ("PitchShift", {"semitones": "semitones"}),
    "pedalboard_resample": ("Resample", {"target_sample_rate": "target_sample_rate"}),
    "pedalboard_bitcrash": ("Bitcrush", {"bit_depth": "bit_depth"}),
    # compat: MSST's keys for the MP3 quality repeat the effect's name
    "pedalboard_mp3_compressor": ("MP3Compressor", {"vbr_quality": "pedalboard_mp3_compressor"}),
}


@dataclass
class Training:
    """`training:`. MSST keys first; after them this project's own (marked "ours")."""

    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    grad_clip: float = 0.0  # 0 = off
    instruments: list[str] = field(default_factory=list)
    target_instrument: str | None = None
    lr: float = 5e-4
    patience: int = 2  # ReduceLROnPlateau: epochs without improvement before the rate drops
    reduce_factor: float = 0.95  # ReduceLROnPlateau: the factor it drops by
    num_epochs: int = 1
    num_steps: int = 1000  # batches per epoch
    ema_momentum: float = 0.0  # 0 = no EMA
    optimizer: str = "adam"
    other_fix: bool = False  # validation compares `other` with mixture - vocals
    q: float = 0.95  # masked_loss, spec_masked_loss: errors at or above this quantile are masked out
    coarse_loss_clip: bool = True  # masked_loss, spec_masked_loss: average the errors before masking
    use_amp: bool = True
    scheduler: str = "ReduceLROnPlateau"
    num_warmup_steps: int = 0  # linear_scheduler
    model_type: str | None = None
    max_class_presence_ratio: float = 0.4  # dataset type 7
    metric_for_scheduler: str = "sdr"  # MSST: a command-line flag
    metrics: list[str] = field(default_factory=lambda: ["sdr"])  # MSST: a command-line flag
    dataset_type: int = 1  # MSST: a command-line flag
    seed: int = 0  # MSST: a command-line flag
    num_workers: int = 0  # MSST: a command-line flag
    use_standard_loss: bool = False  # MSST: a command-line flag; train on `loss` instead of the model's own loss
    loss: list[str] = field(default_factory=lambda: ["masked_loss"])  # MSST: a command-line flag (`losses.py`)
    masked_loss_coef: float = 1.0  # MSST: command-line flags, the weight of each `loss` term
    mse_loss_coef: float = 1.0
    l1_loss_coef: float = 1.0
    multistft_loss_coef: float = 0.001
    spec_masked_loss_coef: float = 1.0
    spec_rmse_loss_coef: float = 1.0
    warmup_steps: int = 0  # ours: warm-up of the cosine scheduler, in optimizer steps
    validate_every: int = 0  # ours: also validate every this many optimizer steps (0: at each epoch's end only)
    checkpoint_every: int | None = None  # ours: optimizer steps between writes of last.ckpt (see `checkpoint_interval`)
    compile: bool | str = False  # ours: torch.compile the transformer stack (true: inductor, or a backend's name)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: one per `gradient_accumulation_steps` batches, and one at the epoch's end."""
        return math.ceil(self.num_steps / self.gradient_accumulation_steps)

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    @property
    def checkpoint_interval(self) -> int:
        """`checkpoint_every`, by default min(500, a tenth of the run): a short run is resumable too."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, min(500, self.total_steps // 10))


@dataclass
class StemAugmentations:
    """Per-stem augmentations (MSST's `all:` section, overridden by a section named after the stem): probabilities."""

    channel_shuffle: float = 0.0  # swap left and right
    random_inverse: float = 0.0  # reverse in time
    random_polarity: float = 0.0  # negate
    # {effect: (probability, {audiomentations argument: value})} for the AUDIOMENTATIONS_EFFECTS switched on
    audiomentations: dict = field(default_factory=dict)
    # {effect: (probability, {pedalboard argument: (low, high)})} for the PEDALBOARD_EFFECTS switched on
    pedalboard: dict = field(default_factory=dict)


@dataclass
class Augmentations:
    """`augmentations:`; nothing happens unless `enable` is true."""

    enable: bool = False
    loudness: bool = False  # scale each stem by a gain drawn uniformly in [loudness_min, loudness_max]
    loudness_min: float = 0.5
    loudness_max: float = 1.5
    mixup: bool = False  # mix extra chunks of the same stem into it (dataset types 1-3)
    mixup_probs: tuple[float, ...] = (0.2, 0.02)  # one extra chunk per entry, each with this probability
    mixup_loudness_min: float = 0.5  # compat: MSST reads these but scales mixup chunks by loudness_min/max
    mixup_loudness_max: float = 1.5
    stems: dict[str, StemAugmentations] = field(default_factory=dict)  # `all` and per-stem sections
    # on the mixture, after the loudness gains: as StemAugmentations.audiomentations, for MIXTURE_AUDIOMENTATIONS
    mixture: dict = field(default_factory=dict)

    def for_stem(self, stem: str) -> StemAugmentations:
        return self.stems.get(stem) or self.stems.get("all") or StemAugmentations()


@dataclass
class Lora:
    """`lora:` (loralib's `lora.Linear` arguments): rank `r`, scale `lora_alpha / r`, dropout on the adapter input."""

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    merge_weights: bool = False
    fan_in_fan_out: bool = False


@dataclass
class Settings:
    training: Training
    augmentations: Augmentations
    lora: Lora
    optimizer: dict  # extra keyword arguments for the optimizer (MSST's top-level `optimizer:` section)
    loss_multistft: dict = field(default_factory=dict)  # auraloss's MultiResolutionSTFTLoss arguments (top level)
    chunk_size: int = 131584
    sample_rate: int = 44100
    min_mean_abs: float = 0.0


def _warn(message: str):
    warnings.warn(message, stacklevel=3)


def _typed(section: str, key: str, value, annotation):
    """`value` as the field's type, or a ValueError naming the key and the type expected."""
    kind = str(annotation)
    try:
        if value is None and "None" in kind:
            return None
        if annotation is bool or kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if annotation is int or kind == "int" or kind == "int | None":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if annotation is float or kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if "list" in kind or "tuple" in kind:
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value) if "list" in kind else tuple(float(v) for v in value)
        if kind == "bool | str":
            if not isinstance(value, (bool, str)):
                raise TypeError
            return value
        if "str" in kind:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        expected = kind.replace("<class '", "").replace("'>", "")
        raise ValueError(f"{section}.{key} is {value!r}; expected {expected}") from None
    return value


def _fill(cls, section: str, values: dict, skip=()) -> object:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = {}
    for key, value in values.items():
        if key in skip:
            continue
        if key in fields:
            known[key] = _typed(section, key, value, fields[key].type)
        else:
            _warn(f"{section}.{key} is not a key this trainer knows; it is ignored")
    return cls(**known)


def _convert_old_augmentations(section: dict) -> dict:
    """This project's old spelling (gain_db, channel_swap, polarity: always on) to MSST's."""
    old = {key: section[key] for key in ("gain_db", "channel_swap", "polarity") if key in section}
    if not old:
        return section
    _warn(f"augmentations {sorted(old)} are this project's old spelling, converted to MSST's: enable, loudness "
          "(loudness_min/max as linear gains), all: {channel_shuffle, random_polarity}")
    converted = {key: value for key, value in section.items() if key not in old}
    converted.setdefault("enable", True)
    if "gain_db" in old:
        low, high = old["gain_db"]
        converted.update(loudness=True, loudness_min=10 ** (low / 20), loudness_max=10 ** (high / 20))
    stem_section = dict(converted.get("all") or {})
    if "channel_swap" in old:
        stem_section["channel_shuffle"] = old["channel_swap"]
    if "polarity" in old:
        stem_section["random_polarity"] = old["polarity"]
    converted["all"] = stem_section
    return converted


def _read_pedalboard(name: str, values: dict) -> dict:
    """The pedalboard effects a per-stem section switches on (probability > 0), with their ranges."""
    effects = {}
    for effect, (_, arguments) in PEDALBOARD_EFFECTS.items():
        chance = float(values.get(effect) or 0)
        if chance <= 0:
            continue
        ranges = {}
        for argument, part in arguments.items():
            keys = [f"{effect}_{part}_min", f"{effect}_{part}_max"]
            missing = [key for key in keys if key not in values]
            if missing:
                raise ValueError(f"augmentations.{name}.{effect} needs {missing[0]} (and its _min/_max pair)")
            ranges[argument] = (float(values[keys[0]]), float(values[keys[1]]))
        effects[effect] = (chance, ranges)
    _require("pedalboard", f"augmentations.{name}", effects)
    return effects


def _require(package: str, where: str, effects: dict):
    """A ValueError saying how to install `package` when `effects` (those switched on) need it and it is missing:
    a training run should fail at its start, not at its first augmented chunk."""
    if effects:
        try:
            importlib.import_module(package)
        except ImportError:
            raise ValueError(f"{where}: {sorted(effects)} need {package}: "
                             "pip install 'bs-roformer-fast[augment]'") from None


def _read_audiomentations(where: str, values: dict, table: dict) -> dict:
    """The transforms of `table` (AUDIOMENTATIONS_EFFECTS or MIXTURE_AUDIOMENTATIONS) a section switches on
    (probability > 0), with their arguments: every key MSST reads for them is required and typed, and audiomentations
    and the MP3 backend must import."""
    effects = {}
    for effect, (_, arguments, _) in table.items():
        chance = _typed(where, effect, values.get(effect) or 0, float)
        if chance <= 0:
            continue
        given = {}
        for argument, key in arguments.items():
            if key not in values:
                raise ValueError(f"{where}.{effect} needs {key}")
            given[argument] = _typed(where, key, values[key], str if argument == "backend" else float)
        effects[effect] = (chance, given)
    _require("audiomentations", where, effects)
    for effect, (_, given) in effects.items():
        if "backend" in given:
            given["backend"] = _mp3_backend(f"{where}.{table[effect][1]['backend']}", given["backend"])
    return effects


def _mp3_backend(key: str, named: str) -> str:
    """The backend to run for the one `key` names, checked to import."""
    backend = MP3_BACKEND_STAND_INS.get(named, named)
    if backend not in MP3_BACKENDS:
        raise ValueError(f"{key} is {named!r}; audiomentations' MP3 backends are "
                         f"{sorted([*MP3_BACKENDS, *MP3_BACKEND_STAND_INS])}")
    module, install = MP3_BACKENDS[backend]
    try:
        importlib.import_module(module)
    except ImportError:
        runs = f" (run as {backend})" if backend != named else ""
        raise ValueError(f"{key} is {named!r}{runs}, which needs the {module} module: {install} "
                         "(or choose another backend)") from None
    return backend


def _audiomentations_keys(table: dict) -> set[str]:
    """The keys of `table`'s transforms: their probabilities and parameters."""
    return {key for effect, (_, arguments, _) in table.items() for key in (effect, *arguments.values())}


def _read_augmentations(section: dict, instruments: list[str]) -> Augmentations:
    for key, reason in AUGMENTATIONS_UNSUPPORTED.items():
        if section.get(key):
            raise ValueError(f"augmentations.{key} is not supported here: {reason}; remove it or set it to false")
    stems = {}
    for name, value in section.items():
        if isinstance(value, dict) and (name == "all" or name in instruments):
            effects = {key for key in value if key.startswith(tuple(PEDALBOARD_EFFECTS))}
            effects |= _audiomentations_keys(AUDIOMENTATIONS_EFFECTS) & set(value)
            stems[name] = _fill(StemAugmentations, f"augmentations.{name}", value,
                                skip=effects | {"pedalboard", "audiomentations"})
    if "all" in section and "all" not in stems:
        raise ValueError("augmentations.all must be a section of per-stem augmentations")
    for name in stems:  # a stem's own section overrides `all` key by key, effect keys too
        combined = {**(section.get("all") or {}), **section[name]} if name != "all" else section[name]
        stems[name].audiomentations = _read_audiomentations(f"augmentations.{name}", combined, AUDIOMENTATIONS_EFFECTS)
        stems[name].pedalboard = _read_pedalboard(name, combined)
    if "all" in stems:  # a stem's own section overrides `all` key by key, as in MSST
        merged_all = {f.name: getattr(stems["all"], f.name) for f in dataclasses.fields(StemAugmentations)}
        for name in list(stems):
            if name != "all":
                given = [key for key in section[name] if key in merged_all] + ["audiomentations", "pedalboard"]
                stems[name] = StemAugmentations(**{**merged_all, **{k: getattr(stems[name], k) for k in given}})
    # the parameters of an unsupported augmentation that is off, and the mixture's transforms
    skip = set(stems) | _audiomentations_keys(MIXTURE_AUDIOMENTATIONS) | {
        key for key in section if key.startswith(tuple(AUGMENTATIONS_UNSUPPORTED))
        or key in ("chunk_size_min", "chunk_size_max")}
    augmentations = _fill(Augmentations, "augmentations", section, skip=skip | {"stems", "mixture"})
    # as for the effects, the keys MSST reads for what is switched on are required (a default would hide a typo);
    # compat: MSST scales the mixup chunks by loudness_min/max
    for switch, keys in (("loudness", ("loudness_min", "loudness_max")),
                         ("mixup", ("mixup_probs", "loudness_min", "loudness_max"))):
        missing = [key for key in keys if key not in section]
        if augmentations.enable and getattr(augmentations, switch) and missing:
            raise ValueError(f"augmentations.{switch} needs {', '.join(missing)}")
    augmentations.stems = stems
    augmentations.mixture = _read_audiomentations("augmentations", section, MIXTURE_AUDIOMENTATIONS)
    return augmentations


def _read_lora(section: dict) -> Lora:
    if "enable_lora" in section:
        # compat: MSST passes the section to loralib's lora.Linear, which has no enable_lora (a MergedLinear
        # argument): MSST's layers then fail to take adapters; here every Linear layer gets one
        _warn("lora.enable_lora is ignored: it is loralib's MergedLinear argument, and LoRA here (as MSST's "
              "lora.Linear) adapts every Linear layer whole")
    return _fill(Lora, "lora", {key: value for key, value in section.items() if key != "enable_lora"})


def _check_losses(training: Training):
    """MSST's `--loss` terms: known, installable, and not zero by construction."""
    if not training.use_standard_loss:
        if training.loss != ["masked_loss"]:
            _warn(f"training.loss {training.loss} is not used: a Roformer trains on its own loss unless "
                  "use_standard_loss is true (--use-standard-loss), as in MSST")
        return
    for name in training.loss:
        if name in LOSSES_NEEDING_TORCHAUDIO:
            raise ValueError(f"loss {name} is not supported here: MSST computes it with "
                             f"{LOSSES_NEEDING_TORCHAUDIO[name]}, which needs torchaudio; use one of "
                             f"{', '.join(LOSSES)}")
        if name not in LOSSES:
            raise ValueError(f"loss {name!r} is not one of MSST's losses; use one of {', '.join(LOSSES)}")
    if not training.loss:
        raise ValueError(f"training.loss is empty; name at least one of {', '.join(LOSSES)}")
    if not 0 < training.q <= 1:
        raise ValueError(f"training.q is {training.q}; it is a quantile, in (0, 1]")
    if "masked_loss" in training.loss and training.coarse_loss_clip and training.batch_size == 1:
        zero = ("masked_loss with coarse_loss_clip: true is 0 at batch_size 1 (its quantile is taken over the batch, "
                "so the one value per stem is masked out)")
        if training.loss == ["masked_loss"]:
            raise ValueError(f"{zero}, and it is the only loss: raise training.batch_size, set coarse_loss_clip: "
                             "false, or use another --loss")
        _warn(f"{zero}: only the other terms train")
    if "multistft_loss" in training.loss:
        try:
            import auraloss  # noqa: F401
        except ImportError:
            raise ValueError("loss multistft_loss needs auraloss: pip install 'bs-roformer-fast[losses]'") from None


def read_settings(config: dict) -> Settings:
    """The checked settings of a config (a dict as `config.load_config` returns); ValueError for a bad value."""
    training = dict(config.get("training") or {})
    for key, reason in UNSUPPORTED.items():
        if training.get(key):
            raise ValueError(f"training.{key} is not supported here: {reason}; remove it or set it to false")
    if "weight_decay" in training:
        raise ValueError("training.weight_decay: put it in the top-level optimizer: section "
                         "(optimizer: {weight_decay: ...}), where MSST reads the optimizer's arguments")
    if "num_epochs" not in training:
        _warn("training.num_epochs is not set: read as an old bs-roformer config (num_steps batches in all; AdamW, "
              "warm-up + cosine, no AMP unless set). Add num_epochs to use MSST's meaning (num_steps per epoch)")
        training = {"optimizer": "adamw", "scheduler": "cosine", "use_amp": False, **training, "num_epochs": 1}
    values = _fill(Training, "training", training, skip=NO_EFFECT | {"samplerate", "segment"})
    values.instruments = [str(name) for name in values.instruments]
    if values.optimizer not in OPTIMIZERS:
        raise ValueError(f"training.optimizer {values.optimizer!r} is not supported here; use one of {OPTIMIZERS}")
    if values.scheduler not in SCHEDULERS:
        raise ValueError(f"training.scheduler {values.scheduler!r} is not supported; use one of {SCHEDULERS}")
    for metric in [*values.metrics, values.metric_for_scheduler]:
        if metric not in METRICS:
            raise ValueError(f"validation metric {metric!r} is not supported; use one of {METRICS}")
    if values.metric_for_scheduler not in values.metrics:  # as MSST: the scheduler's metric is always computed
        values.metrics.append(values.metric_for_scheduler)
    if values.dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset type {values.dataset_type} is not supported; use one of {DATASET_TYPES}")
    for key in ("batch_size", "gradient_accumulation_steps", "num_epochs", "num_steps"):
        if getattr(values, key) < 1:
            raise ValueError(f"training.{key} is {getattr(values, key)}; it must be at least 1")

    _check_losses(values)

    for section in sorted(set(config) - SECTIONS):
        _warn(f"{section}: is not a section this trainer reads; it is ignored "
              f"(sections: {', '.join(sorted(SECTIONS))})")
    audio = config.get("audio") or {}
    for key in sorted(set(audio) - AUDIO_KEYS - AUDIO_NO_EFFECT):
        _warn(f"audio.{key} is not a key this trainer knows; it is ignored")
    augmentation_section = _convert_old_augmentations(dict(config.get("augmentations") or {}))
    optimizer = config.get("optimizer") or {}
    if not isinstance(optimizer, dict):
        raise ValueError("optimizer: must be a section of keyword arguments for the optimizer")
    multistft = config.get("loss_multistft") or {}
    if not isinstance(multistft, dict):
        raise ValueError("loss_multistft: must be a section of keyword arguments for auraloss's "
                         "MultiResolutionSTFTLoss")
    return Settings(
        training=values,
        augmentations=_read_augmentations(augmentation_section, values.instruments),
        lora=_read_lora(dict(config.get("lora") or {})),
        optimizer=dict(optimizer),
        loss_multistft=dict(multistft),
        chunk_size=_typed("audio", "chunk_size", audio.get("chunk_size", 131584), int),
        sample_rate=_typed("audio", "sample_rate", audio.get("sample_rate", 44100), int),
        min_mean_abs=_typed("audio", "min_mean_abs", audio.get("min_mean_abs", 0.0), float),
    )
