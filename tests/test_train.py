"""The training loop: a run stopped and resumed ends where an uninterrupted run ends; checkpoints and logs."""

import json
import shutil

import pytest
import torch

import bs_roformer.train as train_module
from bs_roformer.config import load_model
from bs_roformer.data.synth import write_dataset
from bs_roformer.train import learning_rate_factor, train

CONFIG = {
    "audio": {"sample_rate": 44100, "chunk_size": 8192, "min_mean_abs": 0.0},
    "model": dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True, time_transformer_depth=1,
                  freq_transformer_depth=1, stft_n_fft=512, stft_win_length=512, stft_hop_length=128,
                  freqs_per_bands=(2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69), attn_dropout=0.1, ff_dropout=0.1,
                  multi_stft_resolutions_window_sizes=(512, 256)),
    "training": {"instruments": ["vocals", "drums", "bass", "other"], "target_instrument": "vocals",
                 "batch_size": 2, "gradient_accumulation_steps": 2, "lr": 1e-3, "grad_clip": 1.0,
                 "ema_momentum": 0.9, "num_steps": 6, "warmup_steps": 2, "validate_every": 3, "seed": 5},
    "augmentations": {"gain_db": (-2.0, 2.0), "channel_swap": 0.5, "polarity": 0.5},
    "inference": {"num_overlap": 2, "batch_size": 2},
}


@pytest.mark.parametrize("stop_after", [3, 4])  # a validation step, and one the uninterrupted run does not validate
def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, stop_after):
    write_dataset(tmp_path / "train", tracks=2, seconds=1.0, seed=1)
    write_dataset(tmp_path / "valid", tracks=1, seconds=2.0, seed=2)
    straight = train(CONFIG, tmp_path / "train", tmp_path / "a", valid_dir=tmp_path / "valid", progress=False)
    train(CONFIG, tmp_path / "train", tmp_path / "b", valid_dir=tmp_path / "valid", stop_after=stop_after,
          progress=False)
    resumed = train(CONFIG, tmp_path / "train", tmp_path / "b", valid_dir=tmp_path / "valid", resume=True,
                    progress=False)
    assert straight["step"] == resumed["step"] == 6
    a = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for x, y in zip(a["ema"], b["ema"]):
        assert torch.equal(x, y)
    assert straight["loss"] == resumed["loss"]

    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4, 5, 6]
    assert "vocals" in log[2]["valid_sdr"] and "vocals" in log[5]["valid_sdr"]
    model, _ = load_model(CONFIG, tmp_path / "b" / "best.ckpt")  # EMA weights, as a plain model
    assert model.training is False
    assert (tmp_path / "b" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_run_that_crashed_resumes_from_its_last_periodic_checkpoint(tmp_path, monkeypatch):
    write_dataset(tmp_path / "train", tracks=2, seconds=1.0, seed=1)
    config = dict(CONFIG, training=dict(CONFIG["training"], validate_every=0, checkpoint_every=2))
    straight = train(config, tmp_path / "train", tmp_path / "a", progress=False)

    def crash_in_step_5(step, warmup, total):  # the scheduler asks for step 5's rate at the end of step 5
        if step == 5:
            raise RuntimeError("killed")
        return learning_rate_factor(step, warmup, total)

    monkeypatch.setattr(train_module, "learning_rate_factor", crash_in_step_5)
    with pytest.raises(RuntimeError, match="killed"):
        train(config, tmp_path / "train", tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    resumed = train(config, tmp_path / "train", tmp_path / "b", resume=True, progress=False)
    assert resumed["step"] == 6 and resumed["loss"] == straight["loss"]
    a = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [learning_rate_factor(step, 2, 10) for step in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:])) and factors[-1] < 0.05


def test_train_command_and_fine_tuning(tmp_path, capsys):
    import yaml

    from bs_roformer.cli import main

    write_dataset(tmp_path / "train", tracks=2, seconds=1.0, seed=1)
    config = dict(CONFIG, training=dict(CONFIG["training"], num_steps=2, validate_every=0))
    config["model"] = dict(config["model"], freqs_per_bands=list(config["model"]["freqs_per_bands"]),
                           multi_stft_resolutions_window_sizes=[512, 256])
    config["augmentations"] = dict(config["augmentations"], gain_db=[-2.0, 2.0])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"),
                 "--out", str(tmp_path / "run"), "-d", "cpu", "-q"]) == 0
    assert "stopped at step 2" in capsys.readouterr().out
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"),
                 "--out", str(tmp_path / "run"), "--resume", "-q"]) == 0  # already finished: nothing to do
    assert "stopped at step 2" in capsys.readouterr().out
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"),
                 "--out", str(tmp_path / "finetune"), "--init", str(tmp_path / "run" / "last.ckpt"), "-q"]) == 0
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"),
                 "--out", str(tmp_path / "nothing"), "--resume", "-q"]) == 1
    assert "no " in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler")
def test_compiled_training_matches_eager(tmp_path):
    # inductor, what `compile: true` means: compiling the whole model failed only there (a recursion error)
    write_dataset(tmp_path / "train", tracks=2, seconds=1.0, seed=1)
    write_dataset(tmp_path / "valid", tracks=1, seconds=2.0, seed=2)
    base = dict(CONFIG, model=dict(CONFIG["model"], attn_dropout=0.0, ff_dropout=0.0),
                training=dict(CONFIG["training"], num_steps=2, validate_every=2))
    eager = train(base, tmp_path / "train", tmp_path / "eager", valid_dir=tmp_path / "valid", progress=False)
    compiled_config = dict(base, training=dict(base["training"], compile=True))
    compiled = train(compiled_config, tmp_path / "train", tmp_path / "compiled", valid_dir=tmp_path / "valid",
                     progress=False)
    assert abs(eager["loss"] - compiled["loss"]) < 1e-4 * abs(eager["loss"])
    # validation ran on a model holding the EMA weights, not on the compiled live one
    assert abs(eager["valid_sdr"]["vocals"] - compiled["valid_sdr"]["vocals"]) < 1e-3
