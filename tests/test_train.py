"""The training loop: MSST's epoch accounting and scheduler, a run stopped (by a crash or a signal) and resumed ends
where an uninterrupted run ends, run folders are never mixed or clobbered, checkpoints and logs."""

import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import bs_roformer.train as train_module
from bs_roformer.config import build_model, load_config, load_model
from bs_roformer.data.synth import write_dataset
from bs_roformer.train import learning_rate_factor, train

MODEL = dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True, time_transformer_depth=1, freq_transformer_depth=1,
             stft_n_fft=512, stft_win_length=512, stft_hop_length=128,
             freqs_per_bands=[2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69], attn_dropout=0.1, ff_dropout=0.1,
             multi_stft_resolutions_window_sizes=[512, 256])
# 3 epochs of 4 batches, an optimizer step every 2: 2 steps an epoch, 6 in all
CONFIG = {
    "audio": {"sample_rate": 44100, "chunk_size": 8192, "min_mean_abs": 0.0},
    "model": MODEL,
    "training": {"model_type": "bs_roformer", "instruments": ["vocals", "drums", "bass", "other"],
                 "target_instrument": "vocals", "batch_size": 2, "gradient_accumulation_steps": 2, "lr": 1e-3,
                 "grad_clip": 1.0, "ema_momentum": 0.9, "num_epochs": 3, "num_steps": 4, "optimizer": "adamw",
                 "patience": 0, "reduce_factor": 0.5, "use_amp": False, "seed": 5},
    "augmentations": {"enable": True, "loudness": True, "loudness_min": 0.8, "loudness_max": 1.2,
                      "all": {"channel_shuffle": 0.5, "random_polarity": 0.5}},
    "inference": {"num_overlap": 2, "batch_size": 2},
}
MSST_CONFIGS = Path(__file__).parent / "fixtures" / "msst_configs"


def with_training(**changes) -> dict:
    return dict(CONFIG, training=dict(CONFIG["training"], **changes))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root / "train", tracks=2, seconds=1.0, seed=1)
    write_dataset(root / "valid", tracks=1, seconds=1.0, seed=4)  # seed 4: its vocals start at once
    return root


def same_weights(a_dir: Path, b_dir: Path):
    a = torch.load(a_dir / "last.ckpt", weights_only=True)
    b = torch.load(b_dir / "last.ckpt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for x, y in zip(a["ema"] or [], b["ema"] or []):
        assert torch.equal(x, y)
    assert a["scheduler"] == b["scheduler"]


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ReduceLROnPlateau: stopped inside epoch 2, the resumed run must drop the rate at its end (no improvement on the
# best of epoch 1, kept in the checkpoint); cosine: stopped at an epoch's end
@pytest.mark.parametrize("stop_after,scheduler", [(3, "ReduceLROnPlateau"), (4, "cosine")])
def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, data, stop_after, scheduler, monkeypatch):
    config = with_training(scheduler=scheduler, warmup_steps=2)
    if scheduler == "ReduceLROnPlateau":  # a validation score that never improves: patience 0 drops the rate
        monkeypatch.setattr(train_module, "validate", lambda *args: {"sdr": {"vocals": 1.0}})
    valid = data / "valid"
    straight = train(config, data / "train", tmp_path / "a", valid_dir=valid, progress=False)
    train(config, data / "train", tmp_path / "b", valid_dir=valid, stop_after=stop_after, progress=False)
    resumed = train(config, data / "train", tmp_path / "b", valid_dir=valid, resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 6 and straight["loss"] == resumed["loss"]
    same_weights(tmp_path / "a", tmp_path / "b")

    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in log] == [0, 0, 1, 1, 2, 2]
    assert [("valid" in r) for r in log] == [False, True] * 3  # at each epoch's end
    assert "vocals" in log[1]["valid"]["sdr"]
    straight_log = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [r["lr"] for r in straight_log]
    if scheduler == "ReduceLROnPlateau":
        assert [r["lr"] for r in log] == [1e-3] * 4 + [5e-4] * 2  # dropped by reduce_factor after epoch 2
    model, _ = load_model(CONFIG, tmp_path / "b" / "best.ckpt")  # EMA weights, as a plain model
    assert model.training is False
    assert (tmp_path / "b" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_run_that_crashed_resumes_from_its_last_periodic_checkpoint_and_logs_each_step_once(tmp_path, data,
                                                                                            monkeypatch):
    config = with_training(scheduler="cosine", checkpoint_every=4)
    straight = train(config, data / "train", tmp_path / "a", progress=False)

    def crash_in_step_6(step, warmup, total):  # the scheduler asks for step 6's rate at the end of step 6
        if step == 6:
            raise RuntimeError("killed")
        return learning_rate_factor(step, warmup, total)

    monkeypatch.setattr(train_module, "learning_rate_factor", crash_in_step_6)
    with pytest.raises(RuntimeError, match="killed"):
        train(config, data / "train", tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["step"] == 4
    assert steps_logged(tmp_path / "b") == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    resumed = train(config, data / "train", tmp_path / "b", resume=True, progress=False)
    assert resumed["step"] == 6 and resumed["loss"] == straight["loss"]
    assert steps_logged(tmp_path / "b") == [1, 2, 3, 4, 5, 6]  # step 5 not twice
    same_weights(tmp_path / "a", tmp_path / "b")


def test_a_signal_writes_last_ckpt_and_the_command_exits_130_with_one_line(tmp_path, data, monkeypatch, capsys):
    from bs_roformer.cli import main

    config = with_training(scheduler="cosine", num_epochs=1, num_steps=6)  # 3 steps, default checkpoint_every

    def signal_in_step_2(step, warmup, total):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return learning_rate_factor(step, warmup, total)

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(train_module, "learning_rate_factor", signal_in_step_2)
    command = ["train", "-c", str(tmp_path / "config.yaml"), "--data", str(data / "train"), "--out",
               str(tmp_path / "run"), "-q"]
    assert main(command) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted at step 2;") and "--resume" in err[-1] and "Traceback" not in str(err)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back
    monkeypatch.undo()
    assert main([*command, "--resume"]) == 0
    straight = train(config, data / "train", tmp_path / "straight", progress=False)
    assert straight["step"] == 3
    same_weights(tmp_path / "straight", tmp_path / "run")


def test_checkpoint_every_defaults_to_a_tenth_of_a_short_run():
    from bs_roformer.train_settings import Training

    assert Training(num_epochs=1, num_steps=300).checkpoint_interval == 30
    assert Training(num_epochs=1000, num_steps=1000).checkpoint_interval == 500
    assert Training(num_epochs=1, num_steps=3).checkpoint_interval == 1
    assert Training(num_steps=5, gradient_accumulation_steps=2).steps_per_epoch == 3  # 2 + 2 + 1 batches


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [learning_rate_factor(step, 2, 10) for step in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:])) and factors[-1] < 0.05


def test_train_command_refuses_to_mix_runs_and_explains(tmp_path, data, capsys):
    from bs_roformer.cli import main

    config = with_training(num_epochs=1, num_steps=2, gradient_accumulation_steps=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    base = ["train", "-c", str(tmp_path / "config.yaml"), "--data", str(data / "train"), "-q"]
    run = ["--out", str(tmp_path / "run")]
    assert main([*base, *run]) == 0
    assert "finished: optimizer step 2, epoch 1;" in capsys.readouterr().out
    before = (tmp_path / "run" / "last.ckpt").read_bytes()

    assert main([*base, *run]) == 1  # an existing run is neither replaced nor appended to
    assert "--resume" in capsys.readouterr().err and (tmp_path / "run" / "last.ckpt").read_bytes() == before
    assert main([*base, *run, "--resume"]) == 0  # already finished: says so and how to train longer
    out = capsys.readouterr().out
    assert "already at step 2 of 2" in out and "raise training.num_epochs or num_steps" in out
    longer = dict(config, training=dict(config["training"], num_epochs=2))
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump(longer))
    assert main(["train", "-c", str(tmp_path / "longer.yaml"), "--data", str(data / "train"), "-q", *run,
                 "--resume"]) == 0 and steps_logged(tmp_path / "run") == [1, 2, 3, 4]
    before = (tmp_path / "run" / "last.ckpt").read_bytes()
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "nope"), "-q", *run,
                 "--overwrite"]) == 1  # a replacement that fails to start leaves the old run as it was
    assert (tmp_path / "run" / "last.ckpt").read_bytes() == before
    assert main([*base, *run, "--overwrite"]) == 0 and steps_logged(tmp_path / "run") == [1, 2]

    assert main([*base, "--out", str(tmp_path / "finetune"), "--init", str(tmp_path / "run" / "last.ckpt")]) == 0
    assert main([*base, "--out", str(tmp_path / "nothing"), "--resume"]) == 1
    assert "no " in capsys.readouterr().err

    bigger = dict(config, model=dict(MODEL, dim=24))  # --init that does not fit: one line, as loading says it
    (tmp_path / "bigger.yaml").write_text(yaml.safe_dump(bigger))
    assert main(["train", "-c", str(tmp_path / "bigger.yaml"), "--data", str(data / "train"), "-q", "--out",
                 str(tmp_path / "bad_init"), "--init", str(tmp_path / "run" / "last.ckpt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.dim is 24 but the checkpoint implies 16" in err[0]
    assert not (tmp_path / "bad_init").exists()
    assert main([*base, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()  # a run that fails to start leaves no folder


def test_msst_command_lines_and_mistakes_get_messages_naming_the_fix(tmp_path, data, capsys):
    from bs_roformer.cli import main

    def write(config) -> str:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        return str(tmp_path / "config.yaml")

    no_type = with_training(num_epochs=1, num_steps=2, gradient_accumulation_steps=1)
    del no_type["training"]["model_type"]
    msst_spelling = ["train", "--config_path", write(no_type), "--data_path", str(data / "train"), str(data / "valid"),
                     "--valid_path", str(data / "valid"), str(data / "valid"), "-q", "--dataset_type", "1",
                     "--num_workers=0"]
    assert main([*msst_spelling, "--results_path", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "finished: optimizer step 2, epoch 1;" in captured.out
    assert "model type bs_roformer, from the config's model keys" in captured.err
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last["valid"]["sdr"]) == {"vocals"}  # validated on both folders (the same one twice)

    def fails(config, *extra) -> str:
        assert main(["train", "-c", write(config), "--data", str(data / "train"), "-q", "--out",
                     str(tmp_path / "failed"), *extra]) == 1
        assert not (tmp_path / "failed").exists()
        return capsys.readouterr().err

    assert "model.freqs_per_bands is not an option of MelBandRoformer: the config's model section is a " \
           "bs_roformer's; use --model-type bs_roformer" in fails(no_type, "--model_type", "mel_band_roformer")
    no_range = dict(CONFIG, augmentations={"enable": True, "loudness": True, "loudness_max": 1.2})
    assert "augmentations.loudness needs loudness_min" in fails(no_range)
    assert "--lora needs the config's lora: section" in fails(no_type, "--lora")
    with pytest.warns(UserWarning, match="lora.enable_lora is ignored: it is loralib's MergedLinear argument"):
        train_module.read_settings(dict(CONFIG, lora={"r": 4, "enable_lora": [True, False, True]}))


def train_published_configs(tmp_path, **shrink):
    """MSST's vocal BS-RoFormer config and Kim's Mel-Band RoFormer config, as published, with a tiny model of the
    same layout (dim and depth, plus `shrink`'s audio/training values), one optimizer step each."""
    write_dataset(tmp_path / "long", tracks=1, seconds=8.2, seed=3)
    for name, model_type in [("config_vocals_bs_roformer.yaml", None),
                             ("config_vocals_mel_band_roformer_kj.yaml", "mel_band_roformer")]:
        config = load_config(MSST_CONFIGS / name)
        config["model"].update(dim=16, depth=1)
        settings = train_module.read_settings(config).training
        assert (settings.num_epochs, settings.steps_per_epoch, settings.total_steps) == (1000, 1000, 1_000_000)
        for section, values in shrink.items():
            config[section].update(values)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record = train(config, tmp_path / "long", tmp_path / name, model_type=model_type, stop_after=1,
                           progress=False, report=lambda line: None)
        messages = [str(w.message) for w in caught if "model option" not in str(w.message)]
        assert messages == [], messages  # every training and augmentation key is understood
        state = torch.load(tmp_path / name / "last.ckpt", weights_only=True)
        assert record["step"] == 1 and record["epoch"] == 0 and state["step"] == 1
        assert isinstance(state["optimizer"]["param_groups"][0].get("amsgrad"), bool)  # optimizer: adam
        assert "patience" in state["scheduler"]  # ReduceLROnPlateau


@pytest.mark.slow
def test_published_msst_configs_train_unchanged(tmp_path):
    train_published_configs(tmp_path)


def test_published_msst_configs_train_with_a_small_batch(tmp_path):
    # the fast stand-in for the test above: also a smaller batch and chunk, fp32
    train_published_configs(tmp_path, audio={"chunk_size": 16384}, training={"batch_size": 1, "use_amp": False})


def test_keys_unknown_warn_unsupported_stop_and_old_configs_convert():
    from bs_roformer.train_settings import read_settings

    with pytest.warns(UserWarning, match="training.bogus is not a key"):
        read_settings(with_training(bogus=1))
    with pytest.warns(UserWarning, match="augmentaions: is not a section this trainer reads; it is ignored"):
        read_settings(dict(CONFIG, augmentaions={"enable": True}))  # a typo'd section would otherwise train without
    with pytest.warns(UserWarning, match="audio.chunk is not a key this trainer knows"):
        read_settings(dict(CONFIG, audio=dict(CONFIG["audio"], chunk=4096)))
    with pytest.raises(ValueError, match="training.optimizer 'lion' is not supported"):
        read_settings(with_training(optimizer="lion"))
    with pytest.raises(ValueError, match="training.normalize is not supported"):
        read_settings(with_training(normalize=True))
    with pytest.raises(ValueError, match=r"training.lr is 'fast'; expected float"):
        read_settings(with_training(lr="fast"))
    with pytest.raises(ValueError, match="augmentations.chunk_size_augm is not supported"):
        read_settings(dict(CONFIG, augmentations={"enable": True, "chunk_size_augm": True}))
    off = {"enable": True, "all": {"pitch_shift": 0, "pitch_shift_min_semitones": -3, "random_inverse": 0.1}}
    assert read_settings(dict(CONFIG, augmentations=off)).augmentations.for_stem("bass").random_inverse == 0.1
    with pytest.warns(UserWarning, match="augmentations.reverb_amount is not a key"):
        read_settings(dict(CONFIG, augmentations={"enable": True, "reverb_amount": 0.1}))
    for path in [*Path("configs").glob("*.yaml"), Path("src/bs_roformer/demo/config.yaml")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            settings = read_settings(load_config(path))
        assert not caught, (path, [str(w.message) for w in caught])  # updated to MSST's spelling
        assert settings.training.scheduler == "cosine" and settings.training.num_epochs == 1
    old = {"training": {"num_steps": 300, "warmup_steps": 20}, "augmentations": {"gain_db": [-3, 3],
                                                                                 "channel_swap": 0.5}}
    with pytest.warns(UserWarning, match="old bs-roformer config"):
        settings = read_settings(old)
    assert (settings.training.total_steps, settings.training.optimizer, settings.training.scheduler) == \
        (300, "adamw", "cosine")
    assert settings.augmentations.for_stem("vocals").channel_shuffle == 0.5
    assert settings.augmentations.loudness_max == pytest.approx(10 ** (3 / 20))


@pytest.mark.parametrize("name", ["adam", "adamw", "radam", "rmsprop", "sgd", "prodigy"])
def test_optimizers_by_name(name):
    from bs_roformer.train import build_optimizer
    from bs_roformer.train_settings import read_settings

    settings = read_settings(with_training(optimizer=name, lr=1.0))
    parameter = torch.nn.Parameter(torch.ones(3))
    if name == "prodigy":
        pytest.importorskip("prodigyopt")
    optimizer = build_optimizer(settings, [parameter], torch.device("cpu"))
    parameter.sum().backward()
    optimizer.step()
    assert not torch.equal(parameter.detach(), torch.ones(3))


def test_prodigy_without_its_package_says_how_to_install(monkeypatch):
    import sys

    from bs_roformer.train import build_optimizer
    from bs_roformer.train_settings import read_settings

    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    with pytest.raises(ValueError, match="prodigyopt"):
        build_optimizer(read_settings(with_training(optimizer="prodigy")), [torch.nn.Parameter(torch.ones(1))],
                        torch.device("cpu"))


def test_freeze_and_tolerant_warm_start(tmp_path, data):
    config = with_training(num_epochs=1, num_steps=2, gradient_accumulation_steps=1, optimizer="sgd")
    train(config, data / "train", tmp_path / "small", progress=False, freeze_prefixes=["band_split"],
          report=lambda line: None)
    state = torch.load(tmp_path / "small" / "last.ckpt", weights_only=True)
    torch.manual_seed(config["training"]["seed"])
    initial = build_model(config, "bs_roformer").state_dict()
    assert all(torch.equal(state["model"][k], initial[k]) for k in initial if k.startswith("band_split"))
    assert not all(torch.equal(state["model"][k], initial[k]) for k in initial if k.startswith("layers"))

    lines = []
    bigger = dict(config, model=dict(MODEL, dim=24))
    train(bigger, data / "train", tmp_path / "big", progress=False, init_checkpoint=tmp_path / "small" / "last.ckpt",
          init_tolerant=True, stop_after=0, report=lines.append)
    assert any("band_split.to_features.0.1.weight: (16, 8) -> (24, 8), cropped/zero-padded" in line for line in lines)
    big = torch.load(tmp_path / "big" / "last.ckpt", weights_only=True)["model"]
    small = state["state_dict"]
    key = "band_split.to_features.0.1.weight"
    assert torch.equal(big[key][:16], small[key]) and big[key][16:].abs().sum() == 0


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler")
def test_compiled_training_matches_eager(tmp_path, data):
    # inductor, what `compile: true` means: compiling the whole model failed only there (a recursion error)
    base = dict(with_training(num_epochs=1, num_steps=2, gradient_accumulation_steps=1),
                model=dict(MODEL, attn_dropout=0.0, ff_dropout=0.0))
    eager = train(base, data / "train", tmp_path / "eager", valid_dir=data / "valid", progress=False)
    compiled_config = dict(base, training=dict(base["training"], compile=True))
    compiled = train(compiled_config, data / "train", tmp_path / "compiled", valid_dir=data / "valid",
                     progress=False)
    assert abs(eager["loss"] - compiled["loss"]) < 1e-4 * abs(eager["loss"])
    # validation ran on a model holding the EMA weights, not on the compiled live one
    assert abs(eager["valid"]["sdr"]["vocals"] - compiled["valid"]["sdr"]["vocals"]) < 1e-3


def test_compile_option_reaches_the_transformer_stack(tmp_path, data, monkeypatch):
    # the fast stand-in for the slow test above: `compile` is passed on (aot_eager: no C++ compiler needed)
    from bs_roformer.models.roformer import Roformer

    backends = []
    monkeypatch.setattr(Roformer, "compile_transformer_stack", lambda self, backend: backends.append(backend),
                        raising=False)
    train(with_training(num_epochs=1, num_steps=1, gradient_accumulation_steps=1, compile="aot_eager"),
          data / "train", tmp_path / "run", progress=False)
    assert backends == ["aot_eager"]


def test_validation_reports_every_msst_metric_per_stem(data):
    from bs_roformer.metrics import l1_freq
    from bs_roformer.train import validate

    reference = torch.randn(2, 44100)
    assert l1_freq(reference, reference).item() == 100.0
    assert 0 < l1_freq(reference, 0.5 * reference).item() < l1_freq(reference, 0.9 * reference).item() < 100
    config = dict(CONFIG, training=dict(CONFIG["training"], target_instrument=None, instruments=["vocals", "other"]),
                  model=dict(MODEL, num_stems=2))
    model = build_model(config, "bs_roformer").eval()
    scores = validate(model, config, data / "valid", "cpu", ["sdr", "si_sdr", "l1_freq", "bleedless", "fullness"],
                      other_fix=True)
    assert sorted(scores) == ["bleedless", "fullness", "l1_freq", "sdr", "si_sdr"]
    assert all(sorted(per_stem) == ["other", "vocals"] for per_stem in scores.values())


def test_validation_takes_several_folders_as_one_set(data):
    from bs_roformer.train import validate

    model = build_model(CONFIG, "bs_roformer").eval()
    train_sdr, valid_sdr, both = (validate(model, CONFIG, folders, "cpu")["sdr"]["vocals"]
                                  for folders in (data / "train", data / "valid", [data / "train", data / "valid"]))
    assert both == pytest.approx((2 * train_sdr + valid_sdr) / 3)  # the mean over all three tracks
    assert abs(train_sdr - valid_sdr) > 1e-3
