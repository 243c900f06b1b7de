"""BS-RoFormer and Mel-Band RoFormer for music source separation."""

from .models import BSRoformer, MelBandRoformer

__all__ = ["BSRoformer", "MelBandRoformer"]
__version__ = "0.1.0"
