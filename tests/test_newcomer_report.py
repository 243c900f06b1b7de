"""Every defect of the newcomer report (shared/reference/newcomer-report-2026-12-01.md), run the way the report ran it:
the exit code, the message (one line, no traceback) and the files left behind. Numbers are the report's items."""

import os
import pickle
import sys

import numpy as np
import pytest
import soundfile
import torch
import yaml

from bs_roformer import BSRoformer
from bs_roformer.cli import main
from bs_roformer.data.synth import write_dataset
from bs_roformer.separate import Separator

MODEL = dict(dim=16, depth=1, heads=2, dim_head=8, time_transformer_depth=1, freq_transformer_depth=1,
             stft_n_fft=512, stft_win_length=512, stft_hop_length=128, stereo=True, num_stems=1,
             freqs_per_bands=[2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69])
CONFIG = {"audio": {"sample_rate": 44100, "chunk_size": 8192}, "model": MODEL,
          "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
          "inference": {"num_overlap": 2, "batch_size": 2}}


@pytest.fixture
def model(tmp_path):
    """-c/-m of a tiny vocal model, written as a user would have it."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    torch.manual_seed(0)
    torch.save(BSRoformer(**MODEL).state_dict(), tmp_path / "tiny.ckpt")
    return ["-c", str(tmp_path / "config.yaml"), "-m", str(tmp_path / "tiny.ckpt"), "-q", "--device", "cpu"]


def wav(path, seconds=0.3, channels=2, rate=44100):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 330 * (c + 1) * t) for c in range(channels)]).astype(np.float32)
    soundfile.write(str(path), audio.T, rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_16")
    return path


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) >= 1, err
    return lines[-1]


# ---- outputs ---------------------------------------------------------------------------------------------------------

def test_1_a_folder_in_the_musdb_layout_gives_one_folder_per_track(tmp_path, capsys):
    write_dataset(tmp_path / "songs", tracks=2, seconds=1.0, seed=5)
    assert main(["separate", "--demo", str(tmp_path / "songs"), "-o", str(tmp_path / "est"), "-q"]) == 0
    assert "2 separated, 0 kept" in capsys.readouterr().out
    assert files_under(tmp_path / "est" / "demo") == ["synth_0005_0000", "synth_0005_0000/vocals.wav",
                                                      "synth_0005_0001", "synth_0005_0001/vocals.wav"]
    # and the README's workflow: evaluate what separate wrote
    assert main(["evaluate", "--estimates", str(tmp_path / "est" / "demo"), "--references",
                 str(tmp_path / "songs"), "-q"]) == 0


def test_2_the_same_file_name_in_two_folders_is_refused_before_any_work(tmp_path, model, capsys):
    a, b = wav(tmp_path / "dup" / "a" / "song.wav"), wav(tmp_path / "dup" / "b" / "song.wav")
    assert main(["separate", str(a), str(b), *model, "-o", str(tmp_path / "out"), "--overwrite"]) == 1
    message = one_line_error(capsys.readouterr().err)
    assert "a/song.wav and " in message and "would both write" in message and "{relpath}" in message
    assert files_under(tmp_path / "out") == []
    # the same two files found under their common folder keep the folder structure
    assert main(["separate", str(tmp_path / "dup"), *model, "-o", str(tmp_path / "out")]) == 0
    assert files_under(tmp_path / "out" / "tiny") == ["a", "a/song", "a/song/vocals.wav", "b", "b/song",
                                                      "b/song/vocals.wav"]


def test_3_a_rerun_does_not_separate_its_own_outputs(tmp_path, model, capsys, monkeypatch):
    wav(tmp_path / "music" / "song.wav")
    monkeypatch.chdir(tmp_path / "music")
    for _ in range(2):
        assert main(["separate", ".", *model, "--instrumental"]) == 0
    assert "0 separated, 1 kept" in capsys.readouterr().out.splitlines()[-1]
    assert files_under(tmp_path / "music" / "separated") == ["tiny", "tiny/song", "tiny/song/instrumental.wav",
                                                              "tiny/song/vocals.wav"]


def test_21_a_deleted_output_is_written_again_and_the_others_kept(tmp_path, model, capsys):
    song = wav(tmp_path / "song.wav")
    out = tmp_path / "out"
    assert main(["separate", str(song), *model, "-o", str(out), "--instrumental"]) == 0
    vocals, instrumental = out / "tiny" / "song" / "vocals.wav", out / "tiny" / "song" / "instrumental.wav"
    instrumental.unlink()
    mtime = vocals.stat().st_mtime_ns
    assert main(["separate", str(song), *model, "-o", str(out), "--instrumental"]) == 0
    assert instrumental.is_file() and vocals.stat().st_mtime_ns == mtime
    assert "1 separated" in capsys.readouterr().out.splitlines()[-1]


def test_23_failures_leave_no_empty_folders(tmp_path, model, capsys):
    broken = tmp_path / "broken.flac"
    clip = wav(tmp_path / "inner.wav", seconds=2.0)
    soundfile.write(str(broken), soundfile.read(str(clip))[0], 44100, format="FLAC")
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size * 3 // 4])
    assert main(["separate", str(broken), *model, "-o", str(tmp_path / "out")]) == 1
    assert "corrupt audio data" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == []


def test_6_ctrl_c_prints_one_line_exits_130_and_leaves_nothing(tmp_path, model, capsys, monkeypatch):
    song = wav(tmp_path / "long.wav", seconds=1.0)

    def interrupted(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Separator, "separate_chunks", interrupted)
    assert main(["separate", str(song), *model, "-o", str(tmp_path / "out")]) == 130
    assert one_line_error(capsys.readouterr().err) == f"interrupted: no outputs written for {song} (0 file(s) done " \
                                                      "before it)"
    assert files_under(tmp_path / "out") == []


# ---- --filename ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template, message", [
    ("{track}.{ext}", "has no {stem}: every stem would be written to the same file"),  # 4
    ("{track}/{foo}.{ext}", "unknown field {foo}; use {model}, {track}, {relpath}, {stem}, {ext}"),  # 5
    ("{track}/{stem", "is not a valid template"),
    ("/abs/path/{track}_{stem}.{ext}", "would write outside the output folder"),
    ("../escaped_{track}_{stem}.{ext}", "would write outside the output folder"),
    ("{track}/{stem}", "has no {ext}"),
])
def test_4_5_bad_templates_are_refused_before_any_work(tmp_path, model, capsys, template, message):
    song = wav(tmp_path / "short01.wav")
    assert main(["separate", str(song), *model, "-o", str(tmp_path / "out"), "--filename", template,
                 "--instrumental"]) == 1
    assert message in one_line_error(capsys.readouterr().err)
    assert files_under(tmp_path / "out") == [] and not (tmp_path / "escaped_short01_vocals.wav").exists()


# ---- tracebacks where a message belongs ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"bogus_key": 3}, "unknown model option model.bogus_key (= 3) for BSRoformer"),  # 12
    ({"dim": "abc"}, "model.dim must be an integer, got 'abc'"),
    ({"stereo": "yes"}, "model.stereo must be true or false, got 'yes'"),
])
def test_12_config_values_are_named(tmp_path, model, capsys, change, message):
    config = dict(CONFIG, model=dict(MODEL, **change))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["separate", str(wav(tmp_path / "song.wav")), *model, "-o", str(tmp_path / "out")]) == 1
    assert message in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("section, key, value, message", [
    ("audio", "sample_rate", "fast", "audio.sample_rate must be an integer, got 'fast'"),
    ("audio", "chunk_size", 100, "chunk_size 100 is too short for the model's STFT (n_fft 512)"),  # 19
])
def test_12_19_audio_settings_are_named(tmp_path, model, capsys, section, key, value, message):
    config = dict(CONFIG, **{section: dict(CONFIG[section], **{key: value})})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["separate", str(wav(tmp_path / "song.wav")), *model, "-o", str(tmp_path / "out")]) == 1
    assert message in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"), ("tpu", "unknown device 'tpu'")])
def test_13_unknown_devices(tmp_path, model, capsys, device, message):
    assert main(["separate", str(wav(tmp_path / "song.wav")), *model, "-o", str(tmp_path / "out"),
                 "--device", device]) == 1
    assert message in one_line_error(capsys.readouterr().err)


def test_14_17_corrupt_safetensors_and_pickles_with_code(tmp_path, capsys):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\xff" * 100)
    assert main(["inspect", str(fake)]) == 1
    assert "is not a readable .safetensors file" in one_line_error(capsys.readouterr().err)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "PWNED"),))

    with open(tmp_path / "evil.ckpt", "wb") as file:
        torch.save({"state_dict": {"x": Evil()}}, file, pickle_module=pickle)
    assert main(["inspect", str(tmp_path / "evil.ckpt")]) == 1
    message = one_line_error(capsys.readouterr().err)
    assert "holds Python objects (posix.system), not only tensors" in message and "weights_only" not in message
    assert not (tmp_path / "PWNED").exists()
    assert main(["inspect", str(wav(tmp_path / "some.flac"))]) == 1
    assert "is not a readable PyTorch checkpoint" in one_line_error(capsys.readouterr().err)


# ---- messages ------------------------------------------------------------------------------------------------------

def test_15_read_errors_name_the_path_once(tmp_path, model, capsys):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert main(["separate", str(corrupt), str(empty), *model, "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "['" not in err
    corrupt_line = next(line for line in err.splitlines() if "corrupt.wav" in line)
    assert corrupt_line.count(str(corrupt)) == 1
    assert f"error: {empty}: the file is empty (0 bytes)" in err
    with pytest.raises(FileNotFoundError, match="no such audio file: /nope.wav"):
        Separator(BSRoformer(**MODEL), CONFIG, device="cpu", precision="fp32").separate_file("/nope.wav", tmp_path)


def test_16_warnings_are_one_clean_line(tmp_path, model, capsys):
    audio = np.full((2, 4000), 0.1, dtype=np.float32)
    audio[0, 10] = np.nan
    soundfile.write(str(tmp_path / "nan.wav"), audio.T, 44100, subtype="FLOAT")
    assert main(["separate", str(tmp_path / "nan.wav"), *model, "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'nan.wav'}: 1 NaN or infinite samples were replaced by 0\n" in err
    assert "UserWarning" not in err and "separate_file(" not in err


def test_22_the_summary_counts_audio_decoded_by_ffmpeg(tmp_path, model, capsys, monkeypatch):
    inner = wav(tmp_path / "inner.wav", seconds=0.5)
    song = tmp_path / "song.m4a"
    song.write_bytes(b"WEIRDFORMAT-HDR!" + inner.read_bytes())
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ffmpeg").write_text("#!/usr/bin/env python3\nimport sys\nargs = sys.argv[1:]\n"
                                  "open(args[-1], 'wb').write(open(args[args.index('-i') + 1], 'rb').read()[16:])\n")
    (tools / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    assert main(["separate", str(song), *model, "-o", str(tmp_path / "out")]) == 0
    assert "; 0.5 s of audio in" in capsys.readouterr().out


def test_26_help_shows_defaults_and_the_two_evaluate_modes(capsys):
    with pytest.raises(SystemExit):
        main(["separate", "--help"])
    text = capsys.readouterr().out
    assert "(default: separated)" in text and "(default: auto)" in text and "{model}/{relpath}/{stem}.{ext}" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "Two modes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out


def test_28_inspect_yaml_is_a_config_that_loads(tmp_path, model, capsys):
    from bs_roformer.config import load_model

    assert main(["inspect", str(tmp_path / "tiny.ckpt"), "--yaml"]) == 0
    (tmp_path / "implied.yaml").write_text(capsys.readouterr().out)
    loaded, config = load_model(tmp_path / "implied.yaml", tmp_path / "tiny.ckpt")
    assert config["model"]["dim"] == 16 and isinstance(loaded, BSRoformer)


def test_29_the_try_it_output_folder_is_ignored_by_git():
    from pathlib import Path

    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert "/separated/" in ignored


# ---- options ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--batch-size", "--overlap", "--chunk-size"])
def test_19_zero_options_are_refused_at_start_up(tmp_path, model, capsys, option):
    with pytest.raises(SystemExit) as exit_code:
        main(["separate", str(wav(tmp_path / "song.wav")), *model, "-o", str(tmp_path / "out"), option, "0"])
    assert exit_code.value.code == 2 and "must be a positive integer, got '0'" in capsys.readouterr().err


def test_19_unknown_stems_are_refused_once_before_any_work(tmp_path, model, capsys):
    songs = [str(wav(tmp_path / f"song{i}.wav")) for i in range(2)]
    assert main(["separate", *songs, *model, "-o", str(tmp_path / "out"), "--stems", "drums"]) == 1
    err = capsys.readouterr().err
    assert err.count("unknown stem(s) drums") == 1 and files_under(tmp_path / "out") == []


def test_20_only_the_instrumental(tmp_path, model):
    song = wav(tmp_path / "song.wav")
    assert main(["separate", str(song), *model, "-o", str(tmp_path / "out"), "--stems", "instrumental"]) == 0
    assert files_under(tmp_path / "out" / "tiny" / "song") == ["instrumental.wav"]


# ---- evaluate ----------------------------------------------------------------------------------------------------

def test_18_report_paths_are_made_and_checked_first(tmp_path, capsys, monkeypatch):
    write_dataset(tmp_path / "songs", tracks=1, seconds=1.0, seed=7)
    report = tmp_path / "ev" / "scores.json"
    assert main(["evaluate", "--estimates", str(tmp_path / "songs"), "--references", str(tmp_path / "songs"),
                 "--json", str(report), "-q"]) == 0
    assert report.is_file()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    calls = []
    monkeypatch.setattr("bs_roformer.evaluate.evaluate_estimates", lambda *a, **k: calls.append(a))
    assert main(["evaluate", "--estimates", str(tmp_path / "songs"), "--references", str(tmp_path / "songs"),
                 "--plot", str(tmp_path / "ev" / "sdr.png"), "-q"]) == 1
    assert "--plot needs matplotlib" in one_line_error(capsys.readouterr().err) and calls == []


def test_24_25_missing_stems_once_instrumental_scored_perfect_estimates_finite(tmp_path, capsys):
    import json

    write_dataset(tmp_path / "songs", tracks=3, seconds=1.0, seed=8)
    estimates = tmp_path / "est"
    for track in (tmp_path / "songs").iterdir():
        (estimates / track.name).mkdir(parents=True)
        vocals, rate = soundfile.read(str(track / "vocals.wav"))
        mixture, _ = soundfile.read(str(track / "mixture.wav"))
        soundfile.write(str(estimates / track.name / "vocals.wav"), vocals, rate, subtype="FLOAT")
        soundfile.write(str(estimates / track.name / "instrumental.wav"), mixture - vocals, rate, subtype="FLOAT")
    assert main(["evaluate", "--estimates", str(estimates), "--references", str(tmp_path / "songs"), "-q",
                 "--json", str(tmp_path / "scores.json")]) == 0
    err = capsys.readouterr().err
    assert err.count("no estimate for stem 'bass' in 3 track(s)") == 1 and "synth_0008_0000: no estimate" not in err
    summary = json.loads((tmp_path / "scores.json").read_text())["summary"]
    assert set(summary) == {"vocals", "instrumental"}
    for stem in summary.values():
        for metric in ("sdr", "csdr", "si_sdr"):
            assert stem[metric]["median"] is not None and 60 < stem[metric]["median"] < 200  # capped, finite


# ---- the Python API (27) ---------------------------------------------------------------------------------------------

@pytest.fixture
def separator():
    torch.manual_seed(0)
    return Separator(BSRoformer(**MODEL), CONFIG, device="cpu", precision="fp32")


@pytest.mark.parametrize("audio, error, message", [
    (torch.zeros(1, 2, 1000), ValueError, r"audio must be shaped \(channels, samples\) or \(samples,\), got shape"),
    (np.zeros((2, 1000), dtype=np.float32), TypeError, "audio must be a torch.Tensor"),
])
def test_27_bad_audio_is_a_value_or_type_error(separator, audio, error, message):
    with pytest.raises(error, match=message):
        separator.separate(audio)


def test_27_bad_rates_formats_and_nan(separator, tmp_path):
    with pytest.raises(ValueError, match="sample_rate must be a positive integer, got 0"):
        separator.separate(torch.zeros(2, 1000), sample_rate=0)
    with pytest.raises(ValueError, match="unknown output format 'mp3': use one of"):
        separator.separate_file(wav(tmp_path / "song.wav"), tmp_path / "out", output_format="mp3", progress=False)
    audio = torch.zeros(2, 2000)
    audio[0, 3] = float("inf")
    with pytest.warns(UserWarning, match="1 NaN or infinite samples were replaced by 0"):
        separator.separate(audio)


def test_a_known_published_checkpoint_without_zero_dc_in_its_config_warns(tmp_path):
    """Kim's checkpoint is known by its file name; a config that leaves zero_dc at its default (true) would give
    wrong output, so loading it says what to add."""
    from bs_roformer.config import load_model

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    torch.manual_seed(0)
    torch.save(BSRoformer(**MODEL).state_dict(), tmp_path / "MelBandRoformer.ckpt")
    with pytest.warns(UserWarning, match="looks like the published model kim-mel-vocals, which was trained without "
                                         "zero_dc: add `zero_dc: false`"):
        load_model(tmp_path / "config.yaml", tmp_path / "MelBandRoformer.ckpt")
