"""Published models by name: the registry shipped in the package, the user's own entries, and the download cache.

`registry.json` (beside this file, made by `scripts/build_registry.py` from splifft's registry, audio-separator's
model list and MSST's model table) lists each model once: its id, architecture, stems, checkpoint URLs with size and
sha256, published scores with their source, and the MSST YAML shipped in `configs/<id>.yaml`. Entries this package
cannot run are listed too, with `unsupported` saying why.

A user registry file (`$BS_ROFORMER_REGISTRY`, else `registry.json` in the user config folder) has the same format
and adds entries (an id already shipped is replaced); its `config` may be a path relative to that file or a URL.
Downloads go to `$BS_ROFORMER_CACHE`, else the user cache folder, as `<cache>/<id>/<file>`; with
`BS_ROFORMER_OFFLINE=1` nothing is fetched and only cached models resolve.
"""

import difflib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .download import DownloadError, download_file, sha256_of

FOLDER = Path(__file__).parent
PACKAGE_REGISTRY = FOLDER / "registry.json"
FORMAT = 1
# MSST's model types of the Roformer family; which of them this package builds is decided by trying (the build script)
ROFORMER_ARCHITECTURES = ("bs_roformer", "mel_band_roformer", "bs_roformer_experimental",
                          "mel_band_roformer_experimental", "bs_conformer", "mel_band_conformer")
ENTRY_FIELDS = {  # field: (types, required)
    "id": (str, True), "name": (str, True), "architecture": (str, True), "stems": (list, True),
    "target": ((str, type(None)), True), "config": ((str, type(None)), True),
    "config_sha256": ((str, type(None)), False), "checkpoint": (dict, True), "scores": (list, True),
    "authors": (list, True), "home": ((str, type(None)), True), "license": ((str, type(None)), True),
    "created": ((str, type(None)), False), "description": ((str, type(None)), False), "origin": (list, False),
    "unsupported": ((str, type(None)), True),
}
CHECKPOINT_FIELDS = {"file": str, "urls": list, "sha256": (str, type(None)), "size": (int, type(None))}
SCORE_FIELDS = {"stem": str, "metric": str, "value": (int, float), "source": str}


def user_registry_path() -> Path:
    if os.environ.get("BS_ROFORMER_REGISTRY"):
        return Path(os.environ["BS_ROFORMER_REGISTRY"])
    import platformdirs

    return Path(platformdirs.user_config_dir("bs-roformer")) / "registry.json"


def cache_root() -> Path:
    if os.environ.get("BS_ROFORMER_CACHE"):
        return Path(os.environ["BS_ROFORMER_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("bs-roformer"))


def offline() -> bool:
    return os.environ.get("BS_ROFORMER_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def entry_problems(entry: dict) -> list[str]:
    """What is wrong with one entry's fields (an empty list for a valid entry)."""
    name = entry.get("id", "<no id>")
    problems = [f"{name}: missing field {key!r}" for key, (_, required) in ENTRY_FIELDS.items()
                if required and key not in entry]
    problems += [f"{name}: unknown field {key!r}" for key in entry if key not in ENTRY_FIELDS]
    problems += [f"{name}: {key} should be {types}" for key, (types, _) in ENTRY_FIELDS.items()
                 if key in entry and not isinstance(entry[key], types)]
    if problems:
        return problems
    if entry["id"] != entry["id"].lower() or not entry["id"].replace("-", "").replace(".", "").isalnum():
        problems.append(f"{name}: ids are lowercase letters, digits, '-' and '.'")
    checkpoint = entry["checkpoint"]
    problems += [f"{name}: checkpoint.{key} should be {types}" for key, types in CHECKPOINT_FIELDS.items()
                 if not isinstance(checkpoint.get(key), types)]
    for score in entry["scores"]:
        problems += [f"{name}: score {score} needs {key} ({types})" for key, types in SCORE_FIELDS.items()
                     if not isinstance(score.get(key), types)]
    if entry["target"] is not None and entry["target"] not in entry["stems"]:
        problems.append(f"{name}: target {entry['target']!r} is not one of the stems {entry['stems']}")
    if entry["unsupported"] is None:
        if entry["architecture"] not in ROFORMER_ARCHITECTURES:
            problems.append(f"{name}: supported entries are {ROFORMER_ARCHITECTURES}")
        if not entry["config"] or not checkpoint.get("urls"):
            problems.append(f"{name}: a supported entry needs a config and a checkpoint URL")
    return problems


def read_registry_file(path: Path) -> list[dict]:
    """The entries of one registry file, checked; a relative `config` becomes a path beside the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the model registry {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), list):
        raise ValueError(f"{path} is not a model registry: expected {{\"format\": {FORMAT}, \"models\": [...]}}")
    entries = []
    for entry in data["models"]:
        problems = entry_problems(entry) if isinstance(entry, dict) else [f"{entry!r} is not an object"]
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems))
        config = entry["config"]
        if config and "://" not in config:
            entry = {**entry, "config": str((path.parent / config).resolve())}
        entries.append(entry)
    return entries


def load_registry() -> dict[str, dict]:
    """Every known model by id: the shipped registry, then the user's registry file (which may replace ids)."""
    entries = {entry["id"]: entry for entry in read_registry_file(PACKAGE_REGISTRY)}
    user = user_registry_path()
    if user.is_file():
        entries.update({entry["id"]: entry for entry in read_registry_file(user)})
    return entries


def get_entry(model_id: str) -> dict:
    entries = load_registry()
    if model_id not in entries:
        close = difflib.get_close_matches(model_id, list(entries), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"no published model named {model_id!r}{hint} (`bs-roformer models` lists them)")
    return entries[model_id]


def checkpoint_path(entry: dict) -> Path:
    return cache_root() / entry["id"] / entry["checkpoint"]["file"]


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_cached(entry: dict) -> bool:
    return checkpoint_path(entry).is_file()


def _ensure_file(path: Path, urls: list[str], sha256: str | None, size: int | None, model_id: str,
                 progress: bool) -> Path:
    """`path` complete and verified: from the cache when it is there, else downloaded (unless offline)."""
    marker = _verified_marker(path)
    if path.is_file():
        if sha256 is None or (marker.is_file() and marker.read_text().strip() == sha256):
            return path
        if sha256_of(path) == sha256:  # put there by hand, or verified by an older registry: check once
            marker.write_text(sha256)
            return path
        path.unlink()
        raise DownloadError(f"{path} does not have the sha256 the registry gives for {model_id} ({sha256}); "
                            "it was removed: run the command again to download it afresh")
    if offline():
        raise DownloadError(f"{model_id} is not in the cache ({path}) and BS_ROFORMER_OFFLINE is set: "
                            f"run `bs-roformer pull {model_id}` with network access first")
    download_file(urls, path, sha256=sha256, size=size, progress=progress, label=f"{model_id}: {path.name}")
    if sha256 is not None:
        marker.write_text(sha256)
    return path


def fetch(model_id: str, progress: bool = True) -> tuple[Path, Path]:
    """(config path, checkpoint path) of a registered model, downloading what is not cached yet."""
    entry = get_entry(model_id)
    if entry["unsupported"]:
        raise ValueError(f"{model_id} is listed but this package cannot run it: {entry['unsupported']}")
    config = entry["config"]
    if "://" in config:
        config = _ensure_file(cache_root() / model_id / "config.yaml", [config], entry.get("config_sha256"), None,
                              model_id, progress)
    elif not Path(config).is_file():
        raise FileNotFoundError(f"the config of {model_id} is missing: {config}")
    checkpoint = entry["checkpoint"]
    weights = _ensure_file(checkpoint_path(entry), checkpoint["urls"], checkpoint["sha256"], checkpoint["size"],
                           model_id, progress)
    return Path(config), weights


ARCHITECTURE_SHORT = {"bs": "bs_roformer", "mel": "mel_band_roformer"}


def entry_for_checkpoint_file(name: str) -> dict | None:
    """The supported entry whose checkpoint has this file name (a published file a user downloaded by hand)."""
    return next((entry for entry in load_registry().values()
                 if not entry["unsupported"] and entry["checkpoint"]["file"] == name), None)


def list_models(stem: str | None = None, architecture: str | None = None) -> list[dict]:
    """Registered entries (supported first, then by id), filtered, each with `cached` added."""
    architecture = ARCHITECTURE_SHORT.get(architecture, architecture)
    entries = [{**entry, "cached": is_cached(entry)} for entry in load_registry().values()
               if (stem is None or stem in entry["stems"]) and (architecture is None
                                                                or entry["architecture"] == architecture)]
    return sorted(entries, key=lambda entry: (entry["unsupported"] is not None, entry["id"]))


def headline_score(entry: dict) -> str:
    """One score, as `vocals sdr 10.98 (MVSEP multisong)`: the target stem's first, SDR first, MVSEP's first."""
    if not entry["scores"]:
        return ""
    score = min(entry["scores"], key=lambda score: (score["stem"] != entry["target"], score["metric"] != "sdr",
                                                     not score["source"].startswith("MVSEP")))
    return f"{score['stem']} {score['metric']} {score['value']:g} ({score['source'].split(' (')[0]})"


def models_table(entries: list[dict]) -> str:
    """A plain-text table: id, architecture, stems (the target first, marked *), size, a score, cached; then the
    entries this package cannot run, with the reason."""
    rows = [("id", "arch", "stems", "MB", "score", "cached")]
    unsupported = []
    for entry in entries:
        if entry["unsupported"]:
            unsupported.append(f"  {entry['id']}: {entry['unsupported']}")
            continue
        stems = [f"{stem}*" if stem == entry["target"] else stem for stem in entry["stems"]]
        size = entry["checkpoint"]["size"]
        rows.append((entry["id"], entry["architecture"].split("_")[0], ",".join(stems)[:40],
                     f"{size / 1e6:.0f}" if size else "?", headline_score(entry), "yes" if entry["cached"] else ""))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"{len(rows) - 1} models; * marks the target stem (--instrumental writes the mix minus it)")
    if unsupported:
        lines += [f"{len(unsupported)} listed but not supported here:", *unsupported]
    return "\n".join(lines)


@contextmanager
def parameters_on_meta():
    """Build modules with their parameters on the meta device (shapes only: no memory, no initialisation).

    Each parameter moves to meta as it is registered, before its layer initialises it; buffers and the band
    layout (computed from real tensors in the constructors) stay on the CPU, so a 228 M-parameter model builds in
    a fraction of a second. It swaps `Module.register_parameter` for the duration: not for use across threads."""
    import torch

    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, parameter):
        if parameter is not None and parameter.device.type != "meta":
            parameter = torch.nn.Parameter(parameter.to("meta"), requires_grad=parameter.requires_grad)
        register(module, name, parameter)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def state_shapes(config: dict) -> dict:
    """{key: shape} of the state_dict the config's model has, built without allocating its weights."""
    from ..config import build_model, model_type_of

    with parameters_on_meta():
        model = build_model(config, model_type_of(config))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# torch.save's zip archive adds, per tensor, a 64-byte-aligned record with its name, and a pickle of the keys: 294 kB
# over 684 tensors (430 bytes each) for Kim's checkpoint. This bound is set from the published files (see
# docs/registry.md): the largest overhead measured over the registry is well inside it.
SIZE_OVERHEAD_PER_TENSOR = 2048
SIZE_OVERHEAD_FIXED = 1 << 20


def size_problem(shapes: dict, file_size: int) -> str | None:
    """None if a checkpoint of `file_size` bytes can hold these tensors in fp32 or fp16, else why not."""
    import math

    elements = sum(math.prod(shape) for shape in shapes.values())
    allowance = SIZE_OVERHEAD_PER_TENSOR * len(shapes) + SIZE_OVERHEAD_FIXED
    for name, width in (("fp32", 4), ("fp16", 2)):
        if 0 <= file_size - elements * width <= allowance:
            return None
    return (f"config gives {elements:,} parameters ({elements * 4:,} bytes in fp32, {elements * 2:,} in fp16) "
            f"but the checkpoint file has {file_size:,} bytes")


__all__ = ["DownloadError", "cache_root", "entry_problems", "fetch", "get_entry", "is_cached", "load_registry",
           "offline", "size_problem", "state_shapes", "user_registry_path"]
