"""Training chunks in MSST's dataset types: shapes, remixing, alignment, real mixtures, class balance, silence
rejection, MSST's augmentations, reproducibility, and reports of what was skipped."""

import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from bs_roformer.data.musdb import StemChunks
from bs_roformer.train_settings import Augmentations, StemAugmentations
from bs_roformer.data.synth import write_dataset

FIXTURES = Path(__file__).parent / "fixtures"
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


def test_several_data_folders_are_one_set_as_msst_data_path(tmp_path):
    for root, seed in (("a", 0), ("b", 1)):
        write_noise(tmp_path / root / "song", STEMS, seed=seed)
        for stem in ["vocals", "bass"]:
            write_noise(tmp_path / f"stems_{root}" / stem, [f"take_{root}"], seed=seed)
    both = StemChunks([tmp_path / "a", tmp_path / "b"], STEMS, chunk_samples=500)
    assert [track.folder for track in both.tracks] == [tmp_path / "a" / "song", tmp_path / "b" / "song"]
    per_stem = StemChunks([tmp_path / "stems_a", tmp_path / "stems_b"], ["vocals", "bass"], chunk_samples=500,
                          dataset_type=2)
    assert [source.path.name for source in per_stem.sources["bass"]] == ["take_a.wav", "take_b.wav"]
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*nope"):
        StemChunks([tmp_path / "a", tmp_path / "nope"], STEMS, chunk_samples=500)


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
    assert data.problems[0] == "no_bass: missing ['bass']"
    assert data.problems[1] == "other_rate: at 48000 Hz, not at audio.sample_rate 44100"
    write_noise(tmp_path / "good", ["bass"], rate=22050)  # one file at another rate: each file, its own rate
    with pytest.raises(ValueError, match="good: vocals.wav at 44100 Hz, drums.wav at 44100 Hz, bass.wav at 22050 Hz"):
        StemChunks(tmp_path, STEMS, chunk_samples=500)


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


# MSST's audiomentations transforms, each with the keys MSST reads for it, set to change any chunk clearly
AUDIOMENTATIONS_ON = {
    "pitch_shift": {"pitch_shift_min_semitones": 3, "pitch_shift_max_semitones": 4},
    "seven_band_parametric_eq": {"seven_band_parametric_eq_min_gain_db": 6, "seven_band_parametric_eq_max_gain_db": 9},
    "tanh_distortion": {"tanh_distortion_min": 0.5, "tanh_distortion_max": 0.7},
    "mp3_compression": {"mp3_compression_min_bitrate": 32, "mp3_compression_max_bitrate": 64,
                        "mp3_compression_backend": "lameenc"},
    "gaussian_noise": {"gaussian_noise_min_amplitude": 0.01, "gaussian_noise_max_amplitude": 0.015},
    "time_stretch": {"time_stretch_min_rate": 0.8, "time_stretch_max_rate": 0.9},
}
# all six switched on, p=1
ALL_SIX = {key: value for effect, keys in AUDIOMENTATIONS_ON.items() for key, value in {effect: 1.0, **keys}.items()}
MIXTURE_MP3 = {"mp3_compression_on_mixture": 1.0, "mp3_compression_on_mixture_bitrate_min": 32,
               "mp3_compression_on_mixture_bitrate_max": 64, "mp3_compression_on_mixture_backend": "lameenc"}


def augmentations_of(section: dict) -> Augmentations:
    from bs_roformer.train_settings import read_settings

    config = {"training": {"num_epochs": 1, "instruments": ["vocals", "bass"]},
              "augmentations": {"enable": True, **section}}
    return read_settings(config).augmentations


def vocals_and_bass(root, augmentations=None, dataset_type=4) -> StemChunks:
    """Aligned 1 s chunks: the same index reads the same place with or without augmentations."""
    return StemChunks(root, ["vocals", "bass"], chunk_samples=44100, dataset_type=dataset_type,
                      augmentations=augmentations)


@pytest.mark.parametrize("effect", list(AUDIOMENTATIONS_ON))
def test_audiomentations_transforms_change_their_stem_only(synth_root, effect):
    pytest.importorskip("audiomentations")
    plain = vocals_and_bass(synth_root)[0][1]
    on = vocals_and_bass(synth_root, augmentations_of({"vocals": {effect: 1.0, **AUDIOMENTATIONS_ON[effect]}}))[0][1]
    assert on.shape == plain.shape and on.dtype == torch.float32 and torch.isfinite(on).all()
    assert not torch.allclose(on[0], plain[0], atol=1e-3)
    assert torch.equal(on[1], plain[1])  # bass has no section and no `all`
    off = vocals_and_bass(synth_root, augmentations_of({"vocals": {effect: 0, **AUDIOMENTATIONS_ON[effect]}}))[0][1]
    assert torch.equal(off, plain)


def test_audiomentations_items_are_reproducible_and_leave_global_random_state_alone(synth_root):
    pytest.importorskip("audiomentations")
    data = vocals_and_bass(synth_root, augmentations_of({"all": ALL_SIX, **MIXTURE_MP3}))
    python_state, numpy_state = random.getstate(), np.random.get_state()
    first = data[1]
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    random.seed(5)
    np.random.seed(5)  # another global state (another worker, a later step): the same item
    again = data[1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(data[2][1], first[1])


def test_audiomentations_run_in_msst_order_after_polarity_before_pedalboard(synth_root, monkeypatch):
    pytest.importorskip("audiomentations")
    pytest.importorskip("pedalboard")
    from bs_roformer.train_settings import AUDIOMENTATIONS_EFFECTS

    section = dict(ALL_SIX, random_polarity=1.0, pedalboard_distortion=1.0, pedalboard_distortion_drive_db_min=20,
                   pedalboard_distortion_drive_db_max=25)
    data = vocals_and_bass(synth_root, augmentations_of({"vocals": section}))
    calls = []

    def recorder(name):
        def record(samples, sample_rate):
            calls.append((name, samples.copy()))
            return samples
        return record

    data.transforms["vocals"] = {effect: (chance, recorder(effect))
                                 for effect, (chance, _) in data.transforms["vocals"].items()}
    monkeypatch.setattr(data, "_pedalboard", lambda effect, arguments, audio: calls.append((effect, audio)) or audio)
    data[0]
    assert [name for name, _ in calls] == [*AUDIOMENTATIONS_EFFECTS, "pedalboard_distortion"]  # MSST's order
    assert np.array_equal(calls[0][1], -vocals_and_bass(synth_root)[0][1][0].numpy())  # after random_polarity


def test_mp3_compression_on_mixture_changes_the_mixture_not_the_stems(synth_root):
    pytest.importorskip("audiomentations")
    for dataset_type in (4, 6):  # the sum of the stems, then the track's own mixture
        plain = vocals_and_bass(synth_root, dataset_type=dataset_type)[0]
        mixture, stems, _ = vocals_and_bass(synth_root, augmentations_of(MIXTURE_MP3), dataset_type)[0]
        assert torch.equal(stems, plain[1])
        assert mixture.shape == plain[0].shape and mixture.dtype == torch.float32
        assert not torch.allclose(mixture, plain[0], atol=1e-3)


def test_msst_lameenc_backend_runs_delay_free_so_the_mp3_mixture_lines_up_with_its_stems(synth_root):
    pytest.importorskip("audiomentations")
    augmentations = augmentations_of(MIXTURE_MP3)  # MSST's configs name lameenc
    assert augmentations.mixture["mp3_compression_on_mixture"][1]["backend"] == "fast-mp3-augment"
    mixture, stems, _ = vocals_and_bass(synth_root, augmentations, 4)[0]
    left, clean = mixture[0].numpy(), stems.sum(0)[0].numpy()
    lags = range(-1200, 1201)  # lameenc with its delay kept puts the peak 761 samples late here
    correlation = [np.dot(left[max(lag, 0):len(left) + min(lag, 0)], clean[max(-lag, 0):len(clean) - max(lag, 0)])
                   for lag in lags]
    assert lags[int(np.argmax(correlation))] == 0


def test_audiomentations_settings_name_what_is_wrong(monkeypatch):
    pytest.importorskip("audiomentations")
    pitch = {"pitch_shift": 0.5, "pitch_shift_min_semitones": -2}
    with pytest.raises(ValueError, match="augmentations.vocals.pitch_shift needs pitch_shift_max_semitones"):
        augmentations_of({"vocals": pitch})
    with pytest.raises(ValueError, match="augmentations.all.pitch_shift_max_semitones is 'high'; expected float"):
        augmentations_of({"all": {**pitch, "pitch_shift_max_semitones": "high"}})
    with pytest.raises(ValueError, match="augmentations.mp3_compression_on_mixture needs "
                                         "mp3_compression_on_mixture_backend"):
        augmentations_of({key: value for key, value in MIXTURE_MP3.items() if not key.endswith("backend")})
    mp3 = {"mp3_compression": 1.0, **AUDIOMENTATIONS_ON["mp3_compression"]}
    with pytest.raises(ValueError, match=r"augmentations.bass.mp3_compression_backend is 'ffmpeg'; audiomentations' "
                                         r"MP3 backends are \['fast-mp3-augment', 'lameenc', 'pydub'\]"):
        augmentations_of({"bass": {**mp3, "mp3_compression_backend": "ffmpeg"}})
    with pytest.raises(ValueError, match="mp3_compression_backend is 3; expected str"):
        augmentations_of({"bass": {**mp3, "mp3_compression_backend": 3}})
    monkeypatch.setitem(sys.modules, "pydub", None)  # an import of it fails
    with pytest.raises(ValueError, match="mp3_compression_backend is 'pydub', which needs the pydub module: "
                                         "pip install pydub"):
        augmentations_of({"bass": {**mp3, "mp3_compression_backend": "pydub"}})
    monkeypatch.setitem(sys.modules, "audiomentations", None)
    with pytest.raises(ValueError, match=r"augmentations.vocals: \['pitch_shift'\] need audiomentations: "
                                         r"pip install 'bs-roformer-fast\[augment\]'"):
        augmentations_of({"vocals": {**pitch, "pitch_shift_max_semitones": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off, their parameters are accepted silently, without the package
        assert augmentations_of({"vocals": {**pitch, "pitch_shift": 0}, **MIXTURE_MP3,
                                 "mp3_compression_on_mixture": 0}).for_stem("vocals").audiomentations == {}


def test_msst_config_with_every_audiomentations_key_reads_items(synth_root):
    pytest.importorskip("audiomentations")
    pytest.importorskip("pedalboard")
    from bs_roformer.config import load_config
    from bs_roformer.train_settings import read_settings

    config = load_config(FIXTURES / "msst_configs" / "config_musdb18_mel_band_roformer_sage.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every augmentation key is understood
        augmentations = read_settings(config).augmentations
    assert list(augmentations.for_stem("other").audiomentations) == ["pitch_shift", "mp3_compression",
                                                                     "gaussian_noise", "time_stretch"]
    assert augmentations.for_stem("bass").audiomentations["tanh_distortion"] == (0.2, {"min_distortion": 0.1,
                                                                                       "max_distortion": 0.5})
    assert augmentations.mixture["mp3_compression_on_mixture"][0] == 0.01
    data = StemChunks(synth_root, config["training"]["instruments"], chunk_samples=44100, items_per_epoch=3,
                      augmentations=augmentations)
    for index in range(len(data)):
        mixture, stems, _ = data[index]
        assert mixture.shape == (2, 44100) and stems.shape == (4, 2, 44100) and torch.isfinite(stems).all()
