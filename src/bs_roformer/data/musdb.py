"""Training chunks from a folder in the MUSDB18-HQ layout: one folder per track with `<stem>.wav` or `.flac`.

Each item is a random chunk: with `remix`, every stem comes from its own random track and offset (the usual
augmentation, which multiplies the number of distinct mixtures); without, all stems come from one track at one offset.
Chunks quieter than `min_mean_abs` (mean absolute sample) are drawn again, as MSST does. Per stem, cheap standard
augmentations follow: a random gain, a channel swap and a polarity inversion. The mixture is the sum of the stems.

Items are reproducible: item `index` is drawn from `numpy.random.default_rng([seed, epoch, index])`, so DataLoader
workers, restarts and resumed runs see the same data.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from .layout import stem_file


@dataclass
class Augmentations:
    """Per-stem augmentations; probabilities in [0, 1], gain range in dB."""

    gain_db: tuple[float, float] = (-3.0, 3.0)
    channel_swap: float = 0.5
    polarity: float = 0.5

    @classmethod
    def none(cls) -> "Augmentations":
        return cls(gain_db=(0.0, 0.0), channel_swap=0.0, polarity=0.0)


@dataclass
class _Track:
    folder: Path
    frames: int
    files: dict[str, Path]


class StemChunks(torch.utils.data.Dataset):
    """`items_per_epoch` random chunks of `chunk_samples`; each item is (mixture (channels, chunk),
    stems (len(stems), channels, chunk)), float32, stems in the order given."""

    def __init__(self, root: str | Path, stems: list[str], chunk_samples: int, *, items_per_epoch: int = 1000,
                 remix: bool = True, min_mean_abs: float = 0.0, augmentations: Augmentations | None = None,
                 seed: int = 0, sample_rate: int = 44100, channels: int = 2, max_draws: int = 20):
        self.stems, self.chunk, self.items = list(stems), int(chunk_samples), int(items_per_epoch)
        self.remix, self.min_mean_abs, self.seed = remix, float(min_mean_abs), int(seed)
        self.augmentations = augmentations or Augmentations.none()
        self.channels, self.max_draws = channels, max_draws
        self.epoch = 0
        self.tracks = self._index(Path(root), sample_rate)

    def _index(self, root: Path, sample_rate: int) -> list[_Track]:
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        tracks, problems = [], []
        for folder in sorted(path for path in root.iterdir() if path.is_dir()):
            files = {stem: stem_file(folder, stem) for stem in self.stems}
            missing = [stem for stem, path in files.items() if path is None]
            if missing:
                problems.append(f"{folder.name}: missing {missing}")
                continue
            infos = [soundfile.info(str(path)) for path in files.values()]
            if any(info.samplerate != sample_rate for info in infos):
                problems.append(f"{folder.name}: not at {sample_rate} Hz")
                continue
            frames = min(info.frames for info in infos)
            if frames < self.chunk:
                problems.append(f"{folder.name}: shorter than a chunk ({frames} < {self.chunk} samples)")
                continue
            tracks.append(_Track(folder, frames, files))
        if not tracks:
            detail = "; ".join(problems[:5]) or "no track folders"
            raise ValueError(f"{root}: no usable tracks with stems {self.stems} ({detail})")
        self.problems = problems
        return tracks

    def set_epoch(self, epoch: int):
        """Draw other chunks in the next epoch (call it once per epoch, as with a DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items

    def _read(self, track: _Track, stem: str, offset: int) -> np.ndarray:
        audio, _ = soundfile.read(str(track.files[stem]), start=offset, frames=self.chunk, dtype="float32",
                                  always_2d=True)
        audio = audio.T
        if audio.shape[0] != self.channels:  # mono stems into a stereo set, or the reverse
            audio = np.repeat(audio, self.channels, axis=0) if audio.shape[0] == 1 else audio.mean(0, keepdims=True)
        return audio

    def _draw_stem(self, rng: np.random.Generator, stem: str, track_offset=None) -> np.ndarray:
        for _ in range(self.max_draws):
            if track_offset is None:
                track = self.tracks[rng.integers(len(self.tracks))]
                offset = int(rng.integers(0, track.frames - self.chunk + 1))
            else:
                track, offset = track_offset
            audio = self._read(track, stem, offset)
            if np.abs(audio).mean() >= self.min_mean_abs or track_offset is not None:
                return audio
        return audio  # every draw was quiet: keep the last one rather than loop forever

    def _augment(self, rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
        low, high = self.augmentations.gain_db
        audio = audio * np.float32(10 ** (rng.uniform(low, high) / 20))
        if audio.shape[0] == 2 and rng.random() < self.augmentations.channel_swap:
            audio = audio[::-1]
        if rng.random() < self.augmentations.polarity:
            audio = -audio
        return audio

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.remix:
            stems = [self._draw_stem(rng, stem) for stem in self.stems]
        else:
            stems = self._draw_aligned(rng)
        stems = np.stack([self._augment(rng, audio) for audio in stems]).astype(np.float32)
        return torch.from_numpy(stems.sum(axis=0)), torch.from_numpy(stems)

    def _draw_aligned(self, rng: np.random.Generator) -> list[np.ndarray]:
        """All stems from one track and offset; redrawn while the target mixture is quieter than min_mean_abs."""
        for _ in range(self.max_draws):
            track = self.tracks[rng.integers(len(self.tracks))]
            offset = int(rng.integers(0, track.frames - self.chunk + 1))
            stems = [self._draw_stem(rng, stem, (track, offset)) for stem in self.stems]
            if np.abs(sum(stems)).mean() >= self.min_mean_abs:
                break
        return stems
