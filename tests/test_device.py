"""Devices and `--precision auto`: the choice on each kind of device, with the CPU capability mocked, and the warnings."""

import warnings

import pytest
import torch

from bs_roformer import device as device_module
from bs_roformer.device import autocast, resolve_device, resolve_precision

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
USE_AMP = {"training": {"use_amp": True}}


@pytest.fixture
def native_bf16(monkeypatch):
    """Set whether the CPU has native bf16 products, and forget that the slow-bf16 warning was shown."""
    monkeypatch.setattr(device_module, "_warned_slow_bf16", False)

    def set_native(native: bool):
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)

    return set_native


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_the_cpu_takes_bf16_only_with_native_bf16(native_bf16, native, expected):
    native_bf16(native)
    assert resolve_precision("auto", CPU, USE_AMP)[0] == expected
    assert resolve_precision("auto", CPU, {})[0] == expected


def test_auto_on_cuda_follows_use_amp_and_the_configs_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", CUDA, USE_AMP) == ("fp16", "training.use_amp, as MSST")
    assert resolve_precision("auto", CUDA, {"training": {"use_amp": False}})[0] == "fp32"
    assert resolve_precision("auto", CUDA, {})[0] == "fp32"
    asks_bf16 = {**USE_AMP, "inference": {"precision": "bf16"}}
    assert resolve_precision("auto", CUDA, asks_bf16)[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", CUDA, asks_bf16)[0] == "fp16"


def test_auto_on_mps_is_fp32():
    assert resolve_precision("auto", MPS, USE_AMP)[0] == "fp32"


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_once(native_bf16):
    native_bf16(False)
    with pytest.warns(UserWarning, match=r"bf16 on this CPU \(CPU capability .*\) is emulated.*slower"):
        assert resolve_precision("bf16", CPU)[0] == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        resolve_precision("bf16", CPU)
    native_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) == ("bf16", "asked for")


def test_bad_precisions():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, got 'int8'"):
        resolve_precision("int8", CPU)


def test_the_capability_check_reads_torch():
    assert isinstance(device_module.cpu_has_native_bf16(), bool)
    assert "CPU capability" in device_module.cpu_description()


@pytest.mark.parametrize("name, message", [
    ("foo", "unknown device 'foo': use auto, cpu, cuda, cuda:N or mps"),
    ("tpu", "unknown device 'tpu'"),
])
def test_unknown_devices_are_named(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_cuda():
    with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(device_module.mps_available(), reason="checks the message on a machine without MPS")
def test_unavailable_mps():
    with pytest.raises(ValueError, match="Apple's MPS is not available here; use --device cpu"):
        resolve_device("mps")


def test_autocast_contexts():
    with autocast(CPU, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
