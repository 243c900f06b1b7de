"""Separating tensors and files: the Separator API and `bs-roformer separate`, including bad input."""

from contextlib import nullcontext

import numpy as np
import pytest
import soundfile
import torch

from bs_roformer import BSRoformer
from bs_roformer.audio import AudioError
from bs_roformer.cli import main
from bs_roformer.device import cpu_has_native_bf16
from bs_roformer.separate import Separator

MODEL = dict(dim=16, depth=1, heads=2, dim_head=8, time_transformer_depth=1, freq_transformer_depth=1,
             stft_n_fft=512, stft_win_length=512, stft_hop_length=128,
             freqs_per_bands=(2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69))
CONFIG = {"audio": {"sample_rate": 44100, "chunk_size": 8192}, "model": dict(MODEL, stereo=True, num_stems=2),
          "training": {"instruments": ["vocals", "other"]}, "inference": {"num_overlap": 2, "batch_size": 2}}


def make_separator(config=CONFIG, **options):
    torch.manual_seed(0)
    options.setdefault("precision", "fp32")
    return Separator(BSRoformer(**config["model"]), config, device="cpu", **options)


def write_wav(path, audio: np.ndarray, rate=44100, subtype="FLOAT", format=None):
    soundfile.write(str(path), audio.T, rate, subtype=subtype, format=format)
    return path


def song(channels=2, seconds=0.5, rate=44100):
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    return np.stack([tone * (1 - 0.3 * c) for c in range(channels)]).astype(np.float32)


# ---- tensors ---------------------------------------------------------------------------------------------------

def test_one_chunk_without_overlap_is_the_plain_model_output():
    separator = make_separator(num_overlap=1)
    audio = torch.randn(2, 8192) * 0.1
    stems = separator.separate(audio)
    with torch.no_grad():
        direct = separator.model(audio[None])[0]
    assert list(stems) == ["vocals", "other"]
    assert torch.allclose(stems["vocals"], direct[0], atol=1e-5)


@pytest.mark.parametrize("length", [100, 3000, 50_000])
def test_shapes_follow_the_input_for_any_length(length):
    stems = make_separator().separate(torch.randn(2, length) * 0.1)
    assert all(stem.shape == (2, length) and torch.isfinite(stem).all() for stem in stems.values())


def test_mono_input_into_stereo_model_and_stereo_into_mono_model():
    mono = torch.randn(1, 20_000) * 0.1
    assert make_separator().separate(mono)["vocals"].shape == (1, 20_000)
    assert make_separator().separate(mono[0])["vocals"].shape == (20_000,)
    mono_config = dict(CONFIG, model=dict(MODEL, stereo=False, num_stems=2))
    separator = make_separator(mono_config)
    stereo = torch.randn(2, 20_000) * 0.1
    both = separator.separate(stereo)["vocals"]
    left = separator.separate(stereo[:1])["vocals"]
    assert both.shape == (2, 20_000) and torch.allclose(both[0], left[0], atol=1e-5)


class Identity(torch.nn.Module):
    """A "model" whose one stem is its input: separation must then give the input back."""

    stereo = True

    def forward(self, audio):
        return audio.clone()


IDENTITY_CONFIG = {"audio": {"sample_rate": 44100, "chunk_size": 8192}, "model": {},
                   "training": {"target_instrument": "vocals"}, "inference": {"num_overlap": 2}}


def test_other_sample_rates_are_resampled_there_and_back_with_soxr():
    """At 48 kHz into a 44.1 kHz model and back: the samples soxr gives for the round trip, and a 1 kHz tone stays
    at 1 kHz."""
    import soxr

    rate = 48000
    t = np.arange(rate // 2) / rate
    audio = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)
    separator = Separator(Identity(), IDENTITY_CONFIG, device="cpu", precision="fp32")
    vocals = separator.separate(torch.from_numpy(audio), sample_rate=rate)["vocals"].numpy()
    there = soxr.resample(audio.T, rate, 44100, quality="HQ")
    back = soxr.resample(there, 44100, rate, quality="HQ").T[:, : audio.shape[-1]]
    assert vocals.shape == audio.shape
    assert np.abs(vocals[:, : back.shape[-1]] - back).max() < 2e-6  # measured 2.7e-7 (float32 overlap-add)
    spectrum = np.abs(np.fft.rfft(vocals[0] * np.hanning(vocals.shape[-1])))
    assert abs(np.fft.rfftfreq(vocals.shape[-1], 1 / rate)[spectrum.argmax()] - 1000) < 2


def test_tta_is_the_mean_of_the_three_passes_undone():
    audio = torch.randn(2, 20_000) * 0.1
    separator = make_separator()
    plain = separator.separate(audio)["vocals"]
    swapped = separator.separate(audio.flip(0))["vocals"].flip(0)
    inverted = -separator.separate(-audio)["vocals"]
    tta = make_separator(tta=True).separate(audio)["vocals"]
    assert torch.allclose(tta, (plain + swapped + inverted) / 3, atol=1e-6)
    assert not torch.allclose(tta, plain, atol=1e-3)  # the passes differ for this model, so the test can fail


def test_bf16_stays_close_to_fp32():
    audio = torch.randn(2, 20_000) * 0.1
    plain = make_separator().separate(audio)["vocals"]
    with pytest.warns(UserWarning, match="emulated") if not cpu_has_native_bf16() else nullcontext():
        bf16 = make_separator(precision="bf16").separate(audio)["vocals"]
    snr = 10 * torch.log10(plain.pow(2).sum() / (bf16 - plain).pow(2).sum())
    assert snr > 35  # measured 45.7 dB for this model; a path that loses precision falls far below


def test_silence_and_nan_samples():
    separator = make_separator()
    assert torch.isfinite(separator.separate(torch.zeros(2, 10_000))["vocals"]).all()
    audio = torch.randn(2, 10_000) * 0.1
    audio[0, 5] = float("nan")
    assert torch.isfinite(separator.separate(audio)["vocals"]).all()


def test_bad_options_and_input():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        make_separator(precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        make_separator(precision="int8")
    with pytest.raises(ValueError, match="3 channels is not supported"):
        make_separator().separate(torch.randn(3, 1000))
    with pytest.raises(ValueError, match="empty"):
        make_separator().separate(torch.randn(2, 0))


def test_empty_and_surround_files(tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros((2, 0), dtype=np.float32))
    with pytest.raises(AudioError, match="holds no audio"):
        make_separator().separate_file(empty, tmp_path / "out", progress=False)
    surround = write_wav(tmp_path / "surround.wav", np.zeros((6, 1000), dtype=np.float32))
    with pytest.raises(ValueError, match="6 channels is not supported: mix it down"):
        make_separator().separate_file(surround, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


# ---- files -----------------------------------------------------------------------------------------------------

def test_separate_file_writes_stems_atomically_at_the_file_rate(tmp_path):
    path = write_wav(tmp_path / "song.wav", song(seconds=0.7, rate=48000), rate=48000)
    written = make_separator().separate_file(path, tmp_path / "out", instrumental=True, progress=False).paths
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "model/song/vocals.wav", "model/song/other.wav", "model/song/instrumental.wav"]
    data = {p.stem: soundfile.read(str(p), always_2d=True) for p in written}
    for audio, rate in data.values():
        assert rate == 48000 and audio.shape == (int(0.7 * 48000), 2)
    mix, _ = soundfile.read(str(path), always_2d=True)
    assert np.allclose(data["instrumental"][0], mix - data["vocals"][0], atol=1e-3)
    assert not list((tmp_path / "out").rglob("*.part"))


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    path = write_wav(tmp_path / "song.wav", song())
    separator = make_separator()
    target = separator.separate_file(path, tmp_path, stems=["vocals"], progress=False).paths[0]
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="use --overwrite"):
        separator.separate_file(path, tmp_path, stems=["vocals"], progress=False)
    assert target.read_bytes() == b"keep me"
    separator.separate_file(path, tmp_path, stems=["vocals"], overwrite=True, progress=False)
    assert soundfile.info(str(target)).frames == song().shape[-1]


def test_interrupted_run_leaves_no_partial_files(tmp_path):
    path = write_wav(tmp_path / "song.wav", song(seconds=1.0))
    separator = make_separator()
    calls = 0
    original = separator.separate_chunks

    def failing(batch):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return original(batch)

    separator.separate_chunks = failing
    with pytest.raises(KeyboardInterrupt):
        separator.separate_file(path, tmp_path / "out", progress=False)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@pytest.mark.parametrize("output_format, subtype", [("wav16", "PCM_16"), ("wav24", "PCM_24"), ("flac16", "PCM_16"),
                                                    ("flac24", "PCM_24"), ("wav32f", "FLOAT")])
def test_output_formats(tmp_path, output_format, subtype):
    path = write_wav(tmp_path / "song.wav", song())
    written = make_separator().separate_file(path, tmp_path / "out", output_format=output_format,
                                             template="{stem}-{track}.{ext}", progress=False).paths
    info = soundfile.info(str(written[0]))
    assert info.subtype == subtype and written[0].name.startswith("vocals-song.")


@pytest.mark.parametrize("suffix, format, subtype", [("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"),
                                                     ("mp3", "MP3", "MPEG_LAYER_III")])
def test_compressed_inputs(tmp_path, suffix, format, subtype):
    path = write_wav(tmp_path / f"song.{suffix}", song(), format=format, subtype=subtype)
    written = make_separator().separate_file(path, tmp_path / "out", progress=False).paths
    assert soundfile.info(str(written[0])).channels == 2


def test_unknown_format_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(64))
    with pytest.raises(AudioError, match="install ffmpeg"):
        make_separator().separate_file(path, tmp_path / "out", progress=False)


# ---- the command line ------------------------------------------------------------------------------------------

@pytest.fixture
def model_files(tmp_path):
    import yaml

    config = dict(CONFIG, model=dict(CONFIG["model"], freqs_per_bands=list(MODEL["freqs_per_bands"])))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    torch.save(BSRoformer(**CONFIG["model"]).state_dict(), tmp_path / "model.ckpt")
    return ["-c", str(tmp_path / "config.yaml"), "-m", str(tmp_path / "model.ckpt")]


def test_cli_separates_files_and_folders_and_reports_bad_ones(tmp_path, model_files, capsys):
    songs = tmp_path / "songs"
    (songs / "album").mkdir(parents=True)
    write_wav(songs / "one.wav", song())
    write_wav(songs / "album" / "two.flac", song(channels=1), subtype="PCM_16", format="FLAC")
    (songs / "album" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    code = main(["separate", str(songs), str(empty), str(tmp_path / "missing.wav"), *model_files,
                 "-o", str(out), "-q", "--stems", "vocals", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert (out / "model" / "one" / "vocals.wav").is_file()
    assert (out / "model" / "album" / "two" / "vocals.wav").is_file()
    assert soundfile.info(str(out / "model" / "album" / "two" / "vocals.wav")).channels == 1
    assert "broken.wav" in captured.err and "empty: no audio files" in captured.err
    assert "missing.wav: no such file or folder" in captured.err
    assert "2 separated, 0 kept (outputs exist), 3 failed" in captured.out

    code = main(["separate", str(songs / "one.wav"), *model_files, "-o", str(out), "-q", "--stems", "vocals"])
    assert code == 0 and "0 separated, 1 kept" in capsys.readouterr().out


def test_cli_unwritable_output_and_unknown_stem(tmp_path, model_files, capsys):
    path = write_wav(tmp_path / "song.wav", song())
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["separate", str(path), *model_files, "-o", str(blocker / "out"), "-q"]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert main(["separate", str(path), *model_files, "-o", str(tmp_path), "-q", "--stems", "drums"]) == 1
    assert "unknown stem(s) drums: this model gives vocals, other (and instrumental)" in capsys.readouterr().err


def test_other_formats_go_through_ffmpeg(tmp_path, monkeypatch):
    """A stand-in ffmpeg on PATH decodes a format libsndfile cannot read (a WAV behind a 16-byte header)."""
    audio = song()
    wav = write_wav(tmp_path / "inner.wav", audio)
    path = tmp_path / "song.weird"
    path.write_bytes(b"WEIRDFORMAT-HDR!" + wav.read_bytes())
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "ffmpeg"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import sys\n"
        "args = sys.argv[1:]\n"
        "source, target = args[args.index('-i') + 1], args[-1]\n"
        "open(target, 'wb').write(open(source, 'rb').read()[16:])\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{__import__('os').environ['PATH']}")
    written = make_separator().separate_file(path, tmp_path / "out", progress=False).paths
    assert soundfile.info(str(written[0])).frames == audio.shape[-1]


@pytest.mark.parametrize("instrumental", [False, True])
def test_file_memory_does_not_grow_with_the_length(tmp_path, instrumental):
    """Peak Python-tracked memory (the decoded numpy blocks) separating 12 s and 96 s files: the same few blocks."""
    import tracemalloc

    separator = Separator(Identity(), IDENTITY_CONFIG, device="cpu", precision="fp32", batch_size=16)
    peaks = []
    for seconds in (12, 96):
        path = write_wav(tmp_path / f"song{seconds}.wav", np.tile(song(seconds=1.0), seconds))
        tracemalloc.start()
        separator.separate_file(path, tmp_path / "out", instrumental=instrumental, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0], peaks  # a buffer of the whole file would be 8x
