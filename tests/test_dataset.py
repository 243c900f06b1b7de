"""Training chunks in MSST's dataset types: shapes, remixing, alignment, real mixtures, class balance, silence
rejection, MSST's augmentations, reproducibility, and reports of what was skipped."""

import numpy as np
import pytest
import soundfile
import torch

from bs_roformer.data.musdb import StemChunks
from bs_roformer.train_settings import Augmentations, StemAugmentations
from bs_roformer.data.synth import write_dataset

STEMS = ["vocals", "drums", "bass", "other"]
SOME = Augmentations(enable=True, loudness=True, loudness_min=0.7, loudness_max=1.4,
                     stems={"all": StemAugmentations(channel_shuffle=0.5, random_polarity=0.5)})


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
    data = StemChunks(synth_root, STEMS, chunk_samples=4410, items_per_epoch=5, augmentations=SOME)
    assert len(data) == 5
    mixture, stems, active = data[0]
    assert active.tolist() == [True] * 4
    assert mixture.shape == (2, 4410) and stems.shape == (4, 2, 4410) and stems.dtype == torch.float32
    assert torch.allclose(mixture, stems.sum(0), atol=1e-6)


def test_items_are_reproducible_per_index_and_epoch(synth_root):
    data = StemChunks(synth_root, STEMS, chunk_samples=2000, augmentations=SOME, seed=3)
    again = StemChunks(synth_root, STEMS, chunk_samples=2000, augmentations=SOME, seed=3)
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
    aligned = StemChunks(tmp_path, STEMS, chunk_samples=300, items_per_epoch=8, dataset_type=4)
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


def test_augmentations_change_gain_channels_time_and_polarity(synth_root):
    plain = StemChunks(synth_root, ["vocals", "bass"], chunk_samples=2000, dataset_type=4)
    vocals_only = {"all": StemAugmentations(), "vocals": StemAugmentations(1.0, 1.0, 1.0)}
    flipped = StemChunks(synth_root, ["vocals", "bass"], chunk_samples=2000, dataset_type=4,
                         augmentations=Augmentations(enable=True, stems=vocals_only))
    assert torch.equal(flipped[0][1][0], -plain[0][1][0].flip(0).flip(1))  # channels, time, polarity
    assert torch.equal(flipped[0][1][1], plain[0][1][1])  # the `all` section (nothing) for bass
    louder = StemChunks(synth_root, ["vocals", "bass"], chunk_samples=2000, dataset_type=4,
                        augmentations=Augmentations(enable=True, loudness=True, loudness_min=2.0, loudness_max=2.0))
    assert torch.allclose(louder[0][1], plain[0][1] * 2, atol=1e-6)
    disabled = StemChunks(synth_root, ["vocals", "bass"], chunk_samples=2000, dataset_type=4,
                          augmentations=Augmentations(enable=False, loudness=True, loudness_min=2.0, loudness_max=2.0))
    assert torch.equal(disabled[0][1], plain[0][1])


def test_mixup_averages_extra_chunks_of_the_same_stem(synth_root):
    # compat: MSST scales the mixed chunks by loudness_min/max and averages them
    always = Augmentations(enable=True, mixup=True, mixup_probs=(1.0,), loudness_min=1.0, loudness_max=1.0)
    mixed = StemChunks(synth_root, ["vocals"], chunk_samples=2000, items_per_epoch=4, augmentations=always)
    stems = mixed[0][1][0].numpy()
    assert find_source(stems, synth_root, "vocals") is None  # not one chunk of a file, but the mean of two
    assert torch.allclose(mixed[0][0], mixed[0][1].sum(0))


def write_noise(folder, stems, frames=3000, rate=44100, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        soundfile.write(str(folder / f"{stem}.wav"), rng.standard_normal((frames, 2)).astype(np.float32) * 0.1,
                        rate, subtype="FLOAT")


def test_folder_per_stem_and_csv_datasets(tmp_path):
    for index in range(2):  # type 2: <stem>/<any name>.wav
        for stem in ["vocals", "bass"]:
            write_noise(tmp_path / "stems" / stem, [f"take{index}"], seed=index)
    data = StemChunks(tmp_path / "stems", ["vocals", "bass"], chunk_samples=500, items_per_epoch=4, dataset_type=2)
    mixture, stems, active = data[1]
    assert stems.shape == (2, 2, 500) and torch.allclose(mixture, stems.sum(0)) and active.all()
    rows = ["instrum,path"] + [f"{stem},{tmp_path / 'stems' / stem / 'take0.wav'}" for stem in ["vocals", "bass"]]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")  # type 3: instrum,path
    data = StemChunks(tmp_path / "list.csv", ["vocals", "bass"], chunk_samples=500, items_per_epoch=4, dataset_type=3)
    stems = data[0][1].numpy()
    audio, _ = soundfile.read(str(tmp_path / "stems" / "vocals" / "take0.wav"), dtype="float32", always_2d=True)
    assert any(np.array_equal(audio.T[:, o : o + 500], stems[0]) for o in range(2501))
    with pytest.raises(ValueError, match=r"no usable files for stems \['drums'\]"):
        StemChunks(tmp_path / "list.csv", ["vocals", "drums"], chunk_samples=500, dataset_type=3)


def test_type_6_uses_the_real_mixture_and_type_7_balances_classes(tmp_path):
    write_noise(tmp_path / "a", ["vocals", "bass", "mixture"], seed=1)  # a mixture that is not the sum
    data = StemChunks(tmp_path, ["vocals", "bass"], chunk_samples=500, items_per_epoch=4, dataset_type=6)
    mixture, stems, _ = data[0]
    assert not torch.allclose(mixture, stems.sum(0))
    assert StemChunks(tmp_path, ["vocals", "bass"], 500, dataset_type=4)[0][1].shape == (2, 2, 500)

    write_noise(tmp_path / "b", ["vocals"], seed=2)  # type 7: tracks lack stems; bass is in 1 of 3 tracks
    write_noise(tmp_path / "c", ["vocals"], seed=3)
    balanced = StemChunks(tmp_path, ["vocals", "bass"], chunk_samples=500, items_per_epoch=8, dataset_type=7,
                          max_class_presence_ratio=0.5)
    assert sorted(balanced.class_tracks) == [1]  # vocals, in every track, is not a class to balance
    for index in range(4):
        _, stems, active = balanced[index]
        assert active.tolist() == [True, True]  # only track a holds bass
    with pytest.raises(ValueError, match="max_class_presence_ratio"):
        StemChunks(tmp_path, ["vocals"], chunk_samples=500, dataset_type=7)
    with_silence = StemChunks(tmp_path, ["vocals", "bass"], chunk_samples=500, items_per_epoch=8, dataset_type=7,
                              max_class_presence_ratio=1.0)
    actives = {tuple(with_silence[i][2].tolist()) for i in range(8)}
    assert (True, False) in actives  # a vocals-only track: bass silent and inactive
    assert all(with_silence[i][1][1].abs().sum() == 0 for i in range(8) if not with_silence[i][2][1])


def test_skipped_tracks_are_reported(tmp_path):
    write_noise(tmp_path / "good", STEMS)
    write_noise(tmp_path / "other_rate", STEMS, rate=48000)
    write_noise(tmp_path / "no_bass", ["vocals", "drums", "other"])
    data = StemChunks(tmp_path, STEMS, chunk_samples=500)
    assert len(data.tracks) == 1
    assert data.problems == ["no_bass: missing ['bass']", "other_rate: not at 44100 Hz"]


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        StemChunks(tmp_path / "nope", STEMS, 100)
    write_dataset(tmp_path, tracks=1, seconds=0.5, seed=0)
    with pytest.raises(ValueError, match="no usable tracks.*shorter than a chunk"):
        StemChunks(tmp_path, STEMS, chunk_samples=44100)
    with pytest.raises(ValueError, match=r"missing \['piano'\]"):
        StemChunks(tmp_path, ["piano"], chunk_samples=100)


def test_pedalboard_effects_as_msst_spells_them(synth_root):
    pytest.importorskip("pedalboard")
    from bs_roformer.train_settings import read_settings

    section = {"enable": True, "all": {"pedalboard_distortion": 1.0, "pedalboard_distortion_drive_db_min": 20,
                                       "pedalboard_distortion_drive_db_max": 25},
               "bass": {"pedalboard_distortion": 0, "pedalboard_mp3_compressor": 1.0,
                        "pedalboard_mp3_compressor_pedalboard_mp3_compressor_min": 0,
                        "pedalboard_mp3_compressor_pedalboard_mp3_compressor_max": 9.999}}
    config = {"training": {"num_epochs": 1, "instruments": ["vocals", "bass"]}, "augmentations": section}
    augmentations = read_settings(config).augmentations
    assert sorted(augmentations.for_stem("vocals").pedalboard) == ["pedalboard_distortion"]
    assert sorted(augmentations.for_stem("bass").pedalboard) == ["pedalboard_mp3_compressor"]  # bass overrides all
    plain = StemChunks(synth_root, ["vocals", "bass"], chunk_samples=4000, dataset_type=4)
    effected = StemChunks(synth_root, ["vocals", "bass"], chunk_samples=4000, dataset_type=4,
                          augmentations=augmentations)
    before, after = plain[0][1], effected[0][1]
    assert after.shape == before.shape and torch.isfinite(after).all()
    for stem in range(2):
        assert not torch.allclose(after[stem], before[stem], atol=1e-3)
    broken = dict(section, all={"pedalboard_reverb": 0.5, "pedalboard_reverb_room_size_min": 0.1})
    with pytest.raises(ValueError, match="pedalboard_reverb needs pedalboard_reverb_room_size_max"):
        read_settings(dict(config, augmentations=broken))
