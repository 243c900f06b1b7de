"""Where a model runs and in which precision: the device names users type, `--precision auto`, and the autocast
context every model call goes through."""

import warnings
from contextlib import nullcontext

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an unavailable or unknown device is a ValueError."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps_available():
        raise ValueError("device mps asked for, but Apple's MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX). Without it, torch emulates bf16
    products, and they run several times slower than float32 ones."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_description() -> str:
    """The CPU's vector extensions as torch reports them, for messages."""
    return f"CPU capability {torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX"


def resolve_precision(precision: str, device: torch.device, config: dict | None = None) -> tuple[str, str]:
    """(precision to run in, the reason in a few words). `auto` picks:
    - CUDA: `inference.precision` if the config sets it (bf16 falls back to fp16 where the GPU lacks bf16), else fp16
      when `training.use_amp` is true (as MSST separates), else fp32;
    - CPU: bf16 where the CPU has native bf16 products, else fp32;
    - MPS: fp32.
    An explicit choice is kept; bf16 on a CPU without native bf16 warns, fp16 on the CPU is an error."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    config = config or {}
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("fp16 needs a GPU; on the CPU use fp32 (or bf16 where the CPU has AVX512-BF16 or AMX)")
        if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            warn_slow_cpu_bf16()
        return precision, "asked for"
    if device.type == "cuda":
        asked = (config.get("inference") or {}).get("precision")
        if asked in PRECISIONS:
            if asked == "bf16" and not torch.cuda.is_bf16_supported():
                return "fp16", "inference.precision is bf16, which this GPU lacks"
            return asked, "inference.precision"
        if (config.get("training") or {}).get("use_amp"):
            return "fp16", "training.use_amp, as MSST"
        return "fp32", "training.use_amp is off"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "this CPU has native bf16"
    if device.type == "cpu":
        return "fp32", "no native bf16 on this CPU"
    return "fp32", f"default on {device.type}"


_warned_slow_bf16 = False


def warn_slow_cpu_bf16():
    """Once per process: bf16 on a CPU that emulates it is slower than fp32, not faster."""
    global _warned_slow_bf16
    if not _warned_slow_bf16:
        _warned_slow_bf16 = True
        warnings.warn(f"bf16 on this CPU ({cpu_description()}) is emulated: its matrix products run about 3 to 30 "
                      "times slower than fp32 (measured on such CPUs), so the run will be slower, not faster; use "
                      "--precision fp32 (or auto)", stacklevel=3)


def resolve_training_precision(precision: str, device: torch.device, use_amp: bool) -> tuple[str, str]:
    """(precision to train in, the reason). `auto` follows `training.use_amp`: bf16 where the hardware has it, fp16
    (with loss scaling) on CUDA without bf16, and fp32 on a CPU without native bf16, whose emulated bf16 is slower
    than fp32 (an explicit `bf16` still trains so, with a warning), and on MPS."""
    if precision != "auto":
        return resolve_precision(precision, device)
    if not use_amp:
        return "fp32", "training.use_amp is off"
    if device.type == "cuda":
        return ("bf16", "training.use_amp") if torch.cuda.is_bf16_supported() else \
            ("fp16", "training.use_amp; this GPU lacks bf16")
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "training.use_amp; this CPU has native bf16"
    if device.type == "cpu":
        return "fp32", (f"training.use_amp, but bf16 is emulated on this CPU ({cpu_description()}) and slower than "
                        "fp32; --precision bf16 forces it")
    return "fp32", f"default on {device.type}"


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision name; fp32 runs without autocast."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
