"""A tiny end-to-end run, as a user would type it: synthesize songs, train a few hundred steps, validate."""

import json

import pytest
import torch
import yaml

from bs_roformer.cli import main
from bs_roformer.config import build_model
from bs_roformer.train import validate

CONFIG = {
    "audio": {"sample_rate": 44100, "chunk_size": 22050, "min_mean_abs": 0.001},
    "model": dict(dim=32, depth=1, heads=2, dim_head=16, stereo=True, time_transformer_depth=1,
                  freq_transformer_depth=1, stft_n_fft=1024, stft_win_length=1024, stft_hop_length=256,
                  freqs_per_bands=(4,) * 16 + (8,) * 16 + (16,) * 8 + (32,) * 5 + (33,),
                  multi_stft_resolutions_window_sizes=(1024, 512, 256)),
    "training": {"model_type": "bs_roformer", "instruments": ["vocals", "drums", "bass", "other"],
                 "target_instrument": "vocals", "batch_size": 4, "lr": 3e-3, "grad_clip": 1.0,
                 "ema_momentum": 0.9, "num_epochs": 1, "num_steps": 200, "optimizer": "adamw", "scheduler": "cosine",
                 "warmup_steps": 10, "use_amp": False, "seed": 0},
    "augmentations": {"enable": True, "loudness": True, "loudness_min": 0.7, "loudness_max": 1.4,
                      "all": {"channel_shuffle": 0.5, "random_polarity": 0.5}},
    "inference": {"num_overlap": 2, "batch_size": 4},
}


@pytest.mark.slow
def test_a_few_hundred_steps_separate_vocals_clearly_better_than_the_untrained_model(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "train"), "--tracks", "8", "--seconds", "4", "--seed", "1"]) == 0
    assert main(["synth", "--out", str(tmp_path / "valid"), "--tracks", "2", "--seconds", "4", "--seed", "2"]) == 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    torch.manual_seed(0)
    untrained = validate(build_model(CONFIG, "bs_roformer"), CONFIG, tmp_path / "valid", "cpu")["sdr"]["vocals"]

    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"),
                 "--valid", str(tmp_path / "valid"), "--out", str(tmp_path / "run"), "-q"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = log[-1]["valid"]["sdr"]["vocals"]
    print(f"validation vocals SDR: untrained {untrained:.2f} dB, after {log[-1]['step']} steps {trained:.2f} dB")
    assert log[-1]["step"] == 200
    assert trained > untrained + 4 and trained > 1


def test_the_same_commands_on_a_smaller_run(tmp_path):
    # the fast stand-in for the test above: synth, train with validation, through the command line
    assert main(["synth", "--out", str(tmp_path / "train"), "--tracks", "2", "--seconds", "1", "--seed", "1"]) == 0
    assert main(["synth", "--out", str(tmp_path / "valid"), "--tracks", "1", "--seconds", "2", "--seed", "2"]) == 0
    config = dict(CONFIG, audio=dict(CONFIG["audio"], chunk_size=8192),
                  model=dict(CONFIG["model"], dim=16, dim_head=8),
                  training=dict(CONFIG["training"], batch_size=2, num_steps=4, warmup_steps=1))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"),
                 "--valid", str(tmp_path / "valid"), "--out", str(tmp_path / "run"), "-q"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "vocals" in log[-1]["valid"]["sdr"]
    assert log[-1]["lr"] == 0.0  # cosine decay reaches zero at the last step
    assert {"last.ckpt", "best.ckpt", "metrics.jsonl"} <= {p.name for p in (tmp_path / "run").iterdir()}
