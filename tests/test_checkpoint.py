"""Reading checkpoints in the forms they circulate in, and inferring their configuration."""

import pytest
import torch
from safetensors.torch import save_file

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.checkpoint import infer_config, load_state_dict
from bs_roformer.cli import main

SMALL = dict(dim=32, depth=2, heads=2, dim_head=16, time_transformer_depth=1, freq_transformer_depth=2)


@pytest.fixture
def bs_model():
    return BSRoformer(**SMALL, stereo=True, num_stems=2, stft_n_fft=512, stft_win_length=512,
                      freqs_per_bands=(2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69), mlp_expansion_factor=2)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 3},
    lambda sd: {"state": sd},
    lambda sd: {"model": sd},
    lambda sd: {f"module.{key}": value for key, value in sd.items()},
    lambda sd: {key: value.half() for key, value in sd.items()},
])
def test_load_state_dict_unwraps_and_loads_strictly(tmp_path, bs_model, wrap):
    path = tmp_path / "model.ckpt"
    torch.save(wrap(bs_model.state_dict()), path)
    fresh = BSRoformer(**SMALL, stereo=True, num_stems=2, stft_n_fft=512, stft_win_length=512,
                       freqs_per_bands=(2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69), mlp_expansion_factor=2)
    fresh.load_state_dict(load_state_dict(path), strict=True)
    for key, value in bs_model.state_dict().items():
        assert torch.allclose(fresh.state_dict()[key], value, atol=1e-3), key


def test_load_safetensors(tmp_path, bs_model):
    path = tmp_path / "model.safetensors"
    # safetensors refuses shared storage: the rotary frequencies are one tensor under many keys
    save_file({key: value.clone().contiguous() for key, value in bs_model.state_dict().items()}, str(path))
    assert load_state_dict(path).keys() == bs_model.state_dict().keys()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_state_dict(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt is not a readable PyTorch checkpoint"):
        load_state_dict(tmp_path / "junk.ckpt")
    torch.save({"epoch": 3}, tmp_path / "empty.ckpt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        load_state_dict(tmp_path / "empty.ckpt")


def test_infer_bs_config(bs_model):
    config = infer_config(bs_model.state_dict())
    assert config == dict(
        model_type="bs_roformer", dim=32, depth=2, num_stems=2, time_transformer_depth=1, freq_transformer_depth=2,
        linear_transformer_depth=0, heads=2, dim_head=16, mlp_expansion_factor=2, mask_estimator_depth=2,
        stereo=True, freqs_per_bands=(2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69), stft_n_fft=512,
    )


@pytest.mark.parametrize("stereo", [False, True])
def test_infer_mel_config(stereo):
    model = MelBandRoformer(**SMALL, stereo=stereo, num_bands=24, linear_transformer_depth=1, mask_estimator_depth=2,
                            add_value_residual=True)
    config = infer_config(model.state_dict())
    assert config == dict(
        model_type="mel_band_roformer", dim=32, depth=2, num_stems=1, time_transformer_depth=1,
        freq_transformer_depth=2, linear_transformer_depth=1, heads=2, dim_head=16, mlp_expansion_factor=4,
        add_value_residual=True, mask_estimator_depth=2, stereo=stereo, num_bands=24, stft_n_fft=2048,
        sample_rate=44100,
    )


def test_inferred_config_rebuilds_the_model(bs_model):
    config = infer_config(bs_model.state_dict())
    assert config.pop("model_type") == "bs_roformer"
    rebuilt = BSRoformer(**config, stft_win_length=config["stft_n_fft"])
    rebuilt.load_state_dict(bs_model.state_dict(), strict=True)


def test_inspect_command(tmp_path, bs_model, capsys):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": bs_model.state_dict()}, path)
    assert main(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "architecture: bs_roformer" in printed and "stereo: True" in printed
    assert f"parameters: {sum(p.numel() for p in bs_model.parameters()):,}" in printed
    assert main(["inspect", str(tmp_path / "nope.pth")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
