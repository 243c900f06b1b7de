"""Training chunks, in MSST's dataset types (`--dataset-type`, as MSST's `--dataset_type`):

- 1: folders in the MUSDB18-HQ layout (`<track>/<stem>.wav|flac`); every stem comes from its own random track and
  offset (random remixing, which multiplies the number of distinct mixtures).
- 2: a folder per stem (`<stem>/*.wav|flac`), any number of files each; every stem from a random file of its folder.
- 3: a CSV file with columns `instrum,path` (a header line, one stem file per row); sampled as type 2.
- 4: the MUSDB layout, all stems from one track at one offset (aligned), drawn again (up to 10 times) while a stem
  is quieter than `min_mean_abs`.
- 6: as 4, and the mixture is the track's own `mixture.wav|flac` when it has one.
- 7: as 6, class-balanced: a random stem (among those present in at most `max_class_presence_ratio` of the tracks),
  then a random track holding it; stems a track lacks are silent and inactive (see `active`).

Each item is (mixture (channels, chunk), stems (len(stems), channels, chunk), active (len(stems),) bool): `active`
marks the stems whose heads should train on this item (all of them except in type 7). Chunks quieter than
`min_mean_abs` (mean absolute sample) are drawn again, as MSST does. Augmentations follow MSST's `augmentations:`
section (`train_settings.Augmentations`): per stem, as each chunk is read, a channel swap, time reversal, polarity
inversion, MSST's audiomentations transforms (pitch shift, seven-band EQ, tanh distortion, MP3 compression, Gaussian
noise, time stretch; then cut or zero-padded back to the chunk) and MSST's pedalboard effects (reverb, chorus, phaser,
distortion, pitch shift, resampling, bit crushing, MP3 compression), in that order, the last two groups with the
`augment` extra; mixup (types 1-3) of extra chunks of the same stem; then a random gain per stem. The mixture is the
sum of the stems, except the real mixture of types 6 and 7; `mp3_compression_on_mixture` then MP3-compresses it
(audiomentations), the stems staying as they are. The transforms get the dataset's sample rate (MSST: always 44100).

Items are reproducible: item `index` is drawn from `numpy.random.default_rng([seed, epoch, index])`, so DataLoader
workers, restarts and resumed runs see the same data. audiomentations draws from Python's `random` and `numpy.random`:
each call runs with both seeded from the item's generator, and their previous states are restored after it. Tracks or
files that cannot be used (a missing stem, another sample rate, shorter than a chunk) are listed in `problems` and
reported once by the trainer.
"""

import contextlib
import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from .layout import STEM_EXTENSIONS, stem_file
from ..train_settings import AUDIOMENTATIONS_EFFECTS, MIXTURE_AUDIOMENTATIONS, PEDALBOARD_EFFECTS, Augmentations

ALIGNED_ATTEMPTS = 10  # MSST's attempts at an aligned chunk without a silent stem


def _audiomentations(effects: dict, table: dict) -> dict:
    """{effect: (probability, transform)} for a parsed `audiomentations` or `mixture` dict of `train_settings`."""
    if not effects:
        return {}
    import audiomentations

    built = {}
    for effect, (chance, arguments) in effects.items():
        name, _, fixed = table[effect]
        transform = getattr(audiomentations, name)
        built[effect] = (chance, transform(**arguments, **fixed, p=1.0))  # p=1: the draw is ours
    return built


@contextlib.contextmanager
def _global_random_from(rng: np.random.Generator):
    """Python's `random` and `numpy.random` seeded from `rng` inside, their previous states back after: audiomentations
    draws from them, and an item must come out the same every time without moving the trainer's own random state."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    seed = int(rng.integers(2**32))
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@dataclass
class _Track:
    folder: Path
    frames: int
    files: dict[str, Path]  # the stems this track has


@dataclass
class _Source:
    path: Path
    frames: int


class StemChunks(torch.utils.data.Dataset):
    """`items_per_epoch` random chunks of `chunk_samples` from `roots` (a folder, or a CSV file for type 3; or a list
    of them, as MSST's `--data_path` takes several, drawn from as one set)."""

    def __init__(self, roots: str | Path | list, stems: list[str], chunk_samples: int, *, items_per_epoch: int = 1000,
                 dataset_type: int = 1, min_mean_abs: float = 0.0, augmentations: Augmentations | None = None,
                 seed: int = 0, sample_rate: int = 44100, channels: int = 2, max_draws: int = 20,
                 max_class_presence_ratio: float = 0.4):
        self.stems, self.chunk, self.items = list(stems), int(chunk_samples), int(items_per_epoch)
        self.dataset_type, self.min_mean_abs, self.seed = int(dataset_type), float(min_mean_abs), int(seed)
        self.augmentations = augmentations if augmentations is not None and augmentations.enable else None
        self.channels, self.max_draws, self.sample_rate = channels, max_draws, sample_rate
        # the audiomentations transforms, built once: per stem, and the mixture's (none when augmentations are off)
        chosen = self.augmentations or Augmentations()
        self.transforms = {stem: _audiomentations(chosen.for_stem(stem).audiomentations, AUDIOMENTATIONS_EFFECTS)
                           for stem in self.stems}
        self.mixture_transforms = _audiomentations(chosen.mixture, MIXTURE_AUDIOMENTATIONS)
        self.epoch = 0
        self.problems: list[str] = []
        roots = [Path(root) for root in (roots if isinstance(roots, (list, tuple)) else [roots])]
        for root in roots:
            if not root.exists():
                raise FileNotFoundError(f"dataset folder not found: {root}")
        if self.dataset_type in (2, 3):
            self.sources = self._index_sources(roots)
        else:
            self.tracks = self._index_tracks(roots)
            if self.dataset_type == 7:
                self.class_tracks = self._class_tracks(max_class_presence_ratio)

    # -- indexing --

    def _usable(self, name: str, paths: list[Path]) -> int | None:
        """The frames the files share, or None (and a problem noted) when they cannot be used."""
        infos = [soundfile.info(str(path)) for path in paths]
        rates = {info.samplerate for info in infos}
        if rates != {self.sample_rate}:
            found = f"at {rates.pop()} Hz" if len(rates) == 1 else ", ".join(
                f"{path.name} at {info.samplerate} Hz" for path, info in zip(paths, infos))
            self.problems.append(f"{name}: {found}, not at audio.sample_rate {self.sample_rate}")
            return None
        frames = min(info.frames for info in infos)
        if frames < self.chunk:
            self.problems.append(f"{name}: shorter than a chunk ({frames} < {self.chunk} samples)")
            return None
        return frames

    def _index_tracks(self, roots: list[Path]) -> list[_Track]:
        for root in roots:
            if not root.is_dir():
                raise FileNotFoundError(f"dataset folder not found: {root}")
        tracks = []
        for folder in [path for root in roots for path in sorted(root.iterdir()) if path.is_dir()]:
            files = {stem: stem_file(folder, stem) for stem in self.stems}
            missing = [stem for stem, path in files.items() if path is None]
            files = {stem: path for stem, path in files.items() if path is not None}
            if missing and (self.dataset_type != 7 or not files):
                self.problems.append(f"{folder.name}: missing {missing}")
                continue
            mixture = stem_file(folder, "mixture") if self.dataset_type in (6, 7) else None
            if mixture is not None:
                files["mixture"] = mixture
            frames = self._usable(folder.name, list(files.values()))
            if frames is not None:
                tracks.append(_Track(folder, frames, files))
        if not tracks:
            detail = "; ".join(self.problems[:5]) or "no track folders"
            raise ValueError(f"{', '.join(map(str, roots))}: no usable tracks with stems {self.stems} ({detail})")
        return tracks

    def _index_sources(self, roots: list[Path]) -> dict[str, list[_Source]]:
        listed = {stem: [] for stem in self.stems}
        for root in roots:
            if self.dataset_type == 2:
                if not root.is_dir():
                    raise FileNotFoundError(f"dataset folder not found: {root}")
                for stem in self.stems:
                    listed[stem] += sorted(p for p in (root / stem).glob("*") if p.suffix.lower() in STEM_EXTENSIONS)
            else:
                with open(root, newline="") as handle:
                    rows = list(csv.DictReader(handle))
                if rows and not {"instrum", "path"} <= set(rows[0]):
                    raise ValueError(f"{root}: a dataset CSV needs the columns instrum,path (found {sorted(rows[0])})")
                for stem in self.stems:
                    listed[stem] += [Path(row["path"]) for row in rows if row["instrum"] == stem]
        sources = {}
        for stem, paths in listed.items():
            sources[stem] = []
            for path in paths:
                if not path.is_file():
                    self.problems.append(f"{path}: no such file")
                    continue
                frames = self._usable(str(path), [path])
                if frames is not None:
                    sources[stem].append(_Source(path, frames))
        empty = [stem for stem, found in sources.items() if not found]
        if empty:
            detail = "; ".join(self.problems[:5])
            raise ValueError(f"{', '.join(map(str, roots))}: no usable files for stems {empty}"
                             + (f" ({detail})" if detail else ""))
        return sources

    def _class_tracks(self, max_ratio: float) -> dict[int, list[int]]:
        """Type 7: stem index -> the tracks holding it, for the stems present in at most `max_ratio` of the tracks
        (compat: MSST leaves out the frequent stems, which the other tracks' chunks train anyway)."""
        holding = {i: [t for t, track in enumerate(self.tracks) if stem in track.files]
                   for i, stem in enumerate(self.stems)}
        kept = {i: tracks for i, tracks in holding.items() if tracks and len(tracks) / len(self.tracks) <= max_ratio}
        if not kept:
            raise ValueError(f"dataset type 7: every stem is in more than max_class_presence_ratio ({max_ratio}) of "
                             "the tracks; raise training.max_class_presence_ratio")
        return kept

    def set_epoch(self, epoch: int):
        """Draw other chunks in the next epoch (call it once per epoch, as with a DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items

    # -- reading and augmenting --

    def _read(self, path: Path, offset: int) -> np.ndarray:
        audio, _ = soundfile.read(str(path), start=offset, frames=self.chunk, dtype="float32", always_2d=True)
        audio = audio.T
        if audio.shape[0] != self.channels:  # mono stems into a stereo set, or the reverse
            audio = np.repeat(audio, self.channels, axis=0) if audio.shape[0] == 1 else audio.mean(0, keepdims=True)
        return audio

    def _augment_stem(self, rng: np.random.Generator, audio: np.ndarray, stem: str) -> np.ndarray:
        """MSST's per-stem order: channel shuffle, time reversal, polarity, the audiomentations transforms, the
        pedalboard effects."""
        if self.augmentations is None:
            return audio
        chances = self.augmentations.for_stem(stem)
        if chances.channel_shuffle > 0 and rng.random() < chances.channel_shuffle and audio.shape[0] == 2:
            audio = audio[::-1]
        if chances.random_inverse > 0 and rng.random() < chances.random_inverse:
            audio = audio[:, ::-1]
        if chances.random_polarity > 0 and rng.random() < chances.random_polarity:
            audio = -audio
        audio = self._apply_audiomentations(rng, self.transforms[stem], audio)
        for effect, (chance, ranges) in chances.pedalboard.items():
            if rng.random() < chance:
                audio = self._pedalboard(effect, {arg: rng.uniform(*bounds) for arg, bounds in ranges.items()}, audio)
        return np.ascontiguousarray(audio)

    def _apply_audiomentations(self, rng: np.random.Generator, transforms: dict, audio: np.ndarray) -> np.ndarray:
        """Each transform drawn with its probability, in order, then the result cut or zero-padded to the chunk
        once, as MSST does (MP3 encoding lengthens it)."""
        for chance, transform in transforms.values():
            if rng.random() < chance:
                with _global_random_from(rng):
                    # compat: MSST passes 44100 whatever the config's rate; the real rate (identical at 44.1 kHz)
                    audio = transform(samples=np.ascontiguousarray(audio, dtype=np.float32),
                                      sample_rate=self.sample_rate)
        return self._to_chunk(audio) if transforms else audio

    def _pedalboard(self, effect: str, arguments: dict, audio: np.ndarray) -> np.ndarray:
        """One of MSST's pedalboard effects on a (channels, chunk) chunk, cut or zero-padded back to the chunk."""
        import pedalboard

        board = pedalboard.Pedalboard([getattr(pedalboard, PEDALBOARD_EFFECTS[effect][0])(**arguments)])
        return self._to_chunk(board(np.ascontiguousarray(audio, dtype=np.float32), self.sample_rate))

    def _to_chunk(self, audio: np.ndarray) -> np.ndarray:
        """`audio` cut or zero-padded to the chunk length, float32: the effects may change its length."""
        audio = audio[:, : self.chunk]
        return np.pad(audio, ((0, 0), (0, self.chunk - audio.shape[1]))).astype(np.float32)

    def _random_source(self, rng: np.random.Generator, stem: str) -> np.ndarray:
        """One chunk of `stem` from a random place (types 1-3), drawn again while quieter than min_mean_abs."""
        for _ in range(self.max_draws):
            if self.dataset_type in (2, 3):
                source = self.sources[stem][rng.integers(len(self.sources[stem]))]
                path, frames = source.path, source.frames
            else:
                track = self.tracks[rng.integers(len(self.tracks))]
                path, frames = track.files[stem], track.frames
            audio = self._read(path, int(rng.integers(0, frames - self.chunk + 1)))
            if np.abs(audio).mean() >= self.min_mean_abs:
                break  # every draw quiet: the last one is kept rather than looping forever
        return self._augment_stem(rng, audio, stem)

    def _remixed(self, rng: np.random.Generator) -> list[np.ndarray]:
        stems = []
        for stem in self.stems:
            audio = self._random_source(rng, stem)
            if self.augmentations is not None and self.augmentations.mixup:
                parts = [audio] + [self._random_source(rng, stem) for chance in self.augmentations.mixup_probs
                                   if rng.random() < chance]
                # compat: MSST scales the mixed chunks by loudness_min/max (not mixup_loudness_*), then averages
                gains = rng.uniform(self.augmentations.loudness_min, self.augmentations.loudness_max, len(parts))
                audio = np.mean([part * np.float32(gain) for part, gain in zip(parts, gains)], axis=0)
            stems.append(audio.astype(np.float32))
        return stems

    def _aligned(self, rng: np.random.Generator, track: _Track) -> tuple[list[np.ndarray], np.ndarray | None]:
        """All stems (zeros for those the track lacks) and its mixture, if it has one, at one random offset."""
        silence = np.zeros((self.channels, self.chunk), dtype=np.float32)
        offset = int(rng.integers(0, track.frames - self.chunk + 1))
        stems = [self._read(track.files[stem], offset) if stem in track.files else silence for stem in self.stems]
        mixture = self._read(track.files["mixture"], offset) if "mixture" in track.files else None
        return stems, mixture

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        active = np.ones(len(self.stems), dtype=bool)
        mixture = None
        if self.dataset_type in (1, 2, 3):
            stems = self._remixed(rng)
        elif self.dataset_type == 7:
            classes = sorted(self.class_tracks)
            chosen = classes[rng.integers(len(classes))]
            track = self.tracks[self.class_tracks[chosen][rng.integers(len(self.class_tracks[chosen]))]]
            stems, mixture = self._aligned(rng, track)
            active = np.array([stem in track.files for stem in self.stems])
        else:
            for _ in range(ALIGNED_ATTEMPTS):
                stems, mixture = self._aligned(rng, self.tracks[rng.integers(len(self.tracks))])
                if all(np.abs(audio).mean() >= self.min_mean_abs for audio in stems):
                    break
        if self.dataset_type in (4, 6, 7):
            stems = [self._augment_stem(rng, audio, stem) for audio, stem in zip(stems, self.stems)]
        stems = np.stack(stems).astype(np.float32)
        if self.augmentations is not None and self.augmentations.loudness:
            gains = rng.uniform(self.augmentations.loudness_min, self.augmentations.loudness_max, len(self.stems))
            stems = stems * gains[:, None, None].astype(np.float32)
        if self.dataset_type == 4 or mixture is None:
            mixture = stems.sum(axis=0)
        mixture = self._apply_audiomentations(rng, self.mixture_transforms, mixture)  # MSST: after the gains
        # compat: in types 6 and 7 the real mixture is used as it is, although the stems were augmented (MSST)
        return torch.from_numpy(np.ascontiguousarray(mixture)), torch.from_numpy(stems), torch.from_numpy(active)
