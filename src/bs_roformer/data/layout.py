"""The MUSDB18-HQ folder layout, read and written in one place: one folder per track holding `<stem>.wav` (or
`.flac`) for each stem and optionally `mixture.wav`. Test sets, training sets, `bs-roformer synth` and the estimates
`bs-roformer separate` writes (`<track>/<stem>.<ext>`) all use it."""

from pathlib import Path

import numpy as np
import soundfile
import torch

STEM_EXTENSIONS = (".wav", ".flac")


def track_folders(folder: Path) -> list[Path]:
    """The track folders under `folder`: those holding at least one stem file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    tracks = sorted(path for path in folder.iterdir()
                    if path.is_dir() and any(p.suffix.lower() in STEM_EXTENSIONS for p in path.iterdir()))
    if not tracks:
        raise ValueError(f"{folder} holds no track folders with .wav/.flac stems (MUSDB18-HQ layout)")
    return tracks


def stem_file(folder: Path, stem: str) -> Path | None:
    """The file of one stem in a track folder, or None."""
    return next((folder / f"{stem}{ext}" for ext in STEM_EXTENSIONS if (folder / f"{stem}{ext}").is_file()), None)


def read_stems(folder: Path) -> tuple[dict[str, torch.Tensor], int]:
    """{stem: (channels, samples)} of one track folder and its sample rate; `mixture` included if present."""
    stems, rates = {}, set()
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in STEM_EXTENSIONS and path.is_file():
            audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            stems[path.stem] = torch.from_numpy(audio.T.copy())
            rates.add(rate)
    if len(rates) > 1:
        raise ValueError(f"{folder}: stems have different sample rates {sorted(rates)}")
    return stems, rates.pop() if rates else 0


def mixture_of(references: dict[str, torch.Tensor]) -> torch.Tensor:
    """The track's `mixture` stem, else the sum of its stems."""
    if "mixture" in references:
        return references["mixture"]
    return torch.stack(list(references.values())).sum(0)


def write_track(folder: Path, stems: dict[str, np.ndarray], sample_rate: int):
    """`<folder>/<stem>.wav` (32-bit float) for each (channels, samples) stem, plus `mixture.wav`, their sum."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in stems.items():
        soundfile.write(str(folder / f"{name}.wav"), audio.T, sample_rate, subtype="FLOAT")
    soundfile.write(str(folder / "mixture.wav"), sum(stems.values()).T, sample_rate, subtype="FLOAT")
