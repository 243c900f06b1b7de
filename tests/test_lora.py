"""LoRA adapters (loralib's layout) and `active_stem_ids`: only the adapters train, merged and unmerged models agree,
MSST-format adapter files merge into a base checkpoint, and inactive stems' heads neither run nor learn."""

import pytest
import torch

from bs_roformer.config import build_model, load_model
from bs_roformer.data.synth import write_dataset
from bs_roformer.lora import adapter_state, add_lora, merge_adapter, merged_state
from bs_roformer.train import train
from bs_roformer.train_settings import Lora

MODEL = dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True, time_transformer_depth=1, freq_transformer_depth=1,
             stft_n_fft=512, stft_win_length=512, stft_hop_length=128,
             freqs_per_bands=[2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69], multi_stft_resolutions_window_sizes=[512, 256])
CONFIG = {"audio": {"chunk_size": 4096}, "model": MODEL,
          "training": {"model_type": "bs_roformer", "instruments": ["vocals", "drums", "bass", "other"],
                       "target_instrument": "vocals", "batch_size": 2, "num_epochs": 1, "num_steps": 2,
                       "optimizer": "adam", "lr": 1e-2, "use_amp": False, "seed": 1},
          "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1}}


def test_lora_training_changes_only_adapters_saved_in_loralib_layout(tmp_path):
    write_dataset(tmp_path / "train", tracks=2, seconds=1.0, seed=1)
    torch.manual_seed(0)
    base = build_model(CONFIG, "bs_roformer")
    torch.save({"state_dict": base.state_dict()}, tmp_path / "base.ckpt")
    train(CONFIG, tmp_path / "train", tmp_path / "run", init_checkpoint=tmp_path / "base.ckpt", lora=True,
          progress=False, report=lambda line: None)
    saved = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    adapter = saved["state_dict"]
    linears = [name for name, module in base.named_modules() if isinstance(module, torch.nn.Linear)]
    assert sorted(adapter) == sorted([f"{name}.lora_A" for name in linears] + [f"{name}.lora_B" for name in linears])
    assert adapter["band_split.to_features.0.1.lora_A"].shape == (4, 8)  # (r, in)
    assert adapter["band_split.to_features.0.1.lora_B"].shape == (16, 4)  # (out, r)
    assert any(value.abs().sum() > 0 for key, value in adapter.items() if key.endswith("lora_B"))
    plain = merged_state(saved["model"])
    unchanged = {key for key in base.state_dict() if key.removesuffix(".weight") not in linears}
    assert all(torch.equal(plain[key], base.state_dict()[key]) for key in unchanged)  # only the adapters trained

    merged = merge_adapter(base.state_dict(), adapter, Lora(r=4, lora_alpha=8))
    model, _ = load_model(CONFIG, merged)
    assert all(torch.allclose(merged[key], plain[key], atol=1e-6) for key in plain)


def test_lora_training_starts_from_an_adapter_file(tmp_path, capsys):
    import yaml

    from bs_roformer.cli import main

    write_dataset(tmp_path / "train", tracks=2, seconds=1.0, seed=1)
    torch.manual_seed(0)
    base = build_model(CONFIG, "bs_roformer")
    torch.save({"state_dict": base.state_dict()}, tmp_path / "base.ckpt")
    adapted = add_lora(build_model(CONFIG, "bs_roformer"), Lora(r=4, lora_alpha=8))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0, 0.05)
    adapter = adapter_state(adapted.state_dict())
    torch.save(adapter, tmp_path / "adapter.pt")
    lines = []
    config = dict(CONFIG, training=dict(CONFIG["training"], lr=0.0))  # lr 0: the run ends where it starts
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "train"), "--out",
                 str(tmp_path / "run"), "--init", str(tmp_path / "base.ckpt"), "--lora", "--lora-checkpoint",
                 str(tmp_path / "adapter.pt"), "-q"]) == 0
    assert f"--lora-checkpoint: {len(adapter)} adapter tensors loaded" in capsys.readouterr().err
    saved = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[key], adapter[key]) for key in adapter)

    with pytest.raises(ValueError, match=r"lora_A \(4, \d+\): the model's is \(2, \d+\) \(is lora.r the one"):
        train(dict(config, lora={"r": 2, "lora_alpha": 4}), tmp_path / "train", tmp_path / "run2", lora=True,
              lora_checkpoint=tmp_path / "adapter.pt", progress=False, report=lines.append)
    with pytest.raises(ValueError, match="add --lora"):
        train(config, tmp_path / "train", tmp_path / "run3", lora_checkpoint=tmp_path / "adapter.pt",
              progress=False, report=lines.append)


def test_merged_and_unmerged_adapters_give_the_same_output():
    torch.manual_seed(0)
    model = build_model(CONFIG, "bs_roformer").eval()
    base = model.state_dict()
    add_lora(model, Lora(r=4, lora_alpha=8))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0, 0.05)
    model.eval()
    audio = torch.randn(1, 2, 4096)
    with torch.no_grad():
        unmerged = model(audio)
        merged_model = build_model(CONFIG, "bs_roformer").eval()
        merged_model.load_state_dict(merge_adapter(base, adapter_state(model.state_dict()), Lora(r=4, lora_alpha=8)))
        merged = merged_model(audio)
        plain = build_model(CONFIG, "bs_roformer").eval()
        plain.load_state_dict(base)
        without = plain(audio)
    assert (merged - without).abs().max() > 1e-3  # the adapters matter
    assert torch.allclose(merged, unmerged, atol=1e-5), (merged - unmerged).abs().max()


def test_an_msst_loralib_file_merges_into_a_base_checkpoint_and_separates(tmp_path, capsys):
    import yaml

    from bs_roformer.cli import main

    torch.manual_seed(0)
    base = build_model(CONFIG, "bs_roformer").state_dict()
    # what MSST's loralib training saves: only adapter tensors, loralib's names, under model_state_dict
    adapter = {"band_split.to_features.0.1.lora_A": torch.randn(4, 8),
               "band_split.to_features.0.1.lora_B": torch.randn(16, 4),
               "layers.0.0.layers.0.0.to_qkv.lora_A": torch.randn(4, 16),
               "layers.0.0.layers.0.0.to_qkv.lora_B": torch.randn(48, 4)}
    torch.save({"model_state_dict": adapter}, tmp_path / "adapter.ckpt")
    merged = merge_adapter(base, adapter, Lora(r=4, lora_alpha=8))
    key = "band_split.to_features.0.1.weight"
    expected = base[key] + adapter[key.replace("weight", "lora_B")] @ adapter[key.replace("weight", "lora_A")] * 2
    assert torch.allclose(merged[key], expected)
    assert sum(not torch.equal(merged[k], base[k]) for k in base) == 2

    torch.save(base, tmp_path / "base.ckpt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    write_dataset(tmp_path / "songs", tracks=1, seconds=0.5, seed=1)
    song = sorted((tmp_path / "songs").iterdir())[0] / "mixture.wav"
    assert main(["separate", "-c", str(tmp_path / "config.yaml"), "-m", str(tmp_path / "base.ckpt"), "--lora",
                 str(tmp_path / "adapter.ckpt"), str(song), "-o", str(tmp_path / "out"), "-q"]) == 0
    no_scale = {key: value for key, value in CONFIG.items() if key != "lora"}
    (tmp_path / "no_lora.yaml").write_text(yaml.safe_dump(no_scale))
    assert main(["separate", "-c", str(tmp_path / "no_lora.yaml"), "-m", str(tmp_path / "base.ckpt"), "--lora",
                 str(tmp_path / "adapter.ckpt"), str(song), "-o", str(tmp_path / "out2"), "-q"]) == 1
    assert "lora_alpha" in capsys.readouterr().err
    assert main(["separate", "-c", str(tmp_path / "config.yaml"), "-m", str(tmp_path / "adapter.ckpt"), str(song),
                 "-o", str(tmp_path / "out3"), "-q"]) == 1  # the adapter given as the model
    assert "the checkpoint is a LoRA adapter (only lora_A/lora_B tensors): give its base model's checkpoint " \
           "instead, and this file with --lora" in capsys.readouterr().err
    bad = {"band_split.to_features.0.1.lora_A": torch.randn(4, 9), "band_split.to_features.0.1.lora_B": adapter[
        "band_split.to_features.0.1.lora_B"]}
    with pytest.raises(ValueError, match="does not fit the weight"):
        merge_adapter(base, bad, Lora(r=4, lora_alpha=8))


def test_active_stem_ids_run_and_train_only_the_active_heads():
    config = dict(CONFIG, model=dict(MODEL, num_stems=3))
    torch.manual_seed(0)
    model = build_model(config, "bs_roformer")
    audio, target = torch.randn(2, 2, 4096), torch.randn(2, 3, 2, 4096)
    model(audio, target=target, active_stem_ids=[0, 2]).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("mask_estimators.1."):
            assert parameter.grad is None, name
        elif name.startswith(("mask_estimators.0.", "mask_estimators.2.")) and name.endswith("weight"):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(audio, active_stem_ids=[2, 0]), model(audio)[:, [2, 0]], atol=1e-6)


def test_class_balanced_training_passes_the_active_stems_to_the_model(tmp_path, monkeypatch):
    import numpy as np
    import soundfile

    from bs_roformer.models.roformer import Roformer

    rng = np.random.default_rng(0)
    for track, stems in [("a", ["vocals", "bass"]), ("b", ["vocals"]), ("c", ["vocals"])]:
        (tmp_path / "data" / track).mkdir(parents=True)
        for stem in stems:
            soundfile.write(str(tmp_path / "data" / track / f"{stem}.wav"),
                            rng.standard_normal((8192, 2)).astype(np.float32) * 0.1, 44100, subtype="FLOAT")
    config = dict(CONFIG, model=dict(MODEL, num_stems=2),
                  training=dict(CONFIG["training"], instruments=["vocals", "bass"], target_instrument=None,
                                batch_size=1, num_steps=6, dataset_type=7, max_class_presence_ratio=1.0))
    calls = []
    forward = Roformer.forward

    def recording_forward(self, *args, active_stem_ids=None, **kwargs):
        calls.append(active_stem_ids)
        return forward(self, *args, active_stem_ids=active_stem_ids, **kwargs)

    monkeypatch.setattr(Roformer, "forward", recording_forward)
    train(config, tmp_path / "data", tmp_path / "run", progress=False, report=lambda line: None)
    assert set(map(str, calls)) == {"None", "[0]"}  # track a: both stems; b and c: only vocals' head
