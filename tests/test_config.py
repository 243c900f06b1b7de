"""MSST YAML configs and building a model from a config and a checkpoint."""

import pytest
import torch

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.config import load_config, load_model, model_type_of, stem_names

BS_CONFIG = """\
audio:
  chunk_size: 8192
  num_channels: 2
  sample_rate: 44100
  dim_t: 801          # unused by the model, seen in the wild
model:
  dim: 32
  depth: 1
  stereo: true
  num_stems: 1
  time_transformer_depth: 1
  freq_transformer_depth: 1
  linear_transformer_depth: 0
  freqs_per_bands: !!python/tuple
  - 2
  - 2
  - 4
  - 4
  - 8
  - 8
  - 16
  - 16
  - 32
  - 32
  - 64
  - 69
  dim_head: 16
  heads: 2
  stft_n_fft: 512
  stft_win_length: 512
  stft_hop_length: 128
  mask_estimator_depth: 2
  multi_stft_resolutions_window_sizes: !!python/tuple [1024, 512, 256]
training:
  instruments: [vocals, other]
  target_instrument: vocals
inference:
  batch_size: 2
  num_overlap: 2
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_python_tuple_tags_load_and_other_python_tags_do_not(tmp_path):
    config = load_config(write(tmp_path, BS_CONFIG))
    assert config["model"]["freqs_per_bands"] == (2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69)
    assert config["model"]["multi_stft_resolutions_window_sizes"] == (1024, 512, 256)
    evil = "model: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ValueError, match="not a valid YAML config"):
        load_config(write(tmp_path, evil, "evil.yaml"))


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="no 'model:' section"):
        load_config(write(tmp_path, "audio: {}\n"))


def test_model_type_and_stems(tmp_path):
    config = load_config(write(tmp_path, BS_CONFIG))
    assert model_type_of(config) == "bs_roformer"
    assert model_type_of({"model": {"num_bands": 60}}) == "mel_band_roformer"
    assert model_type_of({"model": {}, "training": {"model_type": "mel_band_roformer"}}) == "mel_band_roformer"
    assert model_type_of(config, override="mel_band_roformer") == "mel_band_roformer"
    with pytest.raises(ValueError, match="set training.model_type"):
        model_type_of({"model": {"dim": 8}})
    with pytest.raises(ValueError, match="'htdemucs' is not supported"):
        model_type_of(config, override="htdemucs")
    assert stem_names(config) == ["vocals"]
    assert stem_names({"model": {"num_stems": 2}, "training": {"instruments": ["drums", "bass"]}}) == ["drums", "bass"]


def test_load_model_strictly(tmp_path):
    config = load_config(write(tmp_path, BS_CONFIG))
    source = BSRoformer(**config["model"])
    torch.save({"state_dict": source.state_dict()}, tmp_path / "model.ckpt")
    model, _ = load_model(tmp_path / "config.yaml", tmp_path / "model.ckpt")
    audio = torch.randn(1, 2, 4000)
    with torch.no_grad():
        assert torch.equal(model(audio), source.eval()(audio))
    assert not model.training


@pytest.mark.parametrize("change, message", [
    ({"stereo": False}, "model.stereo is False but the checkpoint implies True"),
    ({"dim": 48}, "model.dim is 48 but the checkpoint implies 32"),
    ({"depth": 2}, "model.depth is 2 but the checkpoint implies 1"),
    ({"num_stems": 2}, "model.num_stems is 2 but the checkpoint implies 1"),
    ({"mask_estimator_depth": 1}, "model.mask_estimator_depth is 1 but the checkpoint implies 2"),
    ({"mlp_expansion_factor": 2}, "model.mlp_expansion_factor is 2 but the checkpoint implies 4"),
    ({"linear_transformer_depth": 1}, "model.linear_transformer_depth is 1 but the checkpoint implies 0"),
])
def test_mismatch_names_the_config_value(tmp_path, change, message):
    config = load_config(write(tmp_path, BS_CONFIG))
    state = BSRoformer(**config["model"]).state_dict()
    config["model"].update(change)
    with pytest.raises(ValueError, match="the checkpoint does not fit the config: .*" + message):
        load_model(config, state)


def test_mel_mask_depth_mismatch_uses_the_mel_meaning():
    kwargs = dict(dim=32, depth=1, heads=2, dim_head=16, num_bands=24, stereo=True, mask_estimator_depth=2)
    state = MelBandRoformer(**kwargs).state_dict()
    config = {"model": dict(kwargs, mask_estimator_depth=1)}
    with pytest.raises(ValueError, match="model.mask_estimator_depth is 1 but the checkpoint implies 2"):
        load_model(config, state)


def test_wrong_model_type():
    state = MelBandRoformer(dim=32, depth=1, heads=2, dim_head=16, num_bands=24).state_dict()
    config = {"model": dict(dim=32, depth=1, heads=2, dim_head=16), "training": {"model_type": "bs_roformer"}}
    with pytest.raises(ValueError, match="builds a bs_roformer but the checkpoint holds a mel_band_roformer"):
        load_model(config, state)
