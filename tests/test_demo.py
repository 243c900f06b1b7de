"""The demo shipped in the package: the model loads, separates its clip well, and `--demo` works from the CLI."""

import soundfile
import torch

from bs_roformer import demo
from bs_roformer.cli import main
from bs_roformer.data.synth import synthesize_track, write_dataset
from bs_roformer.metrics import global_sdr
from bs_roformer.separate import Separator


def test_demo_model_separates_the_vocals_of_its_clip():
    separator = Separator.demo(device="cpu")
    assert separator.stems == ["vocals"]
    assert demo.WEIGHTS.stat().st_size < 8_000_000  # a few MB inside the package
    clip, rate = soundfile.read(str(demo.CLIP), dtype="float32", always_2d=True)
    stems = synthesize_track(demo.CLIP_SEED, seconds=10)
    mixture = sum(stems.values())
    scale = 0.8 / abs(mixture).max()
    assert abs(clip.T - scale * mixture).max() < 1e-4  # the clip is the song the module says it is
    vocals = separator.separate(torch.from_numpy(clip.T), rate)["vocals"]
    assert global_sdr(torch.from_numpy(scale * stems["vocals"]), vocals).item() > 5.0


def test_separate_and_evaluate_with_demo_from_the_cli(tmp_path, capsys):
    assert main(["separate", "--demo", "-o", str(tmp_path / "out"), "-q"]) == 0
    written = soundfile.info(str(tmp_path / "out" / "demo" / "clip" / "vocals.wav"))
    assert (written.samplerate, written.channels, written.frames) == (44100, 2, 441000)

    write_dataset(tmp_path / "test", tracks=1, seconds=3.0, seed=99)
    assert main(["evaluate", "--demo", "--data", str(tmp_path / "test"), "-q"]) == 0
    assert "vocals" in capsys.readouterr().out


def test_model_must_be_given_once(tmp_path, capsys):
    assert main(["separate", str(demo.CLIP), "-o", str(tmp_path)]) == 1
    assert "give the model as --config CONFIG.yaml --checkpoint WEIGHTS, or use --demo" in capsys.readouterr().err
    assert main(["separate", "--demo", "-c", "config.yaml", "-o", str(tmp_path)]) == 1
    assert "--demo uses the shipped demo model" in capsys.readouterr().err
    assert main(["separate", "-c", str(demo.CONFIG), "-m", str(demo.WEIGHTS), "-o", str(tmp_path)]) == 1
    assert "give the audio files or folders to separate" in capsys.readouterr().err
