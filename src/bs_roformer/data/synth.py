"""Synthetic multi-stem songs in the MUSDB18-HQ layout, for tests, smoke runs and the demo model.

Each stem behaves like its name, so a model trained on them learns the same kind of cues as on real music:
- vocals: a sung melody, harmonic with vibrato, note-by-note syllable envelopes, shaped by vowel formants;
- drums: kick (falling sine), snare (noise and a tone) and hi-hat (bright noise ticks) on a tempo grid;
- bass: low notes following the chord roots, a few harmonics, plucked envelopes;
- other: sustained chords (pads with slow attack) and a plucked arpeggio, in the middle register.
Everything is drawn from `numpy.random.default_rng(seed)`: the same seed gives the same audio.
"""

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .layout import write_track

STEMS = ("vocals", "drums", "bass", "other")
SAMPLE_RATE = 44100
VOWEL_FORMANTS = {  # Hz: (F1, F2, F3)
    "a": (800, 1200, 2600), "e": (500, 1900, 2600), "i": (300, 2300, 3000), "o": (500, 900, 2500), "u": (350, 800, 2400),
}
MAJOR, MINOR = (0, 4, 7), (0, 3, 7)


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _envelope(length: int, attack: int, release: int) -> np.ndarray:
    envelope = np.ones(length)
    attack, release = min(attack, length), min(release, length)
    envelope[:attack] = np.linspace(0, 1, attack)
    envelope[length - release :] *= np.linspace(1, 0, release)
    return envelope


class _Song:
    def __init__(self, rng: np.random.Generator, seconds: float, sample_rate: int):
        self.rng, self.rate = rng, sample_rate
        self.length = int(seconds * sample_rate)
        self.beat = int(sample_rate * 60 / rng.uniform(80, 140))
        key = int(rng.integers(0, 12))
        degrees = rng.choice([0, 5, 7, 9, 2, 4], size=max(1, self.length // (4 * self.beat) + 1))
        self.chords = [(key + int(d), MINOR if d in (2, 4, 9) else MAJOR) for d in degrees]  # one per bar

    def _chord_at(self, sample: int):
        return self.chords[min(sample // (4 * self.beat), len(self.chords) - 1)]

    def vocals(self) -> np.ndarray:
        out = np.zeros(self.length)
        start = int(self.rng.integers(0, self.beat))
        while start < self.length:
            duration = int(self.beat * self.rng.choice([0.5, 1, 1, 2]))
            if self.rng.random() < 0.8:  # sing this note (else a rest)
                root, quality = self._chord_at(start)
                note = 60 + root % 12 + int(self.rng.choice(quality + (12,)))
                out[start : start + duration] += self._sung_note(note, min(duration, self.length - start))
            start += duration
        return out

    def _sung_note(self, note: int, length: int) -> np.ndarray:
        t = np.arange(length) / self.rate
        vibrato = 0.3 * np.sin(2 * np.pi * self.rng.uniform(4.5, 6.5) * t) * np.minimum(t / 0.3, 1)
        phase = 2 * np.pi * np.cumsum(_midi_hz(note) * 2 ** (vibrato / 12)) / self.rate
        formants = VOWEL_FORMANTS[self.rng.choice(list(VOWEL_FORMANTS))]
        tone = np.zeros(length)
        for harmonic in range(1, 40):
            frequency = _midi_hz(note) * harmonic
            if frequency > self.rate / 2 - 1000:
                break
            gain = sum(np.exp(-0.5 * ((frequency - f) / (80 + 0.05 * f)) ** 2) for f in formants) / harmonic**0.5
            tone += gain * np.sin(harmonic * phase)
        return 0.25 * tone / max(np.abs(tone).max(), 1e-9) * _envelope(length, int(0.04 * self.rate), int(0.08 * self.rate))

    def drums(self) -> np.ndarray:
        out = np.zeros(self.length)
        step = self.beat // 2
        for index, start in enumerate(range(0, self.length, step)):
            if index % 4 == 0 or (index % 8 == 7 and self.rng.random() < 0.5):
                self._add(out, self._kick(), start)
            if index % 4 == 2:
                self._add(out, self._snare(), start)
            self._add(out, self._hat() * self.rng.uniform(0.4, 1.0), start)
        return out

    @staticmethod
    def _add(out: np.ndarray, sound: np.ndarray, start: int):
        sound = sound[: len(out) - start]
        out[start : start + len(sound)] += sound

    def _kick(self) -> np.ndarray:
        t = np.arange(int(0.25 * self.rate)) / self.rate
        frequency = 50 + 100 * np.exp(-t * 30)
        return 0.6 * np.sin(2 * np.pi * np.cumsum(frequency) / self.rate) * np.exp(-t * 12)

    def _snare(self) -> np.ndarray:
        t = np.arange(int(0.2 * self.rate)) / self.rate
        noise = self.rng.standard_normal(t.size)
        return (0.25 * noise * np.exp(-t * 25) + 0.2 * np.sin(2 * np.pi * 200 * t) * np.exp(-t * 30))

    def _hat(self) -> np.ndarray:
        t = np.arange(int(0.05 * self.rate)) / self.rate
        noise = np.diff(self.rng.standard_normal(t.size + 1))  # differencing tilts the noise toward the highs
        return 0.08 * noise * np.exp(-t * 80)

    def bass(self) -> np.ndarray:
        out = np.zeros(self.length)
        for start in range(0, self.length, self.beat):
            root, _ = self._chord_at(start)
            note = 36 + root % 12 + (12 if self.rng.random() < 0.2 else 0)
            length = min(self.beat, self.length - start)
            t = np.arange(length) / self.rate
            tone = sum(np.sin(2 * np.pi * _midi_hz(note) * h * t) / h**1.5 for h in (1, 2, 3, 4))
            out[start : start + length] += 0.35 * tone * np.exp(-t * 3) * _envelope(length, 40, 200)
        return out

    def other(self) -> np.ndarray:
        out = np.zeros(self.length)
        bar = 4 * self.beat
        for start in range(0, self.length, bar):
            root, quality = self._chord_at(start)
            length = min(bar, self.length - start)
            t = np.arange(length) / self.rate
            pad = sum(np.sin(2 * np.pi * _midi_hz(60 + root % 12 + interval) * t + self.rng.uniform(0, 6.3))
                      for interval in quality)
            out[start : start + length] += 0.08 * pad * _envelope(length, int(0.3 * self.rate), int(0.2 * self.rate))
            for step, arp_start in enumerate(range(start, start + length, self.beat // 2)):
                note = 72 + root % 12 + quality[step % 3]
                arp_length = min(self.beat // 2, self.length - arp_start)
                ta = np.arange(arp_length) / self.rate
                tri = 2 / np.pi * np.arcsin(np.sin(2 * np.pi * _midi_hz(note) * ta))
                out[arp_start : arp_start + arp_length] += 0.07 * tri * np.exp(-ta * 8)
        return out


def synthesize_track(seed: int, seconds: float, sample_rate: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """{stem: (2, samples) float32} for one song; stems are panned apart a little, so stereo carries a cue too."""
    rng = np.random.default_rng(seed)
    song = _Song(rng, seconds, sample_rate)
    stems = {}
    for name in STEMS:
        mono = getattr(song, name)()
        pan = {"vocals": 0.0, "bass": 0.0}.get(name, rng.uniform(-0.5, 0.5))
        stems[name] = np.stack([mono * np.sqrt(0.5 * (1 - pan)), mono * np.sqrt(0.5 * (1 + pan))]).astype(np.float32)
    return stems


def write_dataset(out: Path, tracks: int, seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE,
                  jobs: int = 1) -> list[Path]:
    """Write `tracks` songs as `out/<track>/<stem>.wav` plus `mixture.wav` (the sum), in `jobs` processes; returns the
    track folders. Each song depends on (seed, index) alone, so any number of jobs writes the same files."""
    folders = [Path(out) / f"synth_{seed:04d}_{index:04d}" for index in range(tracks)]
    arguments = [(folder, seed * 100_003 + index, seconds, sample_rate) for index, folder in enumerate(folders)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_write_track, *zip(*arguments)))
    else:
        for argument in arguments:
            _write_track(*argument)
    return folders


def _write_track(folder: Path, seed: int, seconds: float, sample_rate: int):
    write_track(folder, synthesize_track(seed, seconds, sample_rate), sample_rate)
