"""The synthetic song generator: layout, determinism, and stems that behave like their names."""

import numpy as np
import soundfile

from bs_roformer.cli import main
from bs_roformer.data.synth import STEMS, synthesize_track


def band_energy_fraction(audio: np.ndarray, low: float, high: float, rate: int = 44100) -> float:
    spectrum = np.abs(np.fft.rfft(audio.mean(axis=0))) ** 2
    frequencies = np.fft.rfftfreq(audio.shape[-1], 1 / rate)
    return spectrum[(frequencies >= low) & (frequencies < high)].sum() / spectrum.sum()


def test_cli_writes_musdb_layout_deterministically(tmp_path, capsys):
    for name, jobs in (("a", "1"), ("b", "2")):  # b: two processes write the same songs
        assert main(["synth", "--out", str(tmp_path / name), "--tracks", "2", "--seconds", "1.5", "--seed", "3",
                     "--jobs", jobs]) == 0
    tracks = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(tracks) == 2
    for track in tracks:
        files = sorted(p.name for p in (tmp_path / "a" / track).iterdir())
        assert files == sorted([f"{stem}.wav" for stem in STEMS] + ["mixture.wav"])
        for file in files:  # the same samples (the bytes differ: float WAVs carry a PEAK chunk with a timestamp)
            first, _ = soundfile.read(str(tmp_path / "a" / track / file))
            second, _ = soundfile.read(str(tmp_path / "b" / track / file))
            assert np.array_equal(first, second)
        stems = {f: soundfile.read(str(tmp_path / "a" / track / f), always_2d=True)[0] for f in files}
        assert stems["mixture.wav"].shape == (int(1.5 * 44100), 2)
        assert np.allclose(stems["mixture.wav"], sum(v for k, v in stems.items() if k != "mixture.wav"), atol=1e-5)
    assert "wrote 2 tracks" in capsys.readouterr().out
    other = synthesize_track(4, 1.5)["vocals"]
    assert not np.array_equal(other, synthesize_track(3 * 100_003, 1.5)["vocals"])


def test_stems_sound_like_their_names():
    stems = synthesize_track(seed=1, seconds=6.0)
    for audio in stems.values():
        assert audio.shape == (2, 6 * 44100) and np.abs(audio).max() < 1.5 and np.abs(audio).mean() > 1e-3
    assert band_energy_fraction(stems["bass"], 0, 300) > 0.9           # low notes
    assert band_energy_fraction(stems["vocals"], 150, 4000) > 0.8      # a voice's range, formant-shaped
    assert band_energy_fraction(stems["other"], 200, 2500) > 0.8       # chords in the middle register
    drums = stems["drums"].mean(axis=0)
    crest = np.abs(drums).max() / np.sqrt(np.mean(drums**2))
    assert crest > 4                                                    # transient hits
    assert band_energy_fraction(stems["drums"], 5000, 22050) > 0.01     # hi-hats
