"""Training chunks from the MUSDB18-HQ layout: shapes, remixing, silence rejection, augmentation, reproducibility."""

import numpy as np
import pytest
import soundfile
import torch

from bs_roformer.data.musdb import Augmentations, StemChunks
from bs_roformer.data.synth import write_dataset

STEMS = ["vocals", "drums", "bass", "other"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, tracks=3, seconds=2.0, seed=7)
    return root


def find_source(chunk: np.ndarray, root, stem: str):
    """(track folder name, offset) whose `stem` file holds exactly `chunk`, or None."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        audio, _ = soundfile.read(str(folder / f"{stem}.wav"), dtype="float32", always_2d=True)
        audio = audio.T
        for offset in range(0, audio.shape[1] - chunk.shape[1] + 1):
            if np.array_equal(audio[:, offset : offset + chunk.shape[1]], chunk):
                return folder.name, offset
    return None


def test_items_are_mixtures_of_their_stems(synth_root):
    data = StemChunks(synth_root, STEMS, chunk_samples=4410, items_per_epoch=5, augmentations=Augmentations())
    assert len(data) == 5
    mixture, stems = data[0]
    assert mixture.shape == (2, 4410) and stems.shape == (4, 2, 4410) and stems.dtype == torch.float32
    assert torch.allclose(mixture, stems.sum(0), atol=1e-6)


def test_items_are_reproducible_per_index_and_epoch(synth_root):
    data = StemChunks(synth_root, STEMS, chunk_samples=2000, augmentations=Augmentations(), seed=3)
    again = StemChunks(synth_root, STEMS, chunk_samples=2000, augmentations=Augmentations(), seed=3)
    assert torch.equal(data[4][1], again[4][1])
    assert not torch.equal(data[4][1], data[5][1])
    data.set_epoch(1)
    assert not torch.equal(data[4][1], again[4][1])
    loader = torch.utils.data.DataLoader(again, batch_size=2, num_workers=2)
    first_batch = next(iter(loader))[1]
    assert torch.equal(first_batch[1], again[1][1])


def test_remix_draws_stems_from_different_places_and_aligned_from_one(tmp_path):
    rng = np.random.default_rng(0)  # noise stems: a chunk matches its file at one place only
    for track in range(3):
        for stem in STEMS:
            path = tmp_path / f"track{track}" / f"{stem}.wav"
            path.parent.mkdir(exist_ok=True)
            soundfile.write(str(path), rng.standard_normal((3000, 2)).astype(np.float32), 44100, subtype="FLOAT")
    remixed = StemChunks(tmp_path, STEMS, chunk_samples=300, items_per_epoch=8)
    aligned = StemChunks(tmp_path, STEMS, chunk_samples=300, items_per_epoch=8, remix=False)
    remixed_places = []
    for index in range(4):
        stems = aligned[index][1].numpy()
        places = {find_source(stems[i], tmp_path, stem) for i, stem in enumerate(STEMS)}
        assert len(places) == 1 and None not in places  # one track, one offset, unaugmented
        stems = remixed[index][1].numpy()
        remixed_places.append({find_source(stems[i], tmp_path, stem) for i, stem in enumerate(STEMS)})
    assert all(None not in places for places in remixed_places)
    assert all(len(places) > 1 for places in remixed_places)


def test_quiet_chunks_are_drawn_again(tmp_path):
    write_dataset(tmp_path, tracks=2, seconds=1.0, seed=1)
    silent = sorted(tmp_path.iterdir())[0] / "vocals.wav"
    soundfile.write(str(silent), np.zeros((44100, 2), dtype=np.float32), 44100, subtype="FLOAT")
    data = StemChunks(tmp_path, ["vocals", "drums"], chunk_samples=4410, items_per_epoch=20, min_mean_abs=1e-3)
    assert all(data[i][1][0].abs().mean() >= 1e-3 for i in range(20))


def test_augmentations_change_gain_channels_and_polarity(synth_root):
    plain = StemChunks(synth_root, ["vocals"], chunk_samples=2000, remix=False)
    flipped = StemChunks(synth_root, ["vocals"], chunk_samples=2000, remix=False,
                         augmentations=Augmentations(gain_db=(0, 0), channel_swap=1.0, polarity=1.0))
    assert torch.equal(flipped[0][1], -plain[0][1].flip(1))
    louder = StemChunks(synth_root, ["vocals"], chunk_samples=2000, remix=False,
                        augmentations=Augmentations(gain_db=(6, 6), channel_swap=0.0, polarity=0.0))
    assert torch.allclose(louder[0][1], plain[0][1] * 10 ** (6 / 20), atol=1e-6)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        StemChunks(tmp_path / "nope", STEMS, 100)
    write_dataset(tmp_path, tracks=1, seconds=0.5, seed=0)
    with pytest.raises(ValueError, match="no usable tracks.*shorter than a chunk"):
        StemChunks(tmp_path, STEMS, chunk_samples=44100)
    with pytest.raises(ValueError, match=r"missing \['piano'\]"):
        StemChunks(tmp_path, ["piano"], chunk_samples=100)
