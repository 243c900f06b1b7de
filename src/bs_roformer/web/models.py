"""The models the web page offers, and the one model kept loaded.

A choice is named by an id: `demo` (the model shipped in the package), `local` (a config and checkpoint on this
machine, given as paths), or the id of a registry entry. The registry plugs in at the two functions under "registry
hook" below and nowhere else."""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DEMO, LOCAL = "demo", "local"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model menu."""

    id: str
    label: str
    stems: tuple[str, ...]  # empty where only the files tell (a local model)
    score: str = ""  # what the model scored, in words, e.g. "vocals SDR 8.2 dB on synthetic test songs"
    cached: bool = True  # its files are on this machine (no download before the first run)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    """What a job asked for: a choice id, plus the two paths of a local model."""

    id: str
    config: str = ""
    checkpoint: str = ""


# ---- registry hook: where the entries of bs_roformer.pretrained plug in ---------------------------------------------

def registry_choices() -> list[ModelChoice]:
    """The registry's models for the menu: one ModelChoice per supported entry (its id, stems and score; `cached`
    when its files are in the local cache)."""
    from ..pretrained import headline_score, list_models

    return [ModelChoice(entry["id"], entry["name"], tuple(entry["stems"]), headline_score(entry), entry["cached"])
            for entry in list_models() if not entry["unsupported"]]


def registry_files(model_id: str) -> tuple[Path, Path]:
    """(config, checkpoint) of a registry model, fetched and verified into the cache first where needed (this runs
    in the job worker, so a download does not block the server)."""
    from ..pretrained import fetch

    return fetch(model_id, progress=False)


# ---- the menu and the files behind a choice ------------------------------------------------------------------------

def demo_choice() -> ModelChoice:
    from .. import demo
    from ..config import load_config, stem_names

    return ModelChoice(DEMO, "Demo vocal model (synthetic songs)",
                       tuple(stem_names(load_config(demo.CONFIG))), "vocals SDR 8.2 dB on synthetic test songs")


def menu() -> list[ModelChoice]:
    local = ModelChoice(LOCAL, "Local model: a config (.yaml) and checkpoint on this machine", ())
    return [demo_choice(), *registry_choices(), local]


def check_spec(spec: ModelSpec):
    """A one-line ValueError / FileNotFoundError for a choice that cannot run, before it is queued."""
    if spec.id == LOCAL:
        if not (spec.config and spec.checkpoint):
            raise ValueError("a local model needs both paths: its config (.yaml) and its checkpoint")
        for kind, path in (("config", spec.config), ("checkpoint", spec.checkpoint)):
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"{kind} {path}: no such file on this machine")
    elif spec.id != DEMO and spec.id not in {choice.id for choice in registry_choices()}:
        registry_files(spec.id)  # raises for an unknown id


def model_files(spec: ModelSpec) -> tuple[Path, Path]:
    if spec.id == DEMO:
        from .. import demo

        return demo.CONFIG, demo.WEIGHTS
    if spec.id == LOCAL:
        return Path(spec.config).expanduser(), Path(spec.checkpoint).expanduser()
    return registry_files(spec.id)


def available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        if torch.cuda.device_count() > 1:
            devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


class LoadedModel:
    """The one model kept in memory (used by the job worker only), reused while jobs ask for the same files on the
    same device. Precision, overlap and TTA are per-job Separator settings over the same weights: no reload."""

    def __init__(self):
        self._key = None
        self._model = self._config = None

    def get(self, spec: ModelSpec, device: torch.device) -> tuple[torch.nn.Module, dict]:
        from ..config import load_model

        config_path, checkpoint_path = model_files(spec)
        key = (str(config_path.resolve()), str(checkpoint_path.resolve()), str(device))
        if key != self._key:
            self._key = self._model = self._config = None  # free the old model before loading the new one
            model, config = load_model(config_path, checkpoint_path)
            self._model, self._config, self._key = model.to(device), config, key
        return self._model, self._config
