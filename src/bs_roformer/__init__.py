"""BS-RoFormer and Mel-Band RoFormer for music source separation."""

__all__ = ["BSRoformer", "MelBandRoformer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use, so that `bs-roformer --help` (and the CLI's allocator re-exec) need no torch
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'bs_roformer' has no attribute {name!r}")
