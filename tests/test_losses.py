"""MSST's standard losses (`--use-standard-loss`): values and gradients equal MSST's own, the trainer uses them with
MSST's flags, and the settings refuse what cannot work."""

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import FIXTURES, assert_close

from bs_roformer.config import build_model
from bs_roformer.losses import StandardLoss
from bs_roformer.train import batch_loss, build_standard_loss, train
from bs_roformer.train_settings import read_settings

from test_train import CONFIG, MODEL, data, with_training  # noqa: F401  (data: the module's synthetic tracks)

REFERENCE = torch.load(FIXTURES / "losses" / "msst_losses.pt", weights_only=True)


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda case: f"{case['name']}-{case['arguments']}")
def test_losses_and_their_gradients_equal_msst(case):
    arguments = case["arguments"]
    stft = arguments.get("stft", {})
    loss = StandardLoss({case["name"]: 1.0}, q=arguments.get("q", 0.95), coarse=arguments.get("coarse", True),
                        stft={key: stft[key] for key in ("n_fft", "hop_length", "win_length", "normalized")} if stft
                        else {}, multistft=arguments.get("multistft", {}))
    estimate = REFERENCE["estimate"].clone().requires_grad_()
    value = loss(estimate, REFERENCE["target"])
    value.backward()
    assert_close(value.detach(), case["value"], "value")
    assert_close(estimate.grad, case["grad"], "gradient")
    assert value.item() > 0 and estimate.grad.abs().max() > 0


def test_masked_loss_masks_the_largest_errors_per_stem():
    target = torch.zeros(4, 2, 1, 3)
    estimate = torch.arange(1.0, 5.0).reshape(4, 1, 1, 1).expand(4, 2, 1, 3).clone()
    estimate[:, 1] *= 10  # stem 1's errors are 100 times stem 0's: a quantile over both stems would differ
    loss = StandardLoss({"masked_loss": 1.0}, q=0.9, coarse=True, stft={}, multistft={})
    # per stem, the items' mean squared errors are (1, 4, 9, 16) x (1, 100); the 0.9-quantile masks only 16
    assert loss(estimate, target).item() == pytest.approx((1 + 4 + 9) * 101 / 8)


def test_weighted_terms_add_up():
    estimate, target = torch.randn(2, 1, 2, 4096), torch.randn(2, 1, 2, 4096)
    both = StandardLoss({"mse_loss": 2.0, "l1_loss": 0.5}, q=0.95, coarse=True, stft={}, multistft={})
    assert both(estimate, target).item() == pytest.approx(
        2 * F.mse_loss(estimate, target).item() + 0.5 * F.l1_loss(estimate, target).item(), rel=1e-6)


def test_settings_read_msst_loss_flags_and_refuse_what_cannot_work(monkeypatch):
    training = read_settings(with_training(use_standard_loss=True, loss=["masked_loss", "multistft_loss"],
                                           masked_loss_coef=0.5, q=0.9)).training
    assert (training.loss, training.masked_loss_coef, training.multistft_loss_coef, training.q) == \
        (["masked_loss", "multistft_loss"], 0.5, 0.001, 0.9)
    with pytest.raises(ValueError, match="l1_snr_loss is not supported here: MSST computes it with torch-l1-snr, "
                                         "which needs torchaudio"):
        read_settings(with_training(use_standard_loss=True, loss=["l1_snr_loss"]))
    with pytest.raises(ValueError, match="'huber' is not one of MSST's losses; use one of masked_loss, mse_loss"):
        read_settings(with_training(use_standard_loss=True, loss=["huber"]))
    with pytest.raises(ValueError, match="is 0 at batch_size 1 .*, and it is the only loss: raise"):
        read_settings(with_training(use_standard_loss=True, batch_size=1))
    with pytest.warns(UserWarning, match="is 0 at batch_size 1 .*: only the other terms train"):  # as MSST trains
        read_settings(with_training(use_standard_loss=True, batch_size=1, loss=["masked_loss", "l1_loss"]))
    assert read_settings(with_training(use_standard_loss=True, batch_size=1, coarse_loss_clip=False))
    with pytest.raises(ValueError, match=r"training.q is 1.5; it is a quantile, in \(0, 1\]"):
        read_settings(with_training(use_standard_loss=True, q=1.5))
    with pytest.warns(UserWarning, match=r"training.loss \['l1_loss'\] is not used: a Roformer trains on its own"):
        read_settings(with_training(loss=["l1_loss"]))
    monkeypatch.setitem(__import__("sys").modules, "auraloss", None)  # as if the losses extra were missing
    with pytest.raises(ValueError, match=r"multistft_loss needs auraloss: pip install 'bs-roformer-fast\[losses\]'"):
        read_settings(with_training(use_standard_loss=True, loss=["multistft_loss"]))


@pytest.mark.parametrize("target_instrument", [None, "vocals"])
def test_batch_loss_compares_the_whole_output_with_the_target_stems(target_instrument):
    instruments = ["vocals", "other"]
    config = dict(CONFIG, model=dict(MODEL, num_stems=1 if target_instrument else 2),
                  training=dict(CONFIG["training"], instruments=instruments, target_instrument=target_instrument,
                                use_standard_loss=True, loss=["l1_loss", "spec_rmse_loss"], l1_loss_coef=3.0))
    model = build_model(config, "bs_roformer").eval()
    settings = read_settings(config)
    loss_fn = build_standard_loss(settings, config)
    mixture, stems = torch.randn(2, 2, 8192), torch.randn(2, 2, 2, 8192)
    targets = [0] if target_instrument else [0, 1]
    inactive = torch.tensor([[True, False], [True, False]])  # ignored by the standard loss (as MSST)
    with torch.no_grad():
        value = batch_loss(model, mixture, stems[:, targets], inactive, targets, loss_fn)
        estimate = model(mixture).reshape(2, len(targets), 2, 8192)
    expected = loss_fn(estimate, stems[:, targets])
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss_fn.term("l1_loss", estimate, stems[:, targets]).item() * 3 < expected.item()
    assert loss_fn.stft == {"n_fft": 4096, "hop_length": 1024, "win_length": 4096, "normalized": True}  # compat


def test_train_command_passes_msst_loss_flags_and_trains(tmp_path, data, monkeypatch):  # noqa: F811
    from bs_roformer import cli

    config = with_training(num_epochs=1, num_steps=2, gradient_accumulation_steps=1, ema_momentum=0.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    seen = {}
    real_build = build_standard_loss

    def recording_build(settings, config):
        seen["terms"], seen["training"] = real_build(settings, config).terms, settings.training
        return real_build(settings, config)

    monkeypatch.setattr("bs_roformer.train.build_standard_loss", recording_build)
    assert cli.main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(data / "train"), "-q", "--out",
                     str(tmp_path / "run"), "--use-standard-loss", "--loss", "masked_loss", "mse_loss",
                     "--mse-loss-coef", "2.5", "--metrics", "si_sdr", "--seed", "0", "--num-workers", "0"]) == 0
    assert seen["terms"] == {"masked_loss": 1.0, "mse_loss": 2.5}
    # as MSST: sdr added; --seed 0 overrides the config's seed 5
    assert (seen["training"].metrics, seen["training"].seed) == (["si_sdr", "sdr"], 0)
    records = [yaml.safe_load(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 < record["loss"] < 10 for record in records)

